"""
An RL run's folder, --out/--name, as rl.py writes it and curves.py reads it:

    config.json     every flag of the run (and the pre-training digits)
    metrics.jsonl   one JSON line per evaluation (a value that is not finite is written as null)
    train.jsonl     one JSON line per iteration: every term of the loss, the gradient norm, the reward
    state.pt        while the run is unfinished: all that --resume needs (policy, optimizer, RNGs)
    model.pt        at the end, unless --no-save

A run folder is never replaced without --force, and --resume refuses settings that differ from the run's.
"""
import glob
import json
import math
import os
import sys
import time

import torch

from model import save_checkpoint
from runtime import atomic_save, device_type, mean_over_ranks, wait_for_ranks, write_text

METRICS_LOG, TRAIN_LOG = "metrics.jsonl", "train.jsonl"
# no effect on the numbers (provenance: where the run was started; a resumed part may run elsewhere)
RESUME_MAY_DIFFER = {"threads", "resume", "force", "fast_generate", "draft", "save", "device",
                     "provenance", "deterministic"}
# ... but the sampling generator's saved state only fits a generator of the same kind of device (cuda:0 and
# cuda:1 share one): a run goes on on the kind it started on


def prepare(args, config, rank=0):
    """prepare_folder on rank 0 (alone: the only rank); under torchrun the other ranks wait for it and read
    the saved state when resuming. Returns (run_dir, state or None, the rows logged so far)."""
    if rank == 0:
        prepared = prepare_folder(args, config)
        wait_for_ranks()
        return prepared
    wait_for_ranks()
    run_dir = os.path.join(args.out, args.name)
    state_path = os.path.join(run_dir, "state.pt")
    state = torch.load(state_path, map_location="cpu", weights_only=True) if args.resume else None
    return run_dir, state, []


def prepare_folder(args, config):
    """Make --out/--name for a new run (refusing to replace one without --force) and write its config;
    or, with --resume, check that the run was made with the same settings and return its saved state and
    its rows, with metrics.jsonl cut back to the evaluation the state was saved at.
    Returns (run_dir, state or None, the rows logged so far)."""
    run_dir = os.path.join(args.out, args.name)
    state_path, config_path = os.path.join(run_dir, "state.pt"), os.path.join(run_dir, "config.json")
    metrics_path = os.path.join(run_dir, "metrics.jsonl")
    for stale in glob.glob(os.path.join(glob.escape(run_dir), "*.tmp*")):
        os.remove(stale)  # left by a run killed in the middle of a save
    if args.resume:
        if not (os.path.exists(state_path) and os.path.exists(config_path) and os.path.exists(metrics_path)):
            sys.exit(f"error: --resume needs {state_path}, config.json and metrics.jsonl (an evaluation "
                     f"saves them); start the run without --resume")
        with open(config_path) as f:
            old = json.load(f)
        differ = [f"--{k.replace('_', '-')} {old.get(k)} (now {v})" for k, v in config.items()
                  if k not in RESUME_MAY_DIFFER and old.get(k) != v]
        if differ:
            sys.exit(f"error: --resume with other settings than {run_dir} was made with: {'; '.join(differ)}")
        started_on = old.get("device", "cpu")
        if device_type(started_on) != device_type(config["device"]):
            sys.exit(f"error: {run_dir} ran on {started_on} and its random state cannot move to "
                     f"{config['device']}; resume it with --device {device_type(started_on)}")
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        # a kill after the state was saved leaves rows the resumed run writes again: cut them
        rows = cut_back(metrics_path, state["episode"])
        if os.path.exists(os.path.join(run_dir, TRAIN_LOG)):  # runs from before train.jsonl have none
            cut_back(os.path.join(run_dir, TRAIN_LOG), state["episode"])
        return run_dir, state, rows
    if os.path.exists(run_dir) and os.listdir(run_dir) and not args.force:
        sys.exit(f"error: {run_dir} already holds a run; choose another --name, continue it with --resume, "
                 f"or pass --force to replace it")
    try:
        os.makedirs(run_dir, exist_ok=True)
        for stale in (METRICS_LOG, TRAIN_LOG, "model.pt",
                      "state.pt"):  # --force: nothing of the old run stays
            if os.path.exists(os.path.join(run_dir, stale)):
                os.remove(os.path.join(run_dir, stale))
        with open(config_path, "w") as f:
            json.dump(config, f, indent=2)
        open(metrics_path, "w").close()
    except OSError as e:
        sys.exit(f"error: cannot write the run folder {run_dir}: {e.strerror}; choose another --out")
    return run_dir, None, []


def cut_back(path, episode):
    """Keep the rows of a JSON-lines log up to `episode`; returns them."""
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    rows = [row for row in rows if row["episode"] <= episode]
    write_text(path, "".join(json.dumps(row) + "\n" for row in rows))
    return rows


def append_row(run_dir, row, log=METRICS_LOG):
    """One row (an evaluation, or with log=TRAIN_LOG an iteration) as one JSON line; a value that is not
    finite is written as null (valid JSON)."""
    with open(os.path.join(run_dir, log), "a") as f:
        f.write(json.dumps({k: v if not isinstance(v, float) or math.isfinite(v) else None
                            for k, v in row.items()}) + "\n")


def save_evaluation(run_dir, row, policy, optimizer, rng, generators, iteration):
    """An evaluation: its row appended to metrics.jsonl, then the state --resume goes on from."""
    append_row(run_dir, row)
    save_state(run_dir, policy, optimizer, rng, generators, iteration, row)


