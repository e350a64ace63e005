"""
How fast is generation, and how far is it from what the machine's arithmetic allows?

    python -m lab.bench                         # checkpoints/add7.pt, 64 rows of (N+1)-digit problems
    python -m lab.bench --batch-size 16 --device cuda

Lines (scripts read them):
  generation, KV cache:           GPT.generate's fast loop, the one rollouts and evaluation use
  generation, KV cache, plain:    the plain reference loop it is tested against
  generation, full recompute:     the whole prefix through the model for every new token (how the
                                  paper's code generates); timed at every K-th step and scaled
                                  by K (--recompute-every 1: every step)
  training, forward + backward:   the teacher-forced pass that RL and pre-training use
  arithmetic: ... GFLOP/s against a matmul peak measured in the same run
  kv-cache speedup:               full recompute time / KV-cache time
  draft, rollout / evaluation:    decoding along the correct text (GPT.generate's draft) against the fast
                                  loop: one RL rollout batch sampled at temperature 1 ("N+1" problems),
                                  and a greedy evaluation of --eval-size held-out "N+1" problems

A reader of the method may skip it: it measures speed and changes nothing (`python -m lab.bench`).
"""
import argparse
import random
import sys
import time

import torch

import data
from lab import generation
from model import CheckpointError, load_checkpoint
from lab.console import run_script
from lab.runtime import (DEVICE_HELP, DTYPE_HELP, DTYPES, add_number, autocast_dtype, generation_dtype,
                         mixed_precision, pick_device, precision_name, set_threads, synchronize)


def timed(fn, device):
    """fn's result and its seconds; a GPU runs asynchronously, so wait for its queue before and after."""
    synchronize(device)
    start = time.perf_counter()
    out = fn()
    synchronize(device)
    return out, time.perf_counter() - start


@torch.no_grad()
def time_recompute(model, sequences, prompt_width, every, device):
    """Seconds that greedy decoding by full recompute would take to write sequences[:, prompt_width:],
    from full forward passes over the prefix at every `every`-th new token, and the rows where those
    passes pick the token that is there (padding after a row's end matches anything)."""
    new = sequences.size(1) - prompt_width
    seconds, agree = 0.0, torch.ones(sequences.size(0), dtype=torch.bool, device=sequences.device)
    for step in range(0, new, every):
        prefix = sequences[:, :prompt_width + step]
        logits, t = timed(lambda: model(prefix)[0][:, -1], device)
        seconds += t * min(every, new - step)
        written = sequences[:, prompt_width + step]
        agree &= (logits.argmax(-1) == written) | (written == data.PAD_ID)
    return seconds, agree


def forward_flops(model, lengths):
    """Multiply-adds x 2 of a forward pass that produces one token at each context length in `lengths`:
    the weight matrices (2 per parameter) plus attention over the context (4 * width per key)."""
    c = model.config
    weights = c.n_layer * 12 * c.n_embd ** 2 + c.vocab_size * c.n_embd  # qkv, proj, mlp; lm_head
    return sum(2 * weights + 4 * c.n_layer * c.n_embd * s for s in lengths)


