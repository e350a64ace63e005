"""Hostile inputs, as a careless user or a bad day gives them, against the real scripts in subprocesses, each
sorted by what happened: a clean one-line refusal, accepted (and whole), a traceback, a hang, or work lost or
mixed (a case's own check failed). Tiny models; about five minutes on 2 CPU cores.

    python tests/hostile_inputs.py            # every case, then the count per outcome
    python tests/hostile_inputs.py --only pipe

Not part of `pytest` (tests/test_runs_kept.py and tests/test_bad_input.py hold one test per class); it exits
non-zero if any case ends in a traceback, a hang or lost work.
"""
import argparse
import glob
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from model import GPT, GPTConfig, save_checkpoint  # noqa: E402

RL = ["--episodes", "8", "--batch-size", "2", "--group-size", "2", "--eval-every", "4", "--eval-size", "2",
      "--threads", "1", "--no-save", "--device", "cpu"]
LONG_RL = ["--episodes", "600", *RL[2:]]  # long enough to be running while a second writer tries
PRETRAIN = ["--digits", "1", "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "128",
            "--eval-size", "2", "--threads", "1", "--device", "cpu"]
HANG = 60  # seconds: a case still running then has hung


class Case:
    def __init__(self, tmp):
        self.tmp = tmp

    def path(self, *parts):
        return os.path.join(self.tmp, *parts)


def script(name, *args, env=None, timeout=HANG, stdin=None):
    """Run one of the project's scripts (or a module: lab.bench); returns (returncode or None for a hang,
    stdout, stderr)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    where = ["-m", name] if name.startswith("lab.") else [os.path.join(ROOT, name)]  # a module, a script
    proc = subprocess.Popen([sys.executable, *where, *map(str, args)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        return None, out, err
    return proc.returncode, out, err


def start(name, *args):
    """A script started in the background, to be stopped by a signal; Ctrl-C (SIGINT) works in it even when
    this harness runs in the background (where a shell leaves SIGINT ignored, and children inherit that)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, os.path.join(ROOT, name), *map(str, args)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def wait_for(path, timeout=HANG):
    end = time.time() + timeout
    while time.time() < end:
        if os.path.exists(path) and os.path.getsize(path) > 0:
            return True
        time.sleep(0.2)
    return False


def rows(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def checkpoint(path, digits=2, meta=None, **changes):
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=256, n_layer=1, n_head=2, n_embd=16))
    save_checkpoint(path, model, args={"digits": digits})
    if meta is not None or changes:
        ckpt = torch.load(path, weights_only=True)
        if meta is not None:
            ckpt["meta"] = meta
        ckpt.update(changes)
        torch.save(ckpt, path)
    return path


def outcome(result, check=None):
    """What happened: refused, accepted, traceback, hang or lost (a failed check)."""
    code, out, err = result
    if code is None:
        return "hang", "still running after the limit"
    if "Traceback" in err:
        return "traceback", err.strip().splitlines()[-1]
    if check is not None:
        problem = check()
        if problem:
            return "lost", problem
    if code == 0:
        return "accepted", (out.strip().splitlines() or [""])[-1][:100]
    lines = [line for line in err.strip().splitlines()
             if line.startswith(("error:", "interrupted")) or ": error:" in line]  # a Ctrl-C: one line
    if len(lines) == 1:
        return "refused", lines[0][:160]
    return "lost", f"exit {code} without one clear error line: {err.strip()[-200:]}"


CASES = {}


def case(group):
    def register(fn):
        CASES[f"{group}: {fn.__name__.replace('_', ' ')}"] = fn
        return fn
    return register


# -----------------------------------------------------------------------------
# two writers, one output

@case("two writers")
def pretrain_same_out(c):
    out = c.path("add1.pt")
    first = start("pretrain.py", *PRETRAIN, "--steps", "3000", "--out", out)
    wait_for(out + ".lock")
    second = script("pretrain.py", *PRETRAIN, "--steps", "20", "--seed", "1", "--out", out)
    first.send_signal(signal.SIGINT)
    first.communicate()
    return second, lambda: None if second[0] not in (0, None) else "the second writer was accepted"


def running_rl(c, name="run"):
    first = start("rl.py", "--ckpt", c.ckpt, *LONG_RL, "--out", c.tmp, "--name", name)
    wait_for(c.path(name, "metrics.jsonl"))
    return first


def stop(proc):
    proc.send_signal(signal.SIGINT)
    return proc.communicate()


def second_writer(c, *flags, wait=0):
    """A second rl.py on the folder a first one is writing; the check: its rows were not mixed."""
    first = running_rl(c)
    time.sleep(wait)
    second = script("rl.py", "--ckpt", c.ckpt, *flags, "--out", c.tmp, "--name", "run")
    stop(first)
    episodes = [r["episode"] for r in rows(c.path("run", "metrics.jsonl"))]
    return second, lambda: None if episodes == sorted(set(episodes)) else f"mixed rows {episodes}"


@case("two writers")
def rl_force_while_running(c):
    return second_writer(c, *RL, "--force")


@case("two writers")
def rl_resume_while_running(c):
    return second_writer(c, *LONG_RL, "--resume", wait=2)


@case("two writers")
def rl_after_a_killed_writer(c):
    first = running_rl(c)
    first.send_signal(signal.SIGKILL)
    first.communicate()
    return script("rl.py", "--ckpt", c.ckpt, *LONG_RL, "--out", c.tmp, "--name", "run", "--resume"), None


# -----------------------------------------------------------------------------
# resume that follows its own advice

def advice(err):
    """The arguments of the resume command a stopped run printed (SystemExit if it printed none)."""
    if "to go on: " not in err:
        raise NoAdvice(err.strip()[-300:])
    return shlex.split(err.split("to go on: ")[1].strip().splitlines()[0])[2:]


