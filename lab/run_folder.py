"""
An RL run's folder, --out/--name, as rl.py writes it and lab/curves.py reads it:

    config.json     every flag of the run (and the pre-training digits)
    metrics.jsonl   one JSON line per evaluation (a value that is not finite is written as null)
    train.jsonl     one JSON line per iteration: every term of the loss, the gradient norm, the reward
    state.pt        while the run is unfinished: all that --resume needs (policy, optimizer, RNGs)
    model.pt        at the end, unless --no-save

A run folder is never replaced without --force, and --resume refuses settings that differ from the run's.
Reading the folders back, for the tables, is lab/run_logs.py.

A reader of the method may skip it: it keeps a run's files whole and resumable, nothing more.
"""
import argparse
import glob
import hashlib
import json
import math
import os
import sys
import time

import torch

from model import save_checkpoint
from lab.files import atomic_save, hold_lock, write_text
from lab.ranks import mean_over_ranks, wait_for_ranks
from lab.runtime import device_type, precision_name, provenance

METRICS_LOG, TRAIN_LOG, LOCK = "metrics.jsonl", "train.jsonl", ".lock"
# no effect on the numbers (provenance: where the run was started; a resumed part may run elsewhere; out and
# name: where the folder is now, which may be where it was moved to)
RESUME_MAY_DIFFER = {"threads", "resume", "force", "save", "device", "provenance", "deterministic", "out",
                     "name"}
# ... but the sampling generator's saved state only fits a generator of the same kind of device (cuda:0 and
# cuda:1 share one): a run goes on on the kind it started on
STATE_KEYS = {"policy", "optimizer", "rng", "generator", "torch_rng", "iteration", "episode", "minutes"}


def add_folder_flags(group):
    """rl.py's flags for where a run is kept: --out, --save, --name, --force, --resume."""
    group.add_argument("--out", default="runs", help="folder for runs/<name>/")
    group.add_argument("--save", action=argparse.BooleanOptionalAction, default=True,
                       help="write runs/<name>/model.pt at the end (--no-save: only the logs, for sweeps)")
    group.add_argument("--name", default=None, help="run name (default alpha<a>_kl<c>_seed<s>_<time>)")
    group.add_argument("--force", action="store_true", help="replace an existing run folder --out/--name")
    group.add_argument("--resume", action="store_true", help="continue the run --out/--name from its last "
                       "evaluation (same flags; the state is saved at every evaluation)")


def config_of(args, n, device, dtypes, ranks):
    """config.json: every flag, then what this machine chose and what --resume checks: N, the device, the
    precisions --dtype chose (dtypes: training, generation), provenance, the ranks, the reference's hash."""
    recorded = {"pretrain_digits": n, "device": device, "training_dtype": precision_name(dtypes[0]),
                "generation_dtype": precision_name(dtypes[1]), "provenance": provenance(device),
                **({"ranks": ranks} if ranks > 1 else {})}
    recorded["ckpt_sha256"] = file_hash(args.ckpt)
    return {**vars(args), **recorded}


def identity(config):
    """What makes a run this run, kept in its state.pt: every setting that changes its numbers (the seed, the
    flags, the reference checkpoint's SHA-256), and the CPU threads it ran with (which change only rounding).
    --resume refuses a state whose identity is not the run's (a state.pt copied from another run)."""
    kept = {k: v for k, v in config.items() if k not in RESUME_MAY_DIFFER | {"ckpt"}}
    return {**kept, "threads": config.get("provenance", {}).get("threads")}


def prepare(args, config, rank=0, defaults=None):
    """prepare_folder on rank 0 (alone: the only rank); under torchrun the other ranks wait for it and read
    the saved state when resuming. Returns (run_dir, state or None, the rows logged so far)."""
    if rank == 0:
        prepared = prepare_folder(args, config, defaults)
        wait_for_ranks()
        return prepared
    wait_for_ranks()
    run_dir = os.path.join(args.out, args.name)
    state_path = os.path.join(run_dir, "state.pt")
    state = load_state(state_path) if os.path.exists(state_path) and args.resume else None
    return run_dir, state, []


