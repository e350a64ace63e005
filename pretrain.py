"""
Supervised pre-training on 1..N-digit additions with the scratchpad (the paper's section 3).

    python pretrain.py --digits 7                  # writes runs/add7.pt (~42 min on 2 CPU cores)
    python pretrain.py --digits 3 --steps 2000     # a quick, not yet accurate one
    python pretrain.py --digits 7 --resume         # continue an interrupted run (Ctrl-C saves)
    torchrun --standalone --nproc_per_node 2 pretrain.py --threads 1   # 2 processes, half a batch each

Read it as rl.py: `train` is the loop, five numbered steps (batch, learning rate, forward, backward and
step, now and then evaluate and save); `set_up` makes what it runs on (device, processes, model, optimizer,
the data stream, a resumed state); the rest only keeps a run safe (saving, stopping, resuming). Comments
marked "ranks:" are for torchrun's processes, each with a share of every batch.
Two choices matter for the RL stage that follows:
  - every batch is drawn from a pool of problems sorted by length, so rows in a batch have nearly
    the same length and almost no compute goes to padding;
  - each row starts at a random position offset (--random-offset), so every position embedding up to
    --block-size is trained, including those that only (N+1)-digit problems reach.
"""
import argparse
import contextlib
import glob
import math
import os
import random
import signal
import sys
import time
from types import SimpleNamespace

import torch
from tqdm import tqdm

import data
from lab import generation
from lab.files import atomic_save, hold_lock, release_locks
from model import GPT, GPTConfig, save_checkpoint
from lab.ranks import end_ranks, start_ranks, sum_gradients, sum_over_ranks, wait_for_ranks
from lab.console import resume_command, run_script
from lab.runtime import (add_number, add_runtime_flags, autocast_dtype, generation_dtype, mixed_precision,
                     pick_device, precision_name, provenance, seed_everything, set_threads, too_big)


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_number(p, "--digits", int, 7, "N: operands have 1..N digits (default 7)", at_least=1, at_most=100)
    add_number(p, "--steps", int, 8000, "optimizer steps (default 8000)", at_least=1, at_most=10_000_000)
    add_number(p, "--batch-size", int, 16,
               "problems per step (default 16: more steps beat bigger batches here)", at_least=1,
               at_most=65_536)
    add_number(p, "--lr", float, 3e-3, "peak learning rate (default 3e-3; AdamW overflows past 1e30)",
               above=0, at_most=1e30)
    add_number(p, "--min-lr", float, 1e-4, "learning rate at the end of the cosine decay, between 0 and --lr",
               at_least=0, message="--min-lr must be between 0 and --lr")
    add_number(p, "--warmup", int, 100, "steps of linear learning-rate warm-up", at_least=0,
               at_most=10_000_000)
    add_number(p, "--weight-decay", float, 0.1, "AdamW weight decay on matrices", at_least=0)
    add_number(p, "--grad-clip", float, 1.0, "clip the gradient norm to this (0: off)", at_least=0)
    add_number(p, "--n-layer", int, 4, "transformer blocks", at_least=1, at_most=1024)
    add_number(p, "--n-head", int, 4, "attention heads per block (must divide --n-embd)", at_least=1,
               at_most=1024)
    add_number(p, "--n-embd", int, 128, "embedding width", at_least=1, at_most=65_536)
    add_number(p, "--block-size", int, 1024, "positions the model has (10+10 digits need 865)", at_least=1,
               at_most=1 << 20)
    p.add_argument("--random-offset", action=argparse.BooleanOptionalAction, default=True,
                   help="start each row at a random position so every position embedding is trained")
    add_number(p, "--pool", int, 16, "batches drawn at once and sorted by length", at_least=1,
               at_most=1_000_000)
    add_number(p, "--eval-every", int, 2000, "steps between evaluations and checkpoints", at_least=1,
               at_most=10_000_000)
    add_number(p, "--save-every", int, 250, "steps between saves of the resume state: a killed run loses at "
               "most these", at_least=1, at_most=10_000_000)
    add_number(p, "--eval-size", int, 100, "held-out problems per operand length", at_least=1,
               at_most=100_000)
    add_number(p, "--seed", int, 0, "seeds Python's and torch's generators", at_least=0, at_most=2**63 - 1)
    add_runtime_flags(p)
    p.add_argument("--out", default=None,
                   help="checkpoint path (default runs/<data.NAME[:3]><digits>.pt, so runs/add7.pt)")
    p.add_argument("--resume", action="store_true",
                   help="continue from --out.state (written with every checkpoint)")
    p.add_argument("--force", action="store_true", help="replace an existing --out")
    args = p.parse_args(argv)
    # rules between flags
    if args.min_lr > args.lr:
        p.error("--min-lr must be between 0 and --lr")
    if args.n_embd % args.n_head:
        p.error("--n-embd must be divisible by --n-head")
    if args.batch_size * args.pool > 1_000_000:
        p.error("--batch-size x --pool must be at most 1000000")
    longest = data.longest_sequence(args.digits)
    if longest > args.block_size:
        p.error(f"{args.digits}-digit problems need {longest} positions; raise --block-size")
    args.out = args.out or f"runs/{data.NAME[:3]}{args.digits}.pt"  # addition: runs/add7.pt
    return args


