"""
`python -m lab.fork_check`: a fork of the task (data.py) checked end to end in about a minute, so a student
who changed the task sees at once whether the rest of the project still runs on it. It checks what a fork
must keep true, then runs the three steps on a tiny model in a temporary folder:

    1. the task's texts: each sampled problem's target earns reward 1, and a wrong answer earns less
    2. the texts fit: pre-training's default recipe (pretrain.py with no flags) fits its model's context,
       and so do the N+1-digit texts that RL fine-tuning of that model samples
    3. python pretrain.py (a tiny model, a few steps), python rl.py (a few iterations), and
       python analyze.py accuracy on the result

Any failure ends the check with the step that failed and the last lines it printed (exit status 1). A
reader of the method may skip this module: it only runs the scripts as a user would.
"""
import argparse
import os
import random
import subprocess
import sys
import tempfile

import data
from lab.runtime import add_number

TINY = ["--n-layer", "1", "--n-embd", "16", "--n-head", "2", "--steps", "30", "--eval-size", "2",
        "--eval-every", "30", "--threads", "1"]
RL = ["--episodes", "8", "--batch-size", "2", "--group-size", "2", "--eval-every", "4", "--eval-size", "4",
      "--threads", "1", "--no-save"]


def fail(step, detail):
    sys.exit(f"fork check FAILED at {step}: {detail}")


def check_texts(digits):
    """Step 1: the task's own functions agree with each other on sampled problems."""
    rng = random.Random(0)
    for _ in range(20):
        problem = data.pretrain_problem(digits, rng)
        text = data.target(problem)
        if data.reward(problem, text) != 1.0:
            fail("the task's texts", f"data.reward({problem!r}, data.target(...)) is not 1: the target text "
                 "and the reward disagree")
        if data.reward(problem, text[:-2]) == 1.0:
            fail("the task's texts", f"a cut-off target of {problem!r} still earns reward 1: the reward does "
                 "not read the answer")


def run(step, command, folder):
    """One script, as a user runs it; its last lines on failure."""
    done = subprocess.run([sys.executable, *command], cwd=folder, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    if done.returncode != 0 or "Traceback" in done.stderr:
        said = (done.stderr.strip() or done.stdout.strip()).splitlines()
        tail = [line for line in said if "error" in line.lower()][-1:] or said[-3:]  # the error, not usage
        fail(step, " | ".join(tail) or f"exit status {done.returncode}")
    print(f"ok: {step}")
    return done


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_number(p, "--digits", int, 2, "N of the tiny model (default 2)", at_least=1, at_most=100)
    add_number(p, "--block-size", int, 256, "positions of the tiny model (default 256)", at_least=1,
               at_most=1_048_576)
    args = p.parse_args(argv)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    print(f"fork check of the task {data.NAME!r} (data.NAME)")
    check_texts(args.digits)
    print("ok: the task's texts")
    run("the default recipe's context (pretrain.py with no flags)",
        ["-c", "import pretrain; pretrain.get_args([])"], root)
    recipe = run("the N+1 texts RL needs (rl.py on the default recipe's model)",
                 ["-c", "import data, pretrain; a = pretrain.get_args([]); "
                        "print(data.longest_sequence(a.digits + 1), a.block_size, a.digits + 1)"], root)
    need, have, digits = map(int, recipe.stdout.split()[-3:])
    if need > have:
        fail("the N+1 texts RL needs", f"{digits}-digit texts need {need} positions, more than the default "
             f"--block-size {have} of pretrain.py: raise its default (or pre-train with --block-size {need})")
    need = data.longest_sequence(args.digits + 1)
    if need > args.block_size:
        fail("the tiny model's context", f"{args.digits + 1}-digit texts need {need} positions, more than "
             f"--block-size {args.block_size}: raise it")
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = os.path.join(tmp, "tiny.pt")
        run("pre-training", [os.path.join(root, "pretrain.py"), "--digits", str(args.digits), "--block-size",
                             str(args.block_size), *TINY, "--out", ckpt], root)
        done = run("RL fine-tuning", [os.path.join(root, "rl.py"), "--ckpt", ckpt, *RL, "--out", tmp,
                                      "--name", "rl"], root)
        if "done:" not in done.stdout:
            fail("RL fine-tuning", "rl.py ended without its summary line ('done: ...')")
        table = run("the accuracy table", [os.path.join(root, "analyze.py"), "accuracy", "--ckpt", ckpt,
                                           "--n", "4", "--extra", "0", "--cache", "", "--out", tmp], root)
        if "tiny.pt" not in table.stdout:
            fail("the accuracy table", "analyze.py accuracy printed no row for the tiny model")
    print(f"fork check passed: {data.NAME!r} pre-trains, fine-tunes and is measured end to end")


if __name__ == "__main__":
    from lab.console import run_script
    run_script(main)