def prepare_folder(args, config, defaults=None):
    """Make --out/--name for a new run and write its config, or, with --resume, check the run and return
    its saved state and its rows (metrics.jsonl and train.jsonl cut back to the evaluation the state was
    saved at). This process becomes the folder's only writer first (files.hold_lock). A folder that never
    saved an evaluation (stopped during the first one) holds no work: a rerun or --resume starts it anew.
    defaults: rl.py's flags at their defaults (a flag added after the run started may be at its default).
    Returns (run_dir, state or None, the rows logged so far)."""
    run_dir = os.path.join(args.out, args.name)
    if os.path.exists(run_dir) and not os.path.isdir(run_dir):
        sys.exit(f"error: {run_dir} is a file, not a run folder; choose another --name or --out")
    if args.resume and not os.path.isdir(run_dir):
        sys.exit(f"error: there is no run {run_dir} to resume (--out and --name say where it is); start it "
                 "without --resume")
    hold_lock(os.path.join(run_dir, LOCK), f"the run folder {run_dir}")
    state_path, config_path = os.path.join(run_dir, "state.pt"), os.path.join(run_dir, "config.json")
    for stale in glob.glob(os.path.join(glob.escape(run_dir), "*.tmp*")):
        os.remove(stale)  # left by a run killed in the middle of a save
    if args.resume and os.path.exists(state_path):
        return resume_folder(args, config, run_dir, defaults or {})
    if args.resume and has_work(run_dir):
        sys.exit(f"error: {run_dir} has no state.pt to resume from: the run is finished (model.pt, or its "
                 f"last evaluation logged) or its state was removed; start it anew with --force")
    if args.resume:
        print(f"note: {run_dir} saved no evaluation before it stopped: starting it from the beginning",
              file=sys.stderr)
    elif has_work(run_dir) and not args.force:
        sys.exit(f"error: {run_dir} already holds a run; choose another --name, continue it with --resume, "
                 f"or pass --force to replace it")
    try:
        os.makedirs(run_dir, exist_ok=True)
        for stale in (METRICS_LOG, TRAIN_LOG, "model.pt", "state.pt"):  # --force: nothing old stays
            if os.path.exists(os.path.join(run_dir, stale)):
                os.remove(os.path.join(run_dir, stale))
        write_text(config_path, json.dumps(config, indent=2), quiet=True)
        open(os.path.join(run_dir, METRICS_LOG), "w").close()
    except OSError as e:
        sys.exit(f"error: cannot write the run folder {run_dir}: {e.strerror}; choose another --out")
    return run_dir, None, []


def has_work(run_dir):
    """Whether a folder holds anything of a run worth keeping: a saved state, a model, a logged row."""
    if not os.path.isdir(run_dir):
        return False
    if any(os.path.exists(os.path.join(run_dir, f)) for f in ("state.pt", "model.pt")):
        return True
    logs = [os.path.join(run_dir, f) for f in (METRICS_LOG, TRAIN_LOG)]
    if any(os.path.exists(p) and os.path.getsize(p) > 0 for p in logs):
        return True
    return any(not f.startswith(".") and f not in ("config.json", METRICS_LOG, TRAIN_LOG)
               for f in os.listdir(run_dir))