def batches(digits, batch_size, pool, rng):
    """Endless batches of training problems; each batch holds problems of nearly equal length."""
    while True:
        problems = sorted((data.pretrain_problem(digits, rng) for _ in range(batch_size * pool)),
                          key=data.sequence_length)
        chunks = [problems[i:i + batch_size] for i in range(0, len(problems), batch_size)]
        rng.shuffle(chunks)
        yield from chunks


def learning_rate(step, args):
    """Linear warm-up, then cosine decay from --lr to --min-lr."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = (step - args.warmup) / max(1, args.steps - args.warmup)
    return args.min_lr + 0.5 * (args.lr - args.min_lr) * (1 + math.cos(math.pi * min(1.0, progress)))


def evaluate(model, digits, size, device, dtype):
    """Greedy exact-match accuracy (percent) on held-out problems whose operands both have K digits, for
    K = 1..digits+1 (those that fit the model's positions)."""
    fits = [k for k in range(1, digits + 2)
            if data.longest_sequence(k) <= model.config.block_size]
    with mixed_precision(device, dtype):
        return {k: generation.accuracy(model, data.eval_set("identical", k, size), device=device)
                for k in fits}


LOOK_EVERY = 10  # steps between looks at the loss (finite? the progress bar)

def save(args, model, optimizer, step, elapsed, evals, made_on):
    """The resume state first (one file, one atomic write, all that --resume needs), then the checkpoint
    (with made_on: the code, machine, threads and torch it was trained with, runtime.provenance)."""
    atomic_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                 "elapsed": elapsed, "evals": evals, "args": vars(args), "python_rng": random.getstate(),
                 "torch_rng": torch.get_rng_state()}, args.out + ".state")
    save_checkpoint(args.out, model, task=data.NAME, args=vars(args), step=step,
                    train_seconds=round(elapsed, 1), evals=evals, provenance=made_on)


STATE_KEYS = {"model", "optimizer", "step", "elapsed", "evals", "args", "python_rng", "torch_rng"}
# flags that may change when a run is resumed: they do not change what is trained (--steps does: the cosine
# schedule decays over it, so a run resumes with its own)
RESUMABLE = {"eval_every", "save_every", "eval_size", "threads", "device", "out", "resume", "force",
             "deterministic"}


def check_out(args, writer=True):
    """Refuse to replace an existing --out (unless --force), or to resume with other training flags than
    the run was started with; make sure --out can be written before any work (writer: the one process that
    writes, which also clears what a killed save left)."""
    for pattern in (".tmp*", ".state.tmp*") if writer else ():  # left by a run killed in the middle of a save
        for stale in glob.glob(glob.escape(args.out) + pattern):
            os.remove(stale)
    if args.resume:
        if not os.path.exists(args.out + ".state"):
            sys.exit(f"error: --resume needs {args.out}.state, which is missing; start without --resume")
        try:
            state = torch.load(args.out + ".state", map_location="cpu", weights_only=True)
            if not isinstance(state, dict) or not STATE_KEYS <= state.keys() or not isinstance(state["args"],
                                                                                                 dict):
                raise ValueError("not a pretrain.py state")
        except Exception as e:  # a truncated or foreign file: say which, not where torch.load failed
            sys.exit(f"error: cannot read {args.out}.state ({type(e).__name__}): it is damaged or not a "
                     "pretrain.py state; start without --resume (with --force to replace the checkpoint)")
        if state["step"] > args.steps:
            sys.exit(f"error: {args.out} has already trained {state['step']} steps, more than --steps "
                     f"{args.steps}; resume it with its own --steps {state['args'].get('steps')}")
        differ = [f"--{k.replace('_', '-')} {v} (the run has {state['args'].get(k)})"
                  for k, v in vars(args).items() if k not in RESUMABLE and state["args"].get(k) != v]
        if differ:
            why = "; the cosine schedule decays over --steps: a longer run is a new one" if any(
                k.startswith("--steps ") for k in differ) else ""
            sys.exit(f"error: --resume with other flags than {args.out} was trained with: "
                     f"{'; '.join(differ)}{why}")
        return state
    if os.path.isdir(args.out):
        sys.exit(f"error: --out {args.out} is a folder; give a file path such as "
                 f"{os.path.join(args.out, 'add.pt')}")
    if os.path.exists(args.out) and not args.force:
        sys.exit(f"error: {args.out} exists; choose another --out, continue it with --resume, or pass "
                 "--force to replace it")
    try:
        if writer:
            os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
            with open(args.out + ".tmp-check", "w"):
                pass
            os.remove(args.out + ".tmp-check")
    except OSError as e:
        sys.exit(f"error: cannot write {args.out}: {e.strerror} ({e.filename}); choose another --out")
    return None