def matmul_peak(device, dtype, size=2048, repeats=5):
    """GFLOP/s of a large square matmul in the run's precision: what this machine can do at best."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    with mixed_precision(device, dtype):
        a @ b  # warm-up
        _, t = timed(lambda: [a @ b for _ in range(repeats)], device)
    return 2 * size ** 3 * repeats / t / 1e9


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", default="checkpoints/add7.pt", help="model to time")
    add_number(p, "--digits", int, None, "K for the K+K problems (default N+1)", at_least=1,
               at_most=100)
    add_number(p, "--batch-size", int, 64, "rows generated at once (default 64: one RL iteration, "
               "16 problems x 4 samples)", at_least=1, at_most=65_536)
    add_number(p, "--eval-size", int, 200, "problems of the timed evaluation (default 200, as rl.py's)",
               at_least=1, at_most=10_000)
    add_number(p, "--recompute-every", int, 16, "time the full recompute at every K-th new token, scaled "
               "by K (default 16; 1: exact)", at_least=1)
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    add_number(p, "--threads", int, None, "CPU threads (default: all cores)", at_least=1)
    p.add_argument("--dtype", default="auto", choices=DTYPES, help=DTYPE_HELP)
    args = p.parse_args(argv)
    set_threads(args.threads)
    device = pick_device(args.device)
    dtype = autocast_dtype(args.dtype, device)
    try:
        model, meta = load_checkpoint(args.ckpt, device, with_meta=True)
    except CheckpointError as e:
        sys.exit(f"error: {e}")
    gen_dtype = generation_dtype(args.dtype, device)
    k = args.digits or meta.get("args", {}).get("digits", 7) + 1
    problems = data.eval_set("identical", k, args.batch_size)
    prompts = data.prompt_batch(problems, device)
    steps = max(len(data.target(problem)) for problem in problems)
    if prompts.size(1) + steps > model.config.block_size:
        sys.exit(f"error: {k}-digit problems do not fit in the model's {model.config.block_size} positions")
    print(f"{args.ckpt} on {device} | autocast {dtype or 'off'}, generation {precision_name(gen_dtype)} | "
          f"threads {torch.get_num_threads()} | {k}+{k} problems | batch {args.batch_size} | "
          f"{steps} new tokens per row")

    with mixed_precision(device, gen_dtype):
        model.generate(prompts[:2], 8, temperature=0, stop=data.Stop)  # warm-up
        cached, t_cache = timed(lambda: model.generate(prompts, steps, temperature=0, stop=data.Stop), device)
        plain, t_plain = timed(lambda: model.generate(prompts, steps, temperature=0, fast=False,
                                                             stop=data.Stop), device)
        t_full, agree = time_recompute(model, cached, prompts.size(1), args.recompute_every, device)
    width = prompts.size(1)
    written = cached[:, width:] != data.PAD_ID  # rows stop after their answer line
    tokens = int(written.sum())
    every = "every step" if args.recompute_every == 1 else f"every {args.recompute_every}th step"
    print(f"generation, KV cache:         {tokens / t_cache:10.0f} tokens/s ({t_cache:.1f} s)")
    print(f"generation, KV cache, plain:  {tokens / t_plain:10.0f} tokens/s ({t_plain:.1f} s)")
    print(f"generation, full recompute:   {tokens / t_full:10.0f} tokens/s ({t_full:.1f} s, from {every})")
    # in bfloat16 two paths can round a near-tie differently, which flips the rest of that row
    same = int((cached == plain).all(1).sum()) if cached.shape == plain.shape else 0
    print(f"rows decoded identically by both: {int(agree.sum())} of {args.batch_size} "
          f"(full recompute, at {every}); fast and plain loops: {same} of {args.batch_size}")

    model.train()
    x, y = data.make_batch(problems, device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # the work of a step, without changing the model

    def train_step():
        with mixed_precision(device, dtype):
            _, loss = model(x, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    train_step()
    repeats = 3
    _, t_train = timed(lambda: [train_step() for _ in range(repeats)], device)
    print(f"training, forward + backward: {repeats * x.numel() / t_train:10.0f} tokens/s")

    prompt_lengths = (prompts != data.PAD_ID).sum(1).tolist()
    generated = forward_flops(model, [p + t for row, p in zip(written.tolist(), prompt_lengths)
                                      for t, real in enumerate(row, 1) if real])
    positions = [t for _ in range(x.size(0)) for t in range(1, x.size(1) + 1)]
    trained = 3 * forward_flops(model, positions)  # forward and backward
    peaks = {d: matmul_peak(device, d) for d in (dtype, gen_dtype)}  # the precision of each part
    shown = " and ".join(f"{peak:.1f}{'' if i else ' GFLOP/s'} in {precision_name(d)}"
                         for i, (d, peak) in enumerate(peaks.items()))
    print(f"arithmetic: generation {generated / t_cache / 1e9:.1f} GFLOP/s, "
          f"training {trained * repeats / t_train / 1e9:.1f} GFLOP/s, "
          f"matmul peak {shown} (2048 x 2048, measured now)")
    print(f"kv-cache speedup: {t_full / t_cache:.1f}x")
    time_draft(model, k - 1, args.batch_size, args.eval_size, gen_dtype, device)


def time_draft(model, n, rows, eval_size, dtype, device):
    """The draft against the fast loop, on what rl.py generates: a rollout batch and an evaluation."""
    rng = random.Random(0)
    rollout = [data.rl_problem(n, 1, rng) for _ in range(rows)]
    evaluation = data.eval_set("rl", 1, eval_size, n=n)
    for name, problems, temperature in (("rollout", rollout, 1.0), ("evaluation", evaluation, 0.0)):
        seconds = {}
        for draft in (True, False):
            generator = torch.Generator(device).manual_seed(0)
            with mixed_precision(device, dtype):
                _, seconds[draft] = timed(lambda: generation.complete(model, problems, temperature,
                                                                      device=device, generator=generator,
                                                                      draft=draft), device)
        print(f"draft, {name} ({len(problems)} rows, temperature {temperature:g}): {seconds[True]:.1f} s "
              f"against {seconds[False]:.1f} s token by token: {seconds[False] / seconds[True]:.2f}x")


if __name__ == "__main__":
    run_script(main)