def resume_folder(args, config, run_dir, defaults):
    """--resume: the run's config, reference checkpoint, state and logs checked, each failure one line."""
    config_path, state_path = os.path.join(run_dir, "config.json"), os.path.join(run_dir, "state.pt")
    if not os.path.isfile(config_path):
        sys.exit(f"error: {config_path} is missing or not a file; the run cannot be checked: start it anew "
                 "with --force")
    try:
        with open(config_path) as f:
            old = json.load(f)
        if not isinstance(old, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as e:
        sys.exit(f"error: {config_path} is missing or not readable JSON ({type(e).__name__}); the run cannot "
                 "be checked: start it anew with --force")
    old.setdefault("sampler", sampler_of(old))  # a run from before --sampler: its two flags say which
    then, now = old.get("ranks", 1), config.get("ranks", 1)
    if then != now:  # each process draws its own sampling noise
        raise OtherProcessCount(f"error: {run_dir} was made by {then} process(es) and this is {now}: another "
                                "count is another run", then)
    differ = [f"--{k.replace('_', '-')} {old.get(k)} (now {v})" for k, v in config.items()
              if k not in RESUME_MAY_DIFFER | {"ckpt", "ckpt_sha256"} and old.get(k, defaults.get(k, v)) != v]
    if differ:
        sys.exit(f"error: --resume with other settings than {run_dir} was made with: {'; '.join(differ)}")
    if old.get("ckpt_sha256", config.get("ckpt_sha256")) != config.get("ckpt_sha256"):
        sys.exit(f"error: --ckpt {config['ckpt']} is not the file {run_dir} was started from (its SHA-256 "
                 f"differs from the one in config.json): resume with the run's own reference checkpoint")
    if "ckpt_sha256" not in old and not same_file(old.get("ckpt"), config["ckpt"]):
        sys.exit(f"error: --resume with another --ckpt than {run_dir} was made with: {old.get('ckpt')} "
                 f"(now {config['ckpt']})")
    started_on = old.get("device", "cpu")
    if device_type(started_on) != device_type(config["device"]):
        sys.exit(f"error: {run_dir} ran on {started_on} and its random state cannot move to "
                 f"{config['device']}; resume it with --device {device_type(started_on)}")
    state = load_state(state_path)
    check_identity(state.get("identity"), config, state_path, run_dir, defaults)
    threads_then = (state.get("identity") or {}).get("threads", old.get("provenance", {}).get("threads"))
    threads_now = config["provenance"]["threads"]
    if threads_then is not None and threads_then != threads_now:
        print(f"note: {run_dir} ran with {threads_then} CPU thread(s) and resumes with {threads_now}: its "
              "numbers will differ by float rounding from a run never interrupted (recorded in its "
              "config.json as 'resumed_with_threads')", file=sys.stderr)
        resumed = {"episode": state["episode"], "threads": threads_now}
        old.setdefault("resumed_with_threads", []).append(resumed)
        write_text(config_path, json.dumps(old, indent=2), quiet=True)
    rows = whole_log(os.path.join(run_dir, METRICS_LOG), "episode")
    if not any(row["episode"] == state["episode"] for row in rows):
        sys.exit(f"error: {run_dir}/{METRICS_LOG} lacks the evaluation at episode {state['episode']} that "
                 "state.pt was saved at (emptied or replaced?): the run cannot go on whole; start it anew "
                 "with --force")
    steps = whole_log(os.path.join(run_dir, TRAIN_LOG), "iteration") if state["iteration"] else []
    if [row["iteration"] for row in steps if row["iteration"] <= state["iteration"]] != \
            list(range(1, state["iteration"] + 1)):
        sys.exit(f"error: {run_dir}/{TRAIN_LOG} lacks iterations before the saved state (iteration "
                 f"{state['iteration']}): the run cannot go on whole; start it anew with --force")
    # a kill after the state was saved leaves rows the resumed run writes again: cut them
    rows = cut_back(os.path.join(run_dir, METRICS_LOG), rows, state["episode"])
    if state["iteration"]:
        cut_back(os.path.join(run_dir, TRAIN_LOG), steps, state["episode"])
    return run_dir, state, rows


class OtherProcessCount(SystemExit):
    """--resume with another process count than the run's (its `ranks`): rl.py adds the command to use."""

    def __init__(self, message, ranks):
        super().__init__(message)
        self.ranks = ranks


def check_identity(saved, config, state_path, run_dir, defaults):
    """A state saved by another run (copied in by hand) ends --resume with one line naming the first field
    that differs. A state from before states recorded their identity (None) passes: config.json was
    checked."""
    if not isinstance(saved, dict):
        return
    mine = identity(config)
    for key in sorted(set(saved) | set(mine)):
        if key == "threads" or (key == "sampler" and key not in saved):  # before --sampler: config.json's
            continue  # --draft and --fast-generate were checked against it (sampler_of)
        then, now = saved.get(key, defaults.get(key)), mine.get(key, defaults.get(key))
        if then != now:
            sys.exit(f"error: {state_path} was saved by another run than {run_dir}: its {key} is {then!r}, "
                     f"this run's is {now!r}; resume the run it belongs to, or start this one anew with "
                     "--force")


def sampler_of(config):
    """The --sampler of a run's config.json, also of a run made before the flag, with --draft and
    --fast-generate (--draft took the draft path whatever --fast-generate said)."""
    if "sampler" in config:
        return config["sampler"]
    return "draft" if config.get("draft", True) else "cache" if config.get("fast_generate", True) else "plain"


def same_file(a, b):
    """Whether two paths name the same file (./x and x, or a link to it), not just the same string."""
    try:
        return a == b or os.path.samefile(a, b)
    except (OSError, TypeError):
        return False


def file_hash(path):
    """The SHA-256 of a file, in hex: what config.json keeps of the reference checkpoint."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_state(path):
    """state.pt, checked: a damaged or foreign file ends the run with one line."""
    if not os.path.isfile(path):
        sys.exit(f"error: {path} is not a file (a folder, a FIFO or a device); move it away and start the "
                 "run anew with --force")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        sys.exit(f"error: {path} is damaged or not an rl.py state ({type(e).__name__}); start the run anew "
                 "with --force")
    if not isinstance(state, dict) or not STATE_KEYS <= state.keys():
        sys.exit(f"error: {path} is not an rl.py state (it lacks what --resume needs); start the run anew "
                 "with --force")
    return state


def whole_log(path, key):
    """The rows of a JSON-lines log, each a dict with `key`. A last line cut in the middle (a kill during
    the write) is dropped and said; any other unreadable line, or a missing file, ends with one line."""
    if not os.path.exists(path):
        sys.exit(f"error: {path} is missing: the run cannot go on whole; start it anew with --force")
    if not os.path.isfile(path):
        sys.exit(f"error: {path} is not a file (a folder, a FIFO or a device): the run cannot go on whole; "
                 "move it away and start the run anew with --force")
    with open(path) as f:
        lines = [line for line in f.read().split("\n") if line.strip()]
    rows = []
    for number, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or not isinstance(row.get(key), int):
                raise ValueError
        except ValueError:
            if number == len(lines):
                print(f"note: {path} line {number} was cut off in the middle; dropped", file=sys.stderr)
                break
            sys.exit(f"error: {path} line {number} is not a row of this log; repair the file, or start the "
                     "run anew with --force")
        if rows and row[key] <= rows[-1][key]:  # a resumed run would append after a duplicate
            sys.exit(f"error: {path} line {number}: {key} {row[key]} after {rows[-1][key]} (rows duplicated "
                     "or out of order); repair the file, or start the run anew with --force")
        rows.append(row)
    return rows


def cut_back(path, rows, episode):
    """Keep the rows of a JSON-lines log up to `episode` (rewriting the file); returns them."""
    rows = [row for row in rows if row["episode"] <= episode]
    write_text(path, "".join(json.dumps(row) + "\n" for row in rows), quiet=True)
    return rows


def append_row(run_dir, row, log=METRICS_LOG):
    """One row (an evaluation, or with log=TRAIN_LOG an iteration) as one JSON line; a value that is not
    finite is written as null (valid JSON)."""
    line = json.dumps({k: v if not isinstance(v, float) or math.isfinite(v) else None
                       for k, v in row.items()})
    try:
        with open(os.path.join(run_dir, log), "a") as f:
            f.write(line + "\n")
    except OSError as e:  # a full disk: the line may be cut, which --resume drops (whole_log)
        sys.exit(f"error: cannot append to {os.path.join(run_dir, log)} ({e.strerror}); free space, then "
                 f"continue with --resume (the run is kept up to its last evaluation)")


def save_evaluation(run_dir, row, policy, optimizer, rng, generators, iteration, run_identity=None):
    """An evaluation: its row appended to metrics.jsonl, then the state --resume goes on from."""
    append_row(run_dir, row)
    save_state(run_dir, policy, optimizer, rng, generators, iteration, row, run_identity)


def save_state(run_dir, policy, optimizer, rng, generators, iteration, row, run_identity=None):
    """Everything --resume needs to go on as if the run had never stopped, in one atomic write. generators:
    each rank's sampling generator state (one when alone, saved as it always was); run_identity: `identity`
    of the run's config, so that a state copied into another run is refused."""
    atomic_save({"policy": policy.state_dict(), "optimizer": optimizer.state_dict(), "rng": rng.getstate(),
                 "generator": generators[0] if len(generators) == 1 else generators,
                 "torch_rng": torch.get_rng_state(), "identity": run_identity,
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
    """Iteration it's row (means over every rank's share; run: rl.set_up's state) to train.jsonl and to
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