def main(argv=None):
    args = get_args(argv)
    try:
        run = set_up(args, sys.argv[1:] if argv is None else argv)
        train(run, args)
        if run.rank == 0:
            elapsed, acc, longer = time.time() - run.t0, run.evals[args.steps], args.digits + 1
            beyond = f" | {longer} digits {acc[longer]:.1f}%" if longer in acc else ""
            print(f"done: {args.steps} steps in {elapsed / 60:.1f} min | {args.digits}-digit operands greedy "
                  f"{acc[args.digits]:.1f}%{beyond} | saved {args.out}")
        end_ranks()
    finally:
        release_locks()  # --out is free for the next writer (tests run several in one process)


def train(run, args):
    """Supervised pre-training, step after step from the run's first (or, resumed, next) step. `run` is the
    run's state (set_up: model, optimizer, data stream, device, ranks); `args` its flags."""
    bar = tqdm(range(run.start_step, args.steps), initial=run.start_step, total=args.steps, desc="pretrain",
               dynamic_ncols=True, disable=run.rank > 0)
    with stop_requests() as asked:  # Ctrl-C or a kill's SIGTERM: stop after this step, saved
        for step in bar:
            # 1. a batch of problems of nearly equal length (ranks: this process's rows), at random offsets
            batch, x, y, offset = next_batch(run, args)
            # 2. the learning rate: linear warm-up, then cosine decay
            for group in run.optimizer.param_groups:
                group["lr"] = learning_rate(step, args)
            # 3. forward: next-character cross-entropy on the completion (scratchpad and answer) only
            with mixed_precision(run.device, run.dtype):
                _, loss = run.model(x, y, offset)
            if run.ranks > 1:  # ranks: weighted by its share of the targets, the gradients' sum is the mean's
                loss = loss * (y != -1).sum() / sum(len(data.target(problem)) for problem in batch)
            # 4. backward, clip, step
            run.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            sum_gradients(run.model)  # ranks: add up every process's gradients (nothing when alone)
            if args.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(run.model.parameters(), args.grad_clip)
            run.optimizer.step()
            # 5. now and then: look at the loss, evaluate, save; stop here if asked to
            after_step(run, args, step + 1, loss, asked, bar)


def set_up(args, argv):
    """All a run holds, as one namespace: threads, device and torchrun's rank and ranks, the model and its
    AdamW optimizer (weight decay on matrices only), the data stream, and for --resume the saved state put
    back (the stream replayed to where it was)."""
    set_threads(args.threads)
    rank, ranks, device = start_ranks(pick_device(args.device))  # ranks: each takes 1/ranks of every batch
    if args.batch_size % ranks:
        sys.exit(f"error: --batch-size {args.batch_size} does not split over {ranks} processes: use a "
                 f"multiple of {ranks}")
    seed_everything(args.seed, device, args.deterministic)  # the same on every rank: weights and batches
    made_on = provenance(device)
    dtype = autocast_dtype(args.dtype, device)
    config = GPTConfig(block_size=args.block_size, n_layer=args.n_layer, n_head=args.n_head,
                       n_embd=args.n_embd)
    if message := too_big(config, args.batch_size, data.longest_sequence(args.digits), device):
        sys.exit(f"error: {message}; lower --batch-size or the model's size")
    if rank == 0:  # the only writer of --out until this process ends
        hold_lock(args.out + ".lock", args.out)
    state = check_out(args, writer=rank == 0)  # for --resume: model, optimizer, RNGs and step, in one file
    model = GPT(config).to(device)
    eval_dtype = generation_dtype(args.dtype, device)
    model.train()
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.98))
    run = SimpleNamespace(rank=rank, ranks=ranks, device=device, dtype=dtype, eval_dtype=eval_dtype,
                          made_on=made_on, model=model, optimizer=optimizer, start_step=0, elapsed=0.0,
                          evals={}, stream=batches(args.digits, args.batch_size, args.pool,
                                                   random.Random(args.seed)), argv=argv)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        run.start_step, run.elapsed, run.evals = state["step"], state["elapsed"], state["evals"]
        random.setstate(state["python_rng"])
        torch.set_rng_state(state["torch_rng"])
        for _ in range(run.start_step):  # replay the data stream: the same batches as an uninterrupted run
            next(run.stream)
    if rank == 0:
        print(f"model: {model.num_params() / 1e6:.2f}M parameters | device {device} x {ranks} | autocast "
              f"{dtype or 'off'} (generation {precision_name(eval_dtype)}) | steps "
              f"{run.start_step}..{args.steps}")
    run.t0 = time.time() - run.elapsed
    return run