def save_state(run_dir, policy, optimizer, rng, generators, iteration, row):
    """Everything --resume needs to go on as if the run had never stopped, in one atomic write. generators:
    each rank's sampling generator state (one when alone, saved as it always was)."""
    atomic_save({"policy": policy.state_dict(), "optimizer": optimizer.state_dict(), "rng": rng.getstate(),
                 "generator": generators[0] if len(generators) == 1 else generators,
                 "torch_rng": torch.get_rng_state(),
                 "iteration": iteration, "episode": row["episode"], "minutes": row["minutes"]},
                os.path.join(run_dir, "state.pt"))


def restore_state(state, policy, optimizer, rng, generator, rank=0, ranks=1):
    """Put a saved state back (rank: whose sampling generator); returns the iteration to go on from."""
    saved = state["generator"] if isinstance(state["generator"], list) else [state["generator"]]
    if len(saved) != ranks:
        sys.exit(f"error: the run was made by {len(saved)} process(es), not {ranks}; resume with as many")
    policy.load_state_dict(state["policy"])
    optimizer.load_state_dict(state["optimizer"])
    rng.setstate(state["rng"])
    generator.set_state(saved[rank])
    torch.set_rng_state(state["torch_rng"])
    return state["iteration"]


def finish(run_dir):
    """A finished run keeps no state.pt (only an unfinished one can be resumed)."""
    os.remove(os.path.join(run_dir, "state.pt"))


def log_iteration(run, it, rewards, mask, stats, window):
    """Iteration it's row (means over every rank's share; run: rl.start's namespace) to train.jsonl and to
    the window of training terms that the next evaluation row averages. Returns the row."""
    stats = mean_over_ranks({"reward": rewards.mean().item(), "completion_length": mask.sum(1).mean().item(),
                             **stats})
    stats = {"iteration": it + 1, "episode": (it + 1) * run.per_iteration, **stats}
    for k in window:
        window[k].append(stats.get(k))
    if run.rank == 0:
        append_row(run.dir, stats, TRAIN_LOG)
    return stats


def finish_run(run):
    """The trained policy (unless --no-save), the folder closed (no state.pt), the summary line."""
    args = run.args
    if run.rank > 0:
        return
    if args.save:
        save_checkpoint(os.path.join(run.dir, "model.pt"), run.policy, rl_args=vars(args),
                        args=run.meta.get("args", {}), episodes=args.episodes)
    finish(run.dir)
    first, last = run.rows[0], run.rows[-1]
    print(f"done: N+{args.digits_plus} ({run.n + args.digits_plus} digits) greedy accuracy "
          f"{first['acc_plus']:.1f}% -> {last['acc_plus']:.1f}% | comfort zone {first['acc_comfort']:.1f}% "
          f"-> {last['acc_comfort']:.1f}% | {(time.time() - run.t0) / 60:.1f} min | {run.dir}")


# -----------------------------------------------------------------------------
# reading run folders back (curves.py, analyze.py)

# --reward pm1 was the 0/1 reward with a doubled advantage under the group baseline
RETIRED = {"reward": "01"}
# runs made before rl.py recorded its precisions: every one ran on a CPU with bfloat16 support, where the
# --dtype auto of then trained and generated in bfloat16 (results/speed.md)
BEFORE_DTYPES = {"training_dtype": "bfloat16", "generation_dtype": "bfloat16"}
REQUIRED = ("episode", "acc_plus", "acc_comfort")  # what every metrics.jsonl row must have


def read_run(run_dir):
    """config.json and the rows of metrics.jsonl of one rl.py run; None if it has not logged anything.
    A file that cannot be read is an error naming the file and line, not a run silently dropped."""
    config_path, metrics_path = os.path.join(run_dir, "config.json"), os.path.join(run_dir, METRICS_LOG)
    if not (os.path.exists(config_path) and os.path.exists(metrics_path)):
        return None
    try:
        with open(config_path) as f:
            config = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        sys.exit(f"error: {config_path} is not readable JSON ({e}); remove the run or repair the file")
    for flag, value in RETIRED.items():  # a flag rl.py no longer has, at the value every run now uses
        if config.get(flag) == value:
            del config[flag]
    config = {**BEFORE_DTYPES, **config}
    rows = []
    with open(metrics_path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                sys.exit(f"error: {metrics_path} line {number} is not JSON; remove the line or the run")
            missing = [k for k in REQUIRED if not isinstance(row, dict) or row.get(k) is None]
            if missing:
                sys.exit(f"error: {metrics_path} line {number} lacks {', '.join(missing)}; "
                         "remove the line or the run")
            rows.append(row)
    return {"dir": run_dir, "config": config, "rows": rows} if rows else None


def run_finished(run):
    """Whether a run logged its last evaluation (a run cut off early has no final accuracy)."""
    return run["rows"][-1]["episode"] >= run["config"].get("episodes", 0)


def find_runs(paths):
    """Run folders named directly, or found one level below a named folder (runs/sweep -> runs/sweep/*)."""
    runs = []
    for path in paths:
        candidates = [path] if os.path.exists(os.path.join(path, METRICS_LOG)) else \
            sorted(os.path.join(path, d) for d in (os.listdir(path) if os.path.isdir(path) else []))
        runs += [r for r in map(read_run, candidates) if r is not None]
    return runs
