"""kill -9 at random moments of small pre-training and RL runs, then --resume: every time the output must
load, and the resumed run must end exactly like an uninterrupted one (pre-training: the same weights,
bit for bit; RL: the same metrics.jsonl but for the wall-clock column).

    python tests/kill_harness.py                      # 10 pre-training kills, 5 RL kills (a few minutes)
    python tests/kill_harness.py --pretrain-kills 3 --rl-kills 2

Not part of `pytest` (too slow for the suite); it exits non-zero and says which kill failed.
"""
import argparse
import glob
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from model import load_checkpoint  # noqa: E402

TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "256", "--batch-size", "8",
        "--eval-size", "4", "--threads", "1", "--device", "cpu"]
PRETRAIN = ["--digits", "2", "--steps", "240", "--eval-every", "7", "--pool", "4", *TINY]
RL = ["--episodes", "96", "--batch-size", "2", "--group-size", "2", "--eval-every", "4", "--eval-size", "2",
      "--threads", "1", "--no-save", "--device", "cpu"]


def run(script, flags, kill_after=None):
    """Run a script to the end, or SIGKILL it after kill_after seconds. Returns (seconds, killed)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    start = time.time()
    proc = subprocess.Popen([sys.executable, script, *flags], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        _, err = proc.communicate(timeout=kill_after)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        return time.time() - start, True
    if proc.returncode != 0:
        raise SystemExit(f"{script} {' '.join(flags)} failed: "
                         f"{err.strip().splitlines()[-1] if err.strip() else proc.returncode}")
    return time.time() - start, False


def weights(path):
    return [t.clone() for t in load_checkpoint(path).state_dict().values()]


def metrics(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [{k: v for k, v in json.loads(line).items() if k != "minutes"} for line in f]


def pretrain_kills(folder, kills, rng, resumed):
    reference = os.path.join(folder, "whole.pt")
    seconds, _ = run("pretrain.py", [*PRETRAIN, "--out", reference])
    expected = weights(reference)
    failures = []
    for i in range(kills):
        out = os.path.join(folder, f"cut{i}.pt")
        moment = rng.uniform(1.0, seconds)
        _, killed = run("pretrain.py", [*PRETRAIN, "--out", out], kill_after=moment)
        if os.path.exists(out):
            load_checkpoint(out)  # a kill never leaves a checkpoint that does not load
        resume = ["--resume"] if os.path.exists(out + ".state") else ["--force"]
        run("pretrain.py", [*PRETRAIN, "--out", out, *resume])
        same = all(torch.equal(a, b) for a, b in zip(expected, weights(out)))
        leftovers = glob.glob(out + ".tmp*") + glob.glob(out + ".state.tmp*")
        print(f"pre-training kill {i + 1}: at {moment:.1f} s ({'killed' if killed else 'had finished'}), "
              f"{'resumed' if resume == ['--resume'] else 'restarted'}: "
              f"{'bit-identical' if same else 'DIFFERENT'}"
              f"{', leftover ' + str(leftovers) if leftovers else ''}")
        if not same or leftovers:
            failures.append(f"pre-training kill {i + 1}")
        resumed.append(resume == ["--resume"])
    return failures


def rl_kills(folder, kills, rng, resumed):
    ckpt = os.path.join(folder, "whole.pt")  # the pre-training run above, as the RL start
    seconds, _ = run("rl.py", [*RL, "--ckpt", ckpt, "--out", folder, "--name", "rl_whole"])
    expected = metrics(os.path.join(folder, "rl_whole"))
    failures = []
    for i in range(kills):
        name = f"rl_cut{i}"
        moment = rng.uniform(1.0, seconds)
        _, killed = run("rl.py", [*RL, "--ckpt", ckpt, "--out", folder, "--name", name], kill_after=moment)
        state = os.path.join(folder, name, "state.pt")
        resume = ["--resume"] if os.path.exists(state) else ["--force"]
        run("rl.py", [*RL, "--ckpt", ckpt, "--out", folder, "--name", name, *resume])
        same = metrics(os.path.join(folder, name)) == expected
        print(f"RL kill {i + 1}: at {moment:.1f} s ({'killed' if killed else 'had finished'}), "
              f"{'resumed' if resume == ['--resume'] else 'restarted'}: "
              f"{'same metrics' if same else 'DIFFERENT'}")
        if not same:
            failures.append(f"RL kill {i + 1}")
            got = metrics(os.path.join(folder, name))
            first = next((j for j, (x, y) in enumerate(zip(got, expected)) if x != y),
                         min(len(got), len(expected)))
            print(f"  {len(got)} rows against {len(expected)}; first difference at row {first}:\n  "
                  f"{got[first] if first < len(got) else None}\n  "
                  f"{expected[first] if first < len(expected) else None}")
        resumed.append(resume == ["--resume"])
    return failures


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pretrain-kills", type=int, default=10)
    p.add_argument("--rl-kills", type=int, default=5)
    p.add_argument("--seed", type=int, default=0, help="seeds the kill moments")
    args = p.parse_args()
    rng = random.Random(args.seed)
    resumed = []  # per kill: whether it came after the first save (else the run restarts from scratch)
    with tempfile.TemporaryDirectory() as folder:
        failures = (pretrain_kills(folder, args.pretrain_kills, rng, resumed)
                    + rl_kills(folder, args.rl_kills, rng, resumed))
    if failures:
        sys.exit(f"error: {len(failures)} kill(s) did not resume exactly: {', '.join(failures)}")
    print(f"all {len(resumed)} kills ended exactly like an uninterrupted run: {sum(resumed)} resumed from a "
          f"save, {len(resumed) - sum(resumed)} killed before the first save and restarted")


if __name__ == "__main__":
    main()