def next_batch(run, args):
    """The stream's next batch of problems, and this process's rows of it as tensors (x, y) with each row's
    start position (--random-offset: any start that keeps the whole row inside the block). The offsets are
    drawn on the CPU, whose generator the resume state holds: a resumed run draws the same on any device."""
    batch = next(run.stream)
    x, y = data.make_batch(batch[run.rank::run.ranks], run.device)  # ranks: this process's share
    offset = None
    if args.random_offset:
        width = max(data.sequence_length(problem) for problem in batch) - 1
        offset = torch.randint(0, args.block_size - width + 1, (len(batch),))[run.rank::run.ranks]
        offset = offset.to(run.device)
    return batch, x, y, offset


@contextlib.contextmanager
def stop_requests():
    """While training, Ctrl-C (or a kill's SIGTERM) only asks the loop to stop: `after_step` then saves a
    whole step (ranks: at the next look, every LOOK_EVERY steps, all together). Yields the requests' list."""
    asked = []
    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, lambda *_: asked.append(True)) for sig in signals}
    try:
        yield asked
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def after_step(run, args, steps_done, loss, asked, bar):
    """The bookkeeping after a step: every LOOK_EVERY steps (and at each save) a look at the loss, which must
    be finite (a look waits for a GPU's queue); every --eval-every steps and at the end an evaluation and a
    checkpoint; every --save-every steps the resume state; and if Ctrl-C asked, a save and the exit, with
    the command that goes on."""
    evaluating = steps_done % args.eval_every == 0 or steps_done == args.steps
    look = (evaluating or steps_done % args.save_every == 0 or steps_done % LOOK_EVERY == 0
            or (run.ranks == 1 and bool(asked)))  # the same steps on every rank
    stops = 0
    if look:  # ranks: the loss and stop requests, summed
        batch_loss, stops = sum_over_ranks([loss.item(), float(len(asked))])
        if not math.isfinite(batch_loss):  # nothing saved: the last checkpoint stays the last good
            sys.exit(f"error: the loss is not finite by step {steps_done}; {args.out} holds the last "
                     f"good checkpoint (if any); try a lower --lr")
        bar.set_postfix(loss=f"{batch_loss:.4f}")
    stop = look and stops > 0  # ranks: one asked, all stop at this step (alone: asked now)
    saving = evaluating or steps_done % args.save_every == 0 or stop
    if saving:
        run.elapsed = time.time() - run.t0
    if evaluating and run.rank == 0:  # ranks: the others wait at the save
        run.evals[steps_done] = acc = evaluate(run.model, args.digits, args.eval_size, run.device,
                                               run.eval_dtype)
        shown = " ".join(f"{k}:{a:.0f}" for k, a in acc.items())
        tqdm.write(f"step {steps_done} | loss {batch_loss:.4f} | {run.elapsed / 60:.1f} min | "
                   f"greedy accuracy by operand digits: {shown}")
    if saving and run.rank == 0:
        save(args, run.model, run.optimizer, steps_done, run.elapsed, run.evals, run.made_on)
    if saving:
        wait_for_ranks()
    if stop or (run.ranks == 1 and asked and saving):  # alone, a Ctrl-C during this step's save too
        go_on = resume_command("pretrain.py", run.argv)
        sys.exit(f"\ninterrupted after step {steps_done}: saved {args.out}; to go on: {go_on}")


if __name__ == "__main__":
    run_script(main)