def follow(err):
    """Run the resume command a stopped run printed, to its end: a LONG_RL run takes about a minute alone on
    2 cores, longer beside other work, so its limit is 4 x HANG (a hang still ends there)."""
    return script("rl.py", *advice(err), timeout=4 * HANG)


class NoAdvice(Exception):
    """A run stopped by Ctrl-C printed no command to go on with."""


@case("resume advice")
def ctrl_c_with_a_default_name(c):
    first = start("rl.py", "--ckpt", c.ckpt, *LONG_RL, "--out", c.tmp)
    end = time.time() + HANG
    while time.time() < end and not any(os.path.exists(c.path(d, "state.pt")) for d in os.listdir(c.tmp)
                                        if os.path.isdir(c.path(d))):
        time.sleep(0.2)
    _, err = stop(first)
    time.sleep(1.1)
    return follow(err), None


@case("resume advice")
def ctrl_c_during_the_first_evaluation_then_rerun(c):
    first = start("rl.py", "--ckpt", c.ckpt, *RL, "--eval-size", "400", "--out", c.tmp, "--name", "early")
    wait_for(c.path("early", "config.json"))
    stop(first)
    return script("rl.py", "--ckpt", c.ckpt, *RL, "--out", c.tmp, "--name", "early"), None


@case("resume advice")
def ctrl_c_during_the_first_evaluation_then_resume(c):
    first = start("rl.py", "--ckpt", c.ckpt, *RL, "--eval-size", "400", "--out", c.tmp, "--name", "early")
    wait_for(c.path("early", "config.json"))
    _, err = stop(first)
    return follow(err), None


def cut_run(c, name="cut"):
    """An RL run stopped by SIGINT after its first saved state; returns the printed resume arguments."""
    first = running_rl(c, name)
    end = time.time() + HANG
    while time.time() < end and len(rows(c.path(name, "metrics.jsonl"))) < 2:  # a state after training
        time.sleep(0.2)
    _, err = stop(first)
    return advice(err)


@case("resume advice")
def a_moved_folder(c):
    argv = cut_run(c)
    os.rename(c.path("cut"), c.path("moved"))
    argv[argv.index("--name") + 1] = "moved"
    return script("rl.py", *argv), None


@case("resume advice")
def the_checkpoint_spelt_otherwise(c):
    argv = cut_run(c)
    argv[argv.index("--ckpt") + 1] = os.path.join(os.path.dirname(c.ckpt), ".", os.path.basename(c.ckpt))
    return script("rl.py", *argv), None


@case("resume advice")
def pretrain_ctrl_c(c):
    out = c.path("add1.pt")
    first = start("pretrain.py", *PRETRAIN, "--steps", "400", "--out", out)
    wait_for(out + ".lock")
    time.sleep(2)
    _, err = stop(first)
    return script("pretrain.py", *advice(err)), None  # the advice as printed: --steps is the run's own


# -----------------------------------------------------------------------------
# a closed pipe

def piped(command, c):
    """`python <command> | head -1`, the script's exit status kept (pipefail), its stderr in err.txt."""
    line = f"set -o pipefail; {shlex.quote(sys.executable)} {command} 2>{c.path('err.txt')} | head -1"
    return subprocess.run(["bash", "-c", line], cwd=ROOT, capture_output=True, text=True, timeout=HANG,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


@case("closed pipe")
def rl_into_head(c):
    proc = piped(f"rl.py --ckpt {c.ckpt} {' '.join(RL)} --out {c.tmp} --name piped", c)
    err = open(c.path("err.txt")).read()
    done = os.path.exists(c.path("piped", "metrics.jsonl")) and rows(c.path("piped", "metrics.jsonl"))[-1][
        "episode"] == 8
    return (proc.returncode, proc.stdout, err), lambda: None if done else "the run did not finish"


@case("closed pipe")
def pretrain_into_head(c):
    proc = piped(f"pretrain.py {' '.join(PRETRAIN)} --steps 10 --out {c.path('p.pt')}", c)
    err = open(c.path("err.txt")).read()
    return (proc.returncode, proc.stdout, err), lambda: None if os.path.exists(c.path("p.pt")) else "no model"


# -----------------------------------------------------------------------------
# silent wrong numbers

@case("silent numbers")
def the_reference_replaced(c):
    argv = cut_run(c)
    checkpoint(c.ckpt.replace(".pt", "_other.pt"))
    os.replace(c.ckpt.replace(".pt", "_other.pt"), c.ckpt)
    return script("rl.py", *argv), None


@case("silent numbers")
def metrics_emptied(c):
    argv = cut_run(c)
    open(c.path("cut", "metrics.jsonl"), "w").close()
    return script("rl.py", *argv), None


@case("silent numbers")
def train_log_deleted(c):
    argv = cut_run(c)
    os.remove(c.path("cut", "train.jsonl"))
    return script("rl.py", *argv), None


@case("silent numbers")
def one_seed_twice_in_curves(c):
    for name in ("a", "b"):
        script("rl.py", "--ckpt", c.ckpt, *RL, "--out", c.path("runs"), "--name", name)
    result = script("analyze.py", "curves", c.path("runs"), "--out", c.tmp)
    return result, lambda: None if "seed 0 again" in result[2] else "the seed was counted twice, silently"


@case("silent numbers")
def pretrain_resume_with_fewer_steps(c):
    out = c.path("add1.pt")
    script("pretrain.py", *PRETRAIN, "--steps", "12", "--out", out)
    return script("pretrain.py", *PRETRAIN, "--steps", "8", "--out", out, "--resume"), None


# -----------------------------------------------------------------------------
# damaged files

def damaged_run(change):
    def run(c):
        argv = cut_run(c)
        change(c.path("cut"))
        return script("rl.py", *argv), None
    run.__name__ = change.__name__
    return run


def state_truncated(folder):
    path = os.path.join(folder, "state.pt")
    data = open(path, "rb").read()
    open(path, "wb").write(data[:len(data) // 2])


def state_empty(folder):
    open(os.path.join(folder, "state.pt"), "wb").close()


def state_random_bytes(folder):
    open(os.path.join(folder, "state.pt"), "wb").write(os.urandom(5000))


def state_of_pretrain(folder):
    torch.save({"model": {}, "step": 3, "args": {}}, os.path.join(folder, "state.pt"))


def state_a_list(folder):
    torch.save([1, 2, 3], os.path.join(folder, "state.pt"))


def metrics_cut_mid_line(folder):
    with open(os.path.join(folder, "metrics.jsonl"), "a") as f:
        f.write('{"episode": 8, "acc_pl')


def metrics_bad_first_line(folder):
    path = os.path.join(folder, "metrics.jsonl")
    text = open(path).read()
    open(path, "w").write("garbage\n" + text)


def train_cut_mid_line(folder):
    with open(os.path.join(folder, "train.jsonl"), "a") as f:
        f.write('{"iteration": 9')


def train_rows_of_strings(folder):
    open(os.path.join(folder, "train.jsonl"), "w").write('"a"\n"b"\n')


def config_not_json(folder):
    open(os.path.join(folder, "config.json"), "w").write("{oops")


def config_a_list(folder):
    open(os.path.join(folder, "config.json"), "w").write("[1, 2]")


def config_deleted(folder):
    os.remove(os.path.join(folder, "config.json"))


for change in (state_truncated, state_empty, state_random_bytes, state_of_pretrain, state_a_list,
               metrics_cut_mid_line, metrics_bad_first_line, train_cut_mid_line, train_rows_of_strings,
               config_not_json, config_a_list, config_deleted):
    case("damaged run files")(damaged_run(change))


def bad_checkpoint(**kwargs):
    def run(c):
        path = checkpoint(c.path("bad.pt"), **kwargs)
        return script("rl.py", "--ckpt", path, *RL, "--out", c.tmp, "--name", "r"), None
    return run


for label, kwargs in (("meta None", {"meta": None}), ("meta a list", {"meta": [1]}),
                      ("args None", {"meta": {"args": None}}), ("digits 0", {"digits": 0}),
                      ("digits a billion", {"digits": 10 ** 9}), ("digits a string", {"digits": "7"}),
                      ("vocabulary of another size", {"vocab": "abc"}), ("config None", {"config": None}),
                      ("model weights None", {"model": None}),
                      ("task of another kind", {"meta": {"task": 3}})):
    run = bad_checkpoint(**kwargs)
    run.__name__ = "checkpoint " + label.replace(" ", "_")
    case("damaged checkpoints")(run)


def not_finite_checkpoint(path, value):
    """A tiny checkpoint with one weight set to `value` (NaN or infinity)."""
    checkpoint(path)
    ckpt = torch.load(path, weights_only=True)
    ckpt["model"]["wte.weight"][0, 0] = value
    torch.save(ckpt, path)
    return path


@case("damaged checkpoints")
def checkpoint_with_nan_weights(c):
    path = not_finite_checkpoint(c.path("nan.pt"), float("nan"))
    result = script("rl.py", "--ckpt", path, *RL, "--out", c.tmp, "--name", "r")
    return result, lambda: "told to lower --lr" if "--lr" in result[2] else None


@case("damaged checkpoints")
def analyze_errors_on_a_nan_checkpoint(c):
    path = not_finite_checkpoint(c.path("inf.pt"), float("inf"))
    return script("analyze.py", "errors", "--ckpt", path, "--n", "4", "--out", c.tmp), None


@case("damaged checkpoints")
def pretrain_state_truncated(c):
    out = c.path("add1.pt")
    script("pretrain.py", *PRETRAIN, "--steps", "6", "--out", out)
    data = open(out + ".state", "rb").read()
    open(out + ".state", "wb").write(data[:100])
    return script("pretrain.py", *PRETRAIN, "--steps", "8", "--out", out, "--resume"), None


@case("damaged checkpoints")
def pretrain_state_of_another_script(c):
    out = c.path("add1.pt")
    script("pretrain.py", *PRETRAIN, "--steps", "6", "--out", out)
    torch.save({"policy": {}, "episode": 4}, out + ".state")
    return script("pretrain.py", *PRETRAIN, "--steps", "8", "--out", out, "--resume"), None


@case("damaged analysis files")
def cache_with_bad_lines(c):
    cache = c.path("cache.jsonl")
    open(cache, "w").write('5\n"x"\n{"no key": 1}\n{"key": "a", "accuracy": 1\n')
    return script("analyze.py", "accuracy", "--ckpt", c.ckpt, "--n", "2", "--extra", "0", "--cache", cache,
                  "--out", c.tmp), None


@case("damaged analysis files")
def cache_a_folder(c):
    return script("analyze.py", "accuracy", "--ckpt", c.ckpt, "--n", "2", "--cache", c.tmp, "--out",
                  c.path("t")), None


@case("damaged analysis files")
def curves_over_a_broken_config(c):
    script("rl.py", "--ckpt", c.ckpt, *RL, "--out", c.path("runs"), "--name", "a")
    open(c.path("runs", "a", "config.json"), "w").write("{")
    return script("analyze.py", "curves", c.path("runs"), "--out", c.tmp), None


@case("damaged analysis files")
def curves_over_rows_without_accuracy(c):
    script("rl.py", "--ckpt", c.ckpt, *RL, "--out", c.path("runs"), "--name", "a")
    open(c.path("runs", "a", "metrics.jsonl"), "w").write('{"episode": 0}\n')
    return script("analyze.py", "curves", c.path("runs"), "--out", c.tmp), None


# -----------------------------------------------------------------------------
# the environment

@case("environment")
def analyze_out_is_a_file(c):
    open(c.path("file"), "w").write("x")
    return script("analyze.py", "curves", c.tmp, "--out", c.path("file")), None


@case("environment")
def analyze_name_with_a_slash(c):
    return script("analyze.py", "curves", c.tmp, "--name", "../../x", "--out", c.tmp), None


@case("environment")
def rl_name_an_existing_file(c):
    open(c.path("taken"), "w").write("x")
    return script("rl.py", "--ckpt", c.ckpt, *RL, "--out", c.tmp, "--name", "taken"), None


@case("environment")
def rl_out_inside_a_file(c):
    open(c.path("file"), "w").write("x")
    return script("rl.py", "--ckpt", c.ckpt, *RL, "--out", c.path("file"), "--name", "r"), None


@case("environment")
def pretrain_out_inside_a_file(c):
    open(c.path("file"), "w").write("x")
    return script("pretrain.py", *PRETRAIN, "--steps", "4", "--out", c.path("file", "m.pt")), None


@case("environment")
def a_name_the_locale_cannot_print(c):
    return script("rl.py", "--ckpt", c.ckpt, *RL, "--out", c.tmp, "--name", "r\u00e9sum\u00e9",
                  env={"PYTHONIOENCODING": "ascii", "LC_ALL": "C"}), None


@case("environment")
def far_more_threads_than_cores(c):
    result = script("rl.py", "--ckpt", c.ckpt, *RL[:-5], "--threads", "4096", "--no-save", "--out", c.tmp,
                    "--name", "t")
    return result, lambda: None if "more than" in result[2] else "no note on the thread count"


# -----------------------------------------------------------------------------
# sizes that cannot be met, and wrong advice

@case("hangs")
def eval_set_larger_than_what_exists(c):
    path = checkpoint(c.path("add1.pt"), digits=1)
    return script("rl.py", "--ckpt", path, *RL, "--eval-size", "20000", "--out", c.tmp, "--name", "r"), None


@case("hangs")
def accuracy_with_an_absurd_n(c):
    return script("analyze.py", "accuracy", "--ckpt", c.ckpt, "--n", "1000000000", "--out", c.tmp), None


@case("hangs")
def accuracy_with_an_absurd_extra(c):
    return script("analyze.py", "accuracy", "--ckpt", c.ckpt, "--extra", "1000000", "--out", c.tmp), None


@case("wrong advice")
def kl_coef_1e308(c):
    return script("rl.py", "--ckpt", c.ckpt, *RL, "--kl-coef", "1e308", "--out", c.tmp, "--name", "r"), None


# -----------------------------------------------------------------------------
# the recount (issue 59): a resume that checks whose state it is, analysis that never pools or drops runs
# silently, closed streams, FIFOs and devices, absurd sizes, names a shell must carry

def cut_run_of_seed(c, name, seed, episodes=600):
    """cut_run for a run of another seed (and length): stopped after its first saved state; returns its
    flags."""
    flags = ["--ckpt", c.ckpt, *LONG_RL, "--episodes", str(episodes), "--seed", str(seed), "--out", c.tmp,
             "--name", name]
    first = start("rl.py", *flags)
    end = time.time() + HANG
    while time.time() < end and (not os.path.exists(c.path(name, "metrics.jsonl"))
                                 or len(rows(c.path(name, "metrics.jsonl"))) < 2):
        time.sleep(0.2)
    stop(first)
    return flags


@case("recount: whose state")
def a_state_of_seed_1_in_a_run_of_seed_0(c):
    cut_run_of_seed(c, "mine", 0)
    cut_run_of_seed(c, "theirs", 1)
    os.replace(c.path("theirs", "state.pt"), c.path("mine", "state.pt"))
    result = script("rl.py", "--ckpt", c.ckpt, *LONG_RL, "--out", c.tmp, "--name", "mine", "--resume")
    return result, lambda: None if "seed" in result[2] else "refused, but without naming the seed"


@case("recount: whose state")
def a_resume_with_other_threads_says_so_and_records_it(c):
    flags = cut_run_of_seed(c, "cut", 0, episodes=48)
    flags[flags.index("--threads") + 1] = "2"
    result = script("rl.py", *flags, "--resume")
    config = json.load(open(c.path("cut", "config.json")))
    said = "numbers will differ" in result[2] and config.get("resumed_with_threads")
    return result, lambda: None if said else "another --threads was accepted without a word or a record"


def two_runs_then_curves(c, change):
    """Two finished tiny runs under c.tmp/runs, `change`d, then analyze.py curves over them."""
    for name, seed in (("a", 0), ("b", 1)):
        script("rl.py", "--ckpt", c.ckpt, *RL, "--seed", str(seed), "--out", c.path("runs"), "--name", name)
    change(c.path("runs"))
    return script("analyze.py", "curves", c.path("runs"), "--out", c.path("tables"))


@case("recount: analysis")
def two_checkpoints_that_share_a_file_name(c):
    os.makedirs(c.path("other"))
    torch.manual_seed(1)
    other = c.path("other", "tiny.pt")
    save_checkpoint(other, GPT(GPTConfig(block_size=256, n_layer=1, n_head=2, n_embd=16)), args={"digits": 2})
    script("rl.py", "--ckpt", c.ckpt, *RL, "--out", c.path("runs"), "--name", "a")
    script("rl.py", "--ckpt", other, *RL, "--seed", "1", "--out", c.path("runs"), "--name", "b")
    result = script("analyze.py", "curves", c.path("runs"), "--out", c.path("tables"))
    pooled = "| all runs | 2 |" in result[1]
    return result, lambda: "two references pooled into one group" if pooled else None


@case("recount: analysis")
def a_run_whose_metrics_are_empty(c):
    def empty(runs):
        open(os.path.join(runs, "b", "metrics.jsonl"), "w").close()
    result = two_runs_then_curves(c, empty)
    return result, lambda: None if "b (nothing logged" in result[2] else "the empty run vanished unnamed"


def damaged_train_log(label, change):
    def run(c):
        result = two_runs_then_curves(c, lambda runs: change(os.path.join(runs, "b", "train.jsonl")))
        return result, lambda: None if "train.jsonl" in result[2] else "the damage went unnamed"
    run.__name__ = label
    case("recount: analysis")(run)


def cut_mid_line(path):
    text = open(path).read()
    open(path, "w").write(text[:-20])


def a_list_row(path):
    open(path, "a").write("[1, 2, 3]\n")


def a_folder_instead(path):
    os.remove(path)
    os.makedirs(path)


damaged_train_log("train_log_cut_mid_line_in_curves", cut_mid_line)
damaged_train_log("train_log_row_a_list_in_curves", a_list_row)
damaged_train_log("train_log_a_folder_in_curves", a_folder_instead)


@case("recount: damaged files")
def metrics_a_folder_on_resume(c):
    argv = cut_run(c)
    os.remove(c.path("cut", "metrics.jsonl"))
    os.makedirs(c.path("cut", "metrics.jsonl"))
    return script("rl.py", *argv), None


@case("recount: damaged files")
def accuracy_cache_of_wrong_types(c):
    cache = c.path("cache.jsonl")
    with open(cache, "w") as f:
        f.write(json.dumps({"key": "x", "set": 3, "accuracy": "high", "K": None}) + "\n")
        f.write(json.dumps({"key": "y", "accuracy": [1]}) + "\n")
    return script("analyze.py", "accuracy", "--ckpt", c.ckpt, "--n", "2", "--extra", "0", "--cache", cache,
                  "--out", c.tmp), None


@case("recount: damaged files")
def a_full_disk_while_appending_to_train_log(c):
    fill = ("import builtins, errno, runpy, sys\n"
            "real, count = builtins.open, [0]\n"
            "def full(path, mode='r', *a, **k):\n"
            "    if str(path).endswith('train.jsonl') and 'a' in mode:\n"
            "        count[0] += 1\n"
            "        if count[0] > 1:\n"
            "            raise OSError(errno.ENOSPC, 'No space left on device')\n"
            "    return real(path, mode, *a, **k)\n"
            "builtins.open = full\n"
            f"sys.argv = ['rl.py', *{['--ckpt', c.ckpt, *RL, '--out', c.tmp, '--name', 'full']!r}]\n"
            "runpy.run_path('rl.py', run_name='__main__')\n")
    proc = subprocess.run([sys.executable, "-c", fill], cwd=ROOT, capture_output=True, text=True,
                          timeout=HANG, env={**os.environ, "OMP_NUM_THREADS": "1"})
    whole = all(line.strip() and json.loads(line) for line in open(c.path("full", "train.jsonl")))
    return (proc.returncode, proc.stdout, proc.stderr), lambda: None if whole else "train.jsonl damaged"


@case("recount: damaged files")
def checkpoint_sizes_beyond_any_memory(c):
    path = checkpoint(c.path("huge.pt"))
    ckpt = torch.load(path, weights_only=True)
    ckpt["config"]["block_size"] = 10 ** 12
    torch.save(ckpt, path)
    return script("rl.py", "--ckpt", path, *RL, "--out", c.tmp, "--name", "r"), None


@case("recount: damaged files")
def checkpoint_vocabulary_a_number(c):
    return bad_checkpoint(vocab=5)(c)


def closed(label, shell_suffix, name, *flags, made=None, group="recount: closed streams"):
    """A case: the command `python name flags` with its streams redirected by shell_suffix (`>&-`,
    `>/dev/full`); the check: it wrote `made` (when given)."""
    def run(c):
        argv = (sys.executable, name, *[f.format(c=c) for f in flags])
        command = " ".join(shlex.quote(str(a)) for a in argv)
        proc = subprocess.run(["bash", "-c", f"{command} {shell_suffix}"], cwd=ROOT, capture_output=True,
                              text=True, timeout=HANG, env={**os.environ, "OMP_NUM_THREADS": "1"})
        target = made.format(c=c) if made else None
        return (proc.returncode, proc.stdout, proc.stderr), lambda: None if not target or \
            os.path.exists(target) else f"nothing written ({target})"
    run.__name__ = label
    case(group)(run)


RL_FLAGS = ["--ckpt", "{c.ckpt}", *RL, "--out", "{c.tmp}", "--name", "r"]
PRE_FLAGS = [*PRETRAIN, "--steps", "4", "--out", "{c.tmp}/p.pt"]
ACC_FLAGS = ["accuracy", "--ckpt", "{c.ckpt}", "--n", "2", "--extra", "0", "--cache", "", "--out", "{c.tmp}"]
closed("rl_with_stdout_closed", ">&-", "rl.py", *RL_FLAGS, made="{c.tmp}/r/train.jsonl")
closed("rl_with_stderr_closed", "2>&-", "rl.py", *RL_FLAGS, made="{c.tmp}/r/train.jsonl")
closed("pretrain_with_stdout_closed", ">&-", "pretrain.py", *PRE_FLAGS, made="{c.tmp}/p.pt")
closed("pretrain_with_stderr_closed", "2>&-", "pretrain.py", *PRE_FLAGS, made="{c.tmp}/p.pt")
closed("analyze_with_both_closed", ">&- 2>&-", "analyze.py", *ACC_FLAGS, made="{c.tmp}/accuracy.md")


@case("recount: not a file")
def rl_ckpt_a_fifo(c):
    os.mkfifo(c.path("fifo.pt"))
    return script("rl.py", "--ckpt", c.path("fifo.pt"), *RL, "--out", c.tmp, "--name", "r"), None


@case("recount: not a file")
def analyze_ckpt_a_fifo(c):
    os.mkfifo(c.path("fifo.pt"))
    return script("analyze.py", "errors", "--ckpt", c.path("fifo.pt"), "--n", "2", "--out", c.tmp), None


@case("recount: not a file")
def rl_ckpt_a_device(c):
    return script("rl.py", "--ckpt", "/dev/zero", *RL, "--out", c.tmp, "--name", "r"), None


@case("recount: not a file")
def accuracy_cache_a_fifo(c):
    os.mkfifo(c.path("cache"))
    return script("analyze.py", "accuracy", "--ckpt", c.ckpt, "--n", "2", "--extra", "0", "--cache",
                  c.path("cache"), "--out", c.tmp), None


@case("recount: absurd sizes")
def rl_eval_size_a_hundred_thousand(c):
    return script("rl.py", "--ckpt", c.ckpt, *RL, "--eval-size", "100000", "--out", c.tmp, "--name", "r"), \
        None


@case("recount: absurd sizes")
def accuracy_n_a_hundred_thousand(c):
    return script("analyze.py", "accuracy", "--ckpt", c.ckpt, "--n", "100000", "--out", c.tmp), None


@case("recount: absurd sizes")
def rl_seed_beyond_64_bits(c):
    return script("rl.py", "--ckpt", c.ckpt, *RL, "--seed", str(10 ** 30), "--out", c.tmp, "--name", "r"), \
        None


@case("recount: absurd sizes")
def rl_episodes_beyond_a_lifetime(c):
    return script("rl.py", "--ckpt", c.ckpt, *RL, "--episodes", str(10 ** 21), "--out", c.tmp, "--name",
                  "r"), None


@case("recount: absurd sizes")
def pretrain_seed_beyond_64_bits(c):
    return script("pretrain.py", *PRETRAIN, "--steps", "2", "--seed", str(10 ** 30), "--out",
                  c.path("p.pt")), None


def dash_name_advice(label, name_args):
    def run(c):
        first = start("rl.py", "--ckpt", c.ckpt, *LONG_RL, "--out", c.tmp, *name_args)
        end = time.time() + HANG
        while time.time() < end and not any(os.path.exists(os.path.join(c.tmp, d, "state.pt"))
                                            for d in os.listdir(c.tmp) if os.path.isdir(c.path(d))):
            time.sleep(0.2)
        _, err = stop(first)
        return follow(err), None
    run.__name__ = label
    case("recount: advice")(run)


dash_name_advice("a_name_that_starts_with_a_dash", ["--name=-dashrun"])
dash_name_advice("a_name_with_spaces_and_quotes", ["--name", "my 'best' run"])
dash_name_advice("a_name_with_a_dollar_and_a_semicolon", ["--name", "a$HOME;b"])


# -----------------------------------------------------------------------------
# the third recount (issue 70): what is compared, kills, resumes that would change the run, bounds

def runs_at_two_lrs(c):
    """A prioritized and a uniform run at lr 1e-4, and a prioritized one at lr 3e-4 (no uniform run there)."""
    for name, flags in (("u", ["--alpha", "0", "--lr", "1e-4"]), ("p", ["--alpha", "100", "--lr", "1e-4"]),
                        ("p_fast", ["--alpha", "100", "--lr", "3e-4"])):
        script("rl.py", "--ckpt", c.ckpt, *RL, "--out", c.path("runs"), "--name", name, *flags)
    return c.path("runs")


@case("what is compared")
def frontier_of_a_run_with_no_uniform_run_at_its_lr(c):
    result = script("analyze.py", "frontier", runs_at_two_lrs(c), "--out", c.tmp)
    short = result[1].split("In full:")[0]
    return result, lambda: (None if "no frontier |" in short and "warning: no uniform run shares" in result[2]
                            else "a run was set against a frontier of another lr, or said to lie above none")


@case("kills")
def rl_sigterm_stops_as_ctrl_c_does(c):
    first = running_rl(c)
    first.send_signal(signal.SIGTERM)
    _, err = first.communicate()
    return follow(err), None  # the advice it printed, followed


@case("kills")
def rl_sighup_stops_as_ctrl_c_does(c):
    first = running_rl(c)
    first.send_signal(signal.SIGHUP)
    _, err = first.communicate()
    return follow(err), None


@case("kills")
def analyze_accuracy_ctrl_c(c):
    proc = start("analyze.py", "accuracy", "--ckpt", c.ckpt, "--n", "2000", "--cache", "", "--out", c.tmp)
    time.sleep(8)
    _, err = stop(proc)
    said = [line for line in err.splitlines() if line.strip()][-1:]
    then = script("analyze.py", "accuracy", "--ckpt", c.ckpt, "--n", "4", "--cache", "", "--out", c.tmp)
    return then, lambda: (None if said and said[0].startswith("interrupted (Ctrl-C)") and "Traceback" not in
                          err else f"Ctrl-C ended in: {err.strip()[-200:]}")


def duplicated_row(c):
    """A stopped run whose metrics.jsonl holds its first evaluation again at the end; its resume arguments."""
    argv = cut_run(c)
    path = c.path("cut", "metrics.jsonl")
    lines = open(path).read().splitlines()
    open(path, "w").write("\n".join([*lines, lines[0]]) + "\n")
    return argv


@case("logs out of order")
def curves_of_a_run_with_an_evaluation_twice(c):
    duplicated_row(c)
    return script("analyze.py", "curves", c.path("cut"), "--out", c.tmp), None


@case("logs out of order")
def resume_of_a_run_with_an_evaluation_twice(c):
    return script("rl.py", *duplicated_row(c)), None


@case("resumes that would change the run")
def pretrain_resume_with_more_steps(c):
    out = c.path("add1.pt")
    script("pretrain.py", *PRETRAIN, "--steps", "6", "--out", out)
    return script("pretrain.py", *PRETRAIN, "--steps", "12", "--out", out, "--resume"), None


@case("resumes that would change the run")
def rl_resume_with_another_sampler(c):
    argv = cut_run(c)
    return script("rl.py", *argv, "--sampler", "cache"), None


@case("bounds")
def rl_ppo_epochs_for_hours(c):
    return script("rl.py", "--ckpt", c.ckpt, *RL, "--algo", "ppo", "--ppo-epochs", "100000", "--out",
                  c.tmp), None


@case("bounds")
def pretrain_lr_beyond_float32(c):
    return script("pretrain.py", *PRETRAIN, "--lr", "1e308", "--out", c.path("a.pt")), None


@case("bounds")
def pretrain_digits_a_billion(c):
    return script("pretrain.py", *PRETRAIN[2:], "--digits", "1000000000", "--out", c.path("a.pt")), None


# a full standard output or error (a full disk under `> log`): printing must never cost the run
FULL = "full streams"
closed("rl_with_stdout_full", ">/dev/full", "rl.py", *RL_FLAGS, made="{c.tmp}/r/train.jsonl", group=FULL)
closed("rl_with_stderr_full", "2>/dev/full", "rl.py", *RL_FLAGS, made="{c.tmp}/r/train.jsonl", group=FULL)
closed("rl_with_both_full", ">/dev/full 2>&1", "rl.py", *RL_FLAGS, made="{c.tmp}/r/train.jsonl", group=FULL)
closed("pretrain_with_stdout_full", ">/dev/full", "pretrain.py", *PRE_FLAGS, made="{c.tmp}/p.pt", group=FULL)
closed("pretrain_with_both_full", ">/dev/full 2>&1", "pretrain.py", *PRE_FLAGS, made="{c.tmp}/p.pt",
       group=FULL)
closed("analyze_accuracy_with_stdout_full", ">/dev/full", "analyze.py", *ACC_FLAGS,
       made="{c.tmp}/accuracy.md", group=FULL)
closed("bench_with_both_full", ">/dev/full 2>&1", "-m", "lab.bench", "--ckpt", "{c.ckpt}", "--batch-size",
       "2", "--eval-size", "2", "--recompute-every", "64", "--threads", "1", "--device", "cpu", group=FULL)


# torchrun: one clear line from the first rank, none from the others

def torchrun(c, *args):
    """A script run by torchrun with two processes (gloo on the CPU), each rank's output kept apart
    (torchrun's --log-dir and --redirects); torchrun's own report of a failed child is not the scripts'
    output. Returns ((returncode or None for a hang, rank 0's stdout, rank 0's stderr), rank 1's output)."""
    logs = c.path("torchrun-logs")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "--log-dir", logs, "--redirects", "3", *map(str, args)]
    try:
        proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=2 * HANG,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    except subprocess.TimeoutExpired:
        return (None, "", ""), ""

    def read(rank, stream):
        return "".join(open(p).read() for p in glob.glob(os.path.join(logs, "*", "*", str(rank),
                                                                       f"{stream}.log")))
    return (proc.returncode, read(0, "stdout"), read(0, "stderr")), read(1, "stdout") + read(1, "stderr")


def second_rank_silent(other):
    return lambda: None if not other.strip() else f"the second rank spoke: {other.strip()[-200:]}"


@case("torchrun")
def torchrun_rl_run_started_again_without_force(c):
    flags = ["--ckpt", c.ckpt, *RL, "--out", c.tmp, "--name", "r"]
    script("rl.py", *flags)
    result, other = torchrun(c, "rl.py", *flags)
    return result, second_rank_silent(other)


@case("torchrun")
def torchrun_pretrain_out_that_exists(c):
    script("pretrain.py", *PRETRAIN, "--steps", "2", "--out", c.path("p.pt"))
    result, other = torchrun(c, "pretrain.py", *PRETRAIN, "--steps", "2", "--batch-size", "4", "--out",
                             c.path("p.pt"))
    return result, second_rank_silent(other)


@case("torchrun")
def torchrun_resume_of_a_one_process_run(c):
    argv = cut_run(c)
    result, other = torchrun(c, "rl.py", *argv)
    told = "to go on: python " in result[2] and "made by 1 process(es) and this is 2" in result[2]
    return result, lambda: second_rank_silent(other)() or (None if told else "no command with one process")


@case("resume advice")
def one_process_resume_of_a_two_process_run(c):
    argv = cut_run(c)
    config = json.load(open(c.path("cut", "config.json")))
    json.dump({**config, "ranks": 2}, open(c.path("cut", "config.json"), "w"))  # as torchrun -n 2 wrote it
    state = torch.load(c.path("cut", "state.pt"), weights_only=False)
    state["identity"]["ranks"] = 2
    torch.save(state, c.path("cut", "state.pt"))
    result = script("rl.py", *argv)
    told = "to go on: torchrun --standalone --nproc_per_node 2 " in result[2] and "--force" not in result[2]
    return result, lambda: None if told else "not told to resume with torchrun and 2 processes"


@case("resume advice")
def ctrl_c_of_rl_started_from_another_directory(c):
    here = os.path.relpath(os.path.join(ROOT, "rl.py"), c.tmp)  # e.g. ../../work/main/rl.py
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    flags = ["--ckpt", c.ckpt, *LONG_RL, "--out", c.tmp, "--name", "far"]
    first = subprocess.Popen([sys.executable, here, *flags], cwd=c.tmp, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    end = time.time() + HANG
    while time.time() < end and (not os.path.exists(c.path("far", "metrics.jsonl"))
                                 or len(rows(c.path("far", "metrics.jsonl"))) < 2):
        time.sleep(0.2)
    _, err = stop(first)
    if "to go on: " not in err:
        raise NoAdvice(err.strip()[-300:])
    command = shlex.split(err.split("to go on: ")[1].strip().splitlines()[0])
    command[0] = sys.executable  # "python", followed literally, from the same directory
    proc = subprocess.Popen(command, cwd=c.tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    time.sleep(5)
    out2, err2 = stop(proc)
    went_on = "resuming" in out2 and command[1] == here
    return (0, out2, err2), lambda: None if went_on else f"the advice did not resume: {err2[-200:]}"


@case("resume advice")
def study_print_commands_with_a_finished_run(c):
    runs = c.path("runs")
    script("rl.py", "--ckpt", c.ckpt, *RL, "--out", os.path.join(runs, "study_small", "alpha"), "--name",
           "alpha0_seed0")
    path = os.path.join(runs, "study_small", "alpha", "alpha0_seed0", "metrics.jsonl")
    logged = rows(path)
    logged[-1]["episode"] = 1024  # as if it had run the small study's whole budget
    open(path, "w").write("".join(json.dumps(r) + "\n" for r in logged))
    result = script("analyze.py", "study", "--print-commands", "--runs", runs)
    again = [line for line in result[1].splitlines() if "--name alpha0_seed0 " in line]
    return result, lambda: f"a finished run printed again: {again[0][:120]}" if again else None


# logs out of order, duplicated or not finite: named with their file and line

@case("logs out of order")
def curves_of_a_train_log_with_nan(c):
    def nan(runs):
        path = os.path.join(runs, "b", "train.jsonl")
        lines = open(path).read().splitlines()
        open(path, "w").write("\n".join([lines[0].replace('"kl": 0.0', '"kl": NaN', 1), *lines[1:]]) + "\n")
    result = two_runs_then_curves(c, nan)
    said = "train.jsonl line 1 (not a finite number" in result[1] + result[2]
    return result, lambda: None if said else "the NaN went unnamed"


@case("logs out of order")
def curves_of_a_train_log_with_an_iteration_twice(c):
    def twice(runs):
        path = os.path.join(runs, "b", "train.jsonl")
        lines = open(path).read().splitlines()
        open(path, "w").write("\n".join([*lines, lines[0]]) + "\n")
    result = two_runs_then_curves(c, twice)
    said = "duplicated or out of order" in result[1] + result[2]
    return result, lambda: None if said else "the repeated iteration went unnamed"


@case("logs out of order")
def curves_of_evaluations_out_of_order(c):
    def swap(runs):
        path = os.path.join(runs, "b", "metrics.jsonl")
        lines = open(path).read().splitlines()
        open(path, "w").write("\n".join([lines[0], lines[2], lines[1]]) + "\n")
    return two_runs_then_curves(c, swap), None


@case("logs out of order")
def frontier_of_a_run_with_a_nan_accuracy(c):
    runs = runs_at_two_lrs(c)
    path = os.path.join(runs, "p", "metrics.jsonl")
    logged = rows(path)
    logged[-1]["acc_plus"] = float("nan")
    open(path, "w").write("".join(json.dumps(r) + "\n" for r in logged))
    return script("analyze.py", "frontier", runs, "--out", c.tmp), None


@case("logs out of order")
def resume_of_a_train_log_with_an_iteration_twice(c):
    argv = cut_run(c)
    path = c.path("cut", "train.jsonl")
    lines = open(path).read().splitlines()
    open(path, "w").write("\n".join([lines[0], *lines]) + "\n")
    return script("rl.py", *argv), None


# what is compared: a frontier only from runs that share the checkpoint, the lr and every other setting

@case("what is compared")
def frontier_whose_uniform_run_used_another_checkpoint(c):
    other = checkpoint(c.path("other.pt"))
    ckpt = torch.load(other, weights_only=True)
    ckpt["model"] = {k: v + 0.01 for k, v in ckpt["model"].items()}  # another model: another SHA-256
    torch.save(ckpt, other)
    script("rl.py", "--ckpt", other, *RL, "--alpha", "0", "--out", c.path("runs"), "--name", "u")
    script("rl.py", "--ckpt", c.ckpt, *RL, "--alpha", "100", "--out", c.path("runs"), "--name", "p")
    result = script("analyze.py", "frontier", c.path("runs"), "--out", c.tmp)
    short = result[1].split("In full:")[0]
    return result, lambda: (None if "no frontier |" in short and "warning: no uniform run shares" in result[2]
                            else "set against the frontier of another checkpoint")


@case("what is compared")
def frontier_with_no_uniform_run_at_all(c):
    for name, alpha in (("p3", "3"), ("p100", "100")):
        script("rl.py", "--ckpt", c.ckpt, *RL, "--alpha", alpha, "--out", c.path("runs"), "--name", name)
    result = script("analyze.py", "frontier", c.path("runs"), "--out", c.tmp)
    return result, lambda: None if "yes" not in result[1].split("In full:")[0] else "above a frontier of none"


# kills and counts

@case("kills")
def bench_ctrl_c(c):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "lab.bench", "--threads", "1", "--device", "cpu"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    time.sleep(10)
    out, err = stop(proc)
    said = [line for line in err.splitlines() if line.strip()][-1:]
    one = said and said[0].startswith("interrupted (Ctrl-C)")
    return (proc.returncode, out, err), lambda: None if one else f"Ctrl-C ended in: {err.strip()[-200:]}"


@case("bounds")
def rl_digits_plus_a_billion(c):
    return script("rl.py", "--ckpt", c.ckpt, *RL, "--digits-plus", "1000000000", "--out", c.tmp), None


@case("bounds")
def fork_check_digits_zero(c):
    return script("lab.fork_check", "--digits", "0"), None


@case("bounds")
def bench_eval_size_a_billion(c):
    return script("lab.bench", "--ckpt", c.ckpt, "--eval-size", "1000000000"), None


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default="", help="run the cases whose name contains this")
    args = p.parse_args()
    counts, bad = Counter(), []
    for name, fn in CASES.items():
        if args.only not in name:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            c = Case(tmp)
            c.ckpt = checkpoint(os.path.join(tmp, "tiny.pt"))
            try:
                result, check = fn(c)
                what, detail = outcome(result, check)
            except NoAdvice as e:
                what, detail = "lost", f"Ctrl-C printed no command to go on with: {e}"
        counts[what] += 1
        print(f"{what:9} | {name} | {detail}", flush=True)
        if what in ("traceback", "hang", "lost"):
            bad.append(name)
    shown = ", ".join(f"{k}: {v}" for k, v in counts.most_common())
    print(f"\n{shown} ({sum(counts.values())} inputs)")
    if bad:
        sys.exit(f"{len(bad)} case(s) ended badly: {'; '.join(bad)}")


if __name__ == "__main__":
    main()
