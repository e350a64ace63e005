"""Runs are never lost or mixed: one writer per output, a resume that follows its own printed advice, damaged
files and odd environments answered in one line, sizes that cannot be met refused before any work. Tiny
models, in-process where possible; a second writer is a real second process."""
import json
import os
import shlex
import subprocess
import sys
import time

import pytest
import torch

import analyze
import pretrain
import rl
from lab import run_folder
from lab import files
from lab import console, runtime
from conftest import stop_after_saving
from model import GPT, GPTConfig, save_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--episodes", "8", "--batch-size", "2", "--group-size", "2", "--eval-every", "4", "--eval-size", "2",
        "--threads", "1", "--no-save", "--device", "cpu"]


def one_line(code):
    """A refusal's message: one line starting with 'error:'."""
    assert isinstance(code, str) and code.startswith("error:") and "\n" not in code.strip(), code
    return code


def refused(main, argv):
    with pytest.raises(SystemExit) as e:
        main(argv)
    return one_line(e.value.code)


def rows(path):
    return [json.loads(line) for line in open(path)]


def interrupted(tiny_checkpoint, tmp_path, monkeypatch, name="cut", episode=4):
    """A run stopped by Ctrl-C after its evaluation at `episode`; returns the printed resume command."""
    save = stop_after_saving(monkeypatch, episode)
    with pytest.raises(SystemExit) as e:
        rl.main(["--ckpt", tiny_checkpoint, *TINY, "--out", str(tmp_path), "--name", name])
    monkeypatch.setattr(run_folder, "atomic_save", save)
    return shlex.split(e.value.code.split("to go on: ")[1])


# -----------------------------------------------------------------------------
# one writer per output

@pytest.fixture
def holder(tmp_path):
    """Another process holding a lock on a path until killed (as a running rl.py or pretrain.py holds it)."""
    procs = []

    def hold(path):
        code = (f"import time; from lab import files; files.hold_lock({str(path)!r}, 'x'); "
                "print('held', flush=True); time.sleep(60)")
        proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "held"
        procs.append(proc)
        return proc
    yield hold
    for proc in procs:
        proc.kill()
        proc.wait()


def test_a_second_writer_of_a_run_folder_is_refused_and_a_killed_ones_lock_is_not_in_the_way(
        tiny_checkpoint, tmp_path, monkeypatch, holder):
    argv = interrupted(tiny_checkpoint, tmp_path, monkeypatch)[2:]
    first = holder(tmp_path / "cut" / run_folder.LOCK)  # as if the run were still going
    for tried in (argv, argv[:-1] + ["--force"]):  # --resume, or --force, while it runs
        message = refused(rl.main, tried)
        assert f"pid {first.pid}" in message and "being written by another process" in message
    assert [r["episode"] for r in rows(tmp_path / "cut" / "metrics.jsonl")] == [0, 4]  # untouched
    first.kill()  # killed: its lock file stays, but the lock went with the process
    first.wait()
    rl.main(argv)
    assert [r["episode"] for r in rows(tmp_path / "cut" / "metrics.jsonl")] == [0, 4, 8]
    assert not (tmp_path / "cut" / run_folder.LOCK).exists()  # a run that ends removes its lock file


def test_a_second_writer_of_a_checkpoint_or_a_table_is_refused(tmp_path, holder):
    out = tmp_path / "add1.pt"
    first = holder(f"{out}.lock")
    message = refused(pretrain.main, ["--digits", "1", "--steps", "2", "--out", str(out), "--threads", "1"])
    assert f"pid {first.pid}" in message and not out.exists()
    first = holder(tmp_path / ".curves.lock")
    assert f"pid {first.pid}" in refused(analyze.main, ["curves", str(tmp_path), "--out", str(tmp_path)])


# -----------------------------------------------------------------------------
# resume that follows its own advice

def test_the_printed_command_resumes_a_run_with_a_default_name(tiny_checkpoint, tmp_path, monkeypatch):
    save = stop_after_saving(monkeypatch, 4)
    with pytest.raises(SystemExit) as e:  # no --name: the run's name carries the time it started
        rl.main(["--ckpt", tiny_checkpoint, *TINY, "--out", str(tmp_path)])
    monkeypatch.setattr(run_folder, "atomic_save", save)
    advice = shlex.split(e.value.code.split("to go on: ")[1])
    (name,) = os.listdir(tmp_path)
    assert advice[advice.index("--name") + 1] == name and advice[-1] == "--resume"
    time.sleep(1.1)  # a new default name would differ now
    rl.main(advice[2:])
    assert [r["episode"] for r in rows(tmp_path / name / "metrics.jsonl")] == [0, 4, 8]


def test_a_run_stopped_during_its_first_evaluation_reruns_or_resumes(tiny_checkpoint, tmp_path, monkeypatch):
    argv = ["--ckpt", tiny_checkpoint, *TINY, "--out", str(tmp_path), "--name", "early"]

    def stop(*_):
        raise KeyboardInterrupt
    with monkeypatch.context() as patch:
        patch.setattr(rl.metrics, "evaluate_and_save", stop)
        with pytest.raises(SystemExit):
            rl.main(argv)
    assert (tmp_path / "early" / "config.json").exists() and not (tmp_path / "early" / "state.pt").exists()
    rl.main([*argv, "--resume"])  # nothing was saved: it starts from the beginning
    assert [r["episode"] for r in rows(tmp_path / "early" / "metrics.jsonl")] == [0, 4, 8]
    with monkeypatch.context() as patch:
        patch.setattr(rl.metrics, "evaluate_and_save", stop)
        with pytest.raises(SystemExit):
            rl.main([*argv, "--force"])
    rl.main(argv)  # and a plain rerun is accepted too
    assert [r["episode"] for r in rows(tmp_path / "early" / "metrics.jsonl")] == [0, 4, 8]


def test_a_moved_run_resumes_where_it_is_and_checkpoint_paths_compare_as_files(tiny_checkpoint, tmp_path,
                                                                              monkeypatch):
    rl.main(["--ckpt", tiny_checkpoint, *TINY, "--out", str(tmp_path), "--name", "whole"])
    argv = interrupted(tiny_checkpoint, tmp_path, monkeypatch)[2:]
    os.rename(tmp_path / "cut", tmp_path / "moved")
    monkeypatch.chdir(os.path.dirname(tiny_checkpoint))
    argv[argv.index("--name") + 1] = "moved"
    argv[argv.index("--ckpt") + 1] = "./" + os.path.basename(tiny_checkpoint)  # the same file, other words
    rl.main(argv)
    strip = lambda name: [{k: v for k, v in r.items() if k != "minutes"} for r in rows(tmp_path / name /
                                                                                      "metrics.jsonl")]
    assert strip("moved") == strip("whole")


def test_resume_checks_the_reference_and_the_logs_it_depends_on(tiny_checkpoint, tmp_path, monkeypatch):
    argv = interrupted(tiny_checkpoint, tmp_path, monkeypatch)[2:]
    other = tmp_path / "other.pt"
    torch.manual_seed(1)
    save_checkpoint(str(other), GPT(GPTConfig(block_size=256, n_layer=1, n_head=2, n_embd=16)),
                    args={"digits": 2})
    replaced = list(argv)
    replaced[replaced.index("--ckpt") + 1] = str(other)
    assert "SHA-256" in refused(rl.main, replaced)
    folder = tmp_path / "cut"
    kept = {f: (folder / f).read_text() for f in ("metrics.jsonl", "train.jsonl")}
    (folder / "metrics.jsonl").write_text("")
    assert "lacks the evaluation at episode 4" in refused(rl.main, argv)
    (folder / "metrics.jsonl").write_text(kept["metrics.jsonl"])
    os.remove(folder / "train.jsonl")
    assert "train.jsonl is missing" in refused(rl.main, argv)
    (folder / "train.jsonl").write_text(kept["train.jsonl"] + '{"iteration": 3, "epi')  # cut mid-line
    rl.main(argv)
    assert [r["iteration"] for r in rows(folder / "train.jsonl")] == [1, 2]


@pytest.mark.parametrize("damage", ["truncated", "empty", "pretrain state", "config not JSON",
                                    "log line broken"])
def test_damaged_run_files_are_named_in_one_line(damage, tiny_checkpoint, tmp_path, monkeypatch):
    argv = interrupted(tiny_checkpoint, tmp_path, monkeypatch)[2:]
    folder = tmp_path / "cut"
    state = folder / "state.pt"
    if damage == "truncated":
        state.write_bytes(state.read_bytes()[:1000])
    elif damage == "empty":
        state.write_bytes(b"")
    elif damage == "pretrain state":
        torch.save({"model": {}, "step": 3}, state)
    elif damage == "config not JSON":
        (folder / "config.json").write_text("{not json")
    else:
        text = (folder / "metrics.jsonl").read_text()
        (folder / "metrics.jsonl").write_text("{oops\n" + text)
    message = refused(rl.main, argv)
    assert any(word in message for word in ("state.pt", "config.json", "metrics.jsonl line 1"))


def test_pretrain_refuses_to_resume_past_its_steps_and_a_damaged_state(tmp_path):
    out = str(tmp_path / "add1.pt")
    small = ["--digits", "1", "--n-layer", "1", "--n-embd", "16", "--n-head", "2", "--block-size", "128",
             "--eval-size", "2", "--threads", "1", "--out", out]
    pretrain.main([*small, "--steps", "6"])
    assert "already trained 6 steps" in refused(pretrain.main, [*small, "--steps", "4", "--resume"])
    torch.save({"step": 6}, out + ".state")
    assert "not a pretrain.py state" in refused(pretrain.main, [*small, "--steps", "8", "--resume"])


# -----------------------------------------------------------------------------
# what the inputs cannot give, refused up front; numbers that are not finite named as such

def test_sizes_that_cannot_be_met_are_refused_before_any_work(tmp_path, capsys):
    one_digit = tmp_path / "add1.pt"
    save_checkpoint(str(one_digit), GPT(GPTConfig(block_size=256, n_layer=1, n_head=2, n_embd=16)),
                    args={"digits": 1})
    message = refused(rl.main, ["--ckpt", str(one_digit), *TINY, "--eval-size", "5000", "--out",
                                str(tmp_path), "--name", "big"])
    assert "held-out problems" in message and "--eval-size" in message and not (tmp_path / "big").exists()
    for flag, value, words in (("--n", "10000000", "at most 10000"), ("--extra", "100000", "at most 20")):
        with pytest.raises(SystemExit):  # argparse's refusal
            analyze.main(["accuracy", flag, value])
        assert words in capsys.readouterr().err


def test_nan_weights_and_absurd_penalties_get_the_right_advice(tmp_path):
    model = GPT(GPTConfig(block_size=256, n_layer=1, n_head=2, n_embd=16))
    with torch.no_grad():
        model.wte.weight[0, 0] = float("nan")
    save_checkpoint(str(tmp_path / "nan.pt"), model, args={"digits": 2})
    message = refused(rl.main, ["--ckpt", str(tmp_path / "nan.pt"), *TINY, "--out", str(tmp_path)])
    assert "not finite" in message and "--lr" not in message
    with pytest.raises(SystemExit):
        rl.get_args(["--kl-coef", "1e308"])  # argparse's refusal: at most 1e6


def test_a_seed_run_twice_is_counted_once_and_said(tiny_checkpoint, tmp_path, capsys):
    for name in ("a", "b"):
        rl.main(["--ckpt", tiny_checkpoint, *TINY, "--out", str(tmp_path / "runs"), "--name", name])
    capsys.readouterr()
    analyze.main(["curves", str(tmp_path / "runs"), "--out", str(tmp_path)])
    assert "seed 0 again" in capsys.readouterr().err
    table = (tmp_path / "curves.md").read_text()
    assert "| all runs | 1 |" in table and "seed 0 again" in table


# -----------------------------------------------------------------------------
# the environment: a full disk, a closed pipe, an output that is a file, too many threads

def test_a_full_disk_leaves_the_old_file_and_no_temporary_one(tmp_path, monkeypatch):
    path = tmp_path / "state.pt"
    files.atomic_save({"old": 1}, str(path))

    def disk_full(obj, f):
        open(f, "wb").write(b"half")
        raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")
    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(SystemExit) as e:
        files.atomic_save({"new": 2}, str(path))
    assert "cannot write" in one_line(e.value.code) and os.listdir(tmp_path) == ["state.pt"]
    monkeypatch.undo()
    assert torch.load(path) == {"old": 1}


def test_a_closed_pipe_ends_the_printing_not_the_run(tiny_checkpoint, tmp_path):
    command = [sys.executable, "rl.py", "--ckpt", tiny_checkpoint, *TINY, "--out", str(tmp_path), "--name",
               "p"]
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.readline()
    proc.stdout.close()  # as `| head -1` does
    err = proc.stderr.read().decode()
    assert proc.wait() == 0 and "Traceback" not in err
    assert [r["episode"] for r in rows(tmp_path / "p" / "metrics.jsonl")] == [0, 4, 8]


def test_outputs_that_are_files_and_too_many_threads(tiny_checkpoint, tmp_path, capsys):
    (tmp_path / "taken").write_text("a file")
    assert "is a file" in refused(rl.main, ["--ckpt", tiny_checkpoint, *TINY, "--out", str(tmp_path),
                                            "--name", "taken"])
    taken = str(tmp_path / "taken")
    assert "cannot write" in refused(analyze.main, ["curves", str(tmp_path), "--out", taken])
    assert "is a folder" in refused(analyze.main, ["accuracy", "--cache", str(tmp_path), "--out",
                                                   str(tmp_path / "tables")])
    threads = torch.get_num_threads()
    runtime.set_threads(10_000)
    assert torch.get_num_threads() == os.cpu_count() and "more than" in capsys.readouterr().err
    torch.set_num_threads(threads)


# -----------------------------------------------------------------------------
# the recount: whose state a resume continues, closed streams, files that are not files, names a shell carries

def test_a_state_from_another_run_is_refused_and_other_threads_are_said_and_recorded(
        tiny_checkpoint, tmp_path, monkeypatch, capsys):
    mine = interrupted(tiny_checkpoint, tmp_path, monkeypatch, "mine")
    theirs = interrupted(tiny_checkpoint, tmp_path, monkeypatch, "theirs")
    assert theirs[theirs.index("--name") + 1] == "theirs"
    state = torch.load(tmp_path / "theirs" / "state.pt", weights_only=True)
    state["identity"]["seed"] = 5  # as if "theirs" had been a run of seed 5
    torch.save(state, tmp_path / "mine" / "state.pt")
    message = refused(rl.main, mine[2:])
    assert "saved by another run" in message and "its seed is 5, this run's is 0" in message
    other, threads = theirs[2:], torch.get_num_threads()
    other[other.index("--threads") + 1] = "2"
    rl.main(other)
    torch.set_num_threads(threads)  # as the other tests of this process expect
    assert "numbers will differ" in capsys.readouterr().err
    config = json.load(open(tmp_path / "theirs" / "config.json"))
    assert config["resumed_with_threads"] == [{"episode": 4, "threads": 2}]


def test_a_script_started_with_its_output_streams_closed_does_its_work(tiny_checkpoint, tmp_path):
    """`>&- 2>&-` (a detached job): no traceback from the progress bar, the run's files written whole."""
    argv = " ".join(shlex.quote(a) for a in [sys.executable, "rl.py", "--ckpt", tiny_checkpoint, *TINY,
                                               "--out", str(tmp_path), "--name", "closed"])
    done = subprocess.run(["bash", "-c", f"{argv} >&- 2>&-"], cwd=ROOT, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0
    assert [row["episode"] for row in rows(tmp_path / "closed" / "metrics.jsonl")] == [0, 4, 8]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="/dev/full (an always full disk) is Linux's")
def test_a_full_standard_output_or_error_never_costs_the_run(tiny_checkpoint, tmp_path):
    """`> log` on a full disk: every write to the stream fails (ENOSPC); the run goes on and ends whole."""
    env, quiet = {**os.environ, "OMP_NUM_THREADS": "1"}, subprocess.DEVNULL
    rl = [sys.executable, "rl.py", "--ckpt", tiny_checkpoint, *TINY, "--out", str(tmp_path)]
    pretrain = [sys.executable, "pretrain.py", "--digits", "1", "--steps", "4", "--n-layer", "1", "--n-head",
                "2", "--n-embd", "16", "--block-size", "128", "--eval-size", "2", "--threads", "1"]
    with open("/dev/full", "w") as full:
        for name, out, err in (("out", full, quiet), ("both", full, full)):  # stderr alone: the same wrapper
            done = subprocess.run([*rl, "--name", name], cwd=ROOT, stdout=out, stderr=err, timeout=300,
                                  env=env)
            assert done.returncode == 0, name
            assert [row["episode"] for row in rows(tmp_path / name / "metrics.jsonl")] == [0, 4, 8]
        done = subprocess.run([*pretrain, "--out", str(tmp_path / "p.pt")], cwd=ROOT, stdout=full,
                              stderr=full, timeout=300, env=env)
    assert done.returncode == 0 and (tmp_path / "p.pt").exists()


def test_a_fifo_or_a_device_where_a_file_belongs_is_refused_not_waited_on(tiny_checkpoint, tmp_path):
    os.mkfifo(tmp_path / "fifo.pt")
    for path in (str(tmp_path / "fifo.pt"), "/dev/zero"):
        assert "not a regular file" in refused(rl.main, ["--ckpt", path, *TINY, "--out", str(tmp_path)])
    message = refused(analyze.main, ["accuracy", "--ckpt", tiny_checkpoint, "--cache",
                                     str(tmp_path / "fifo.pt"), "--out", str(tmp_path)])
    assert "not a regular file" in message


def test_a_full_disk_while_logging_ends_in_one_line(tmp_path, monkeypatch):
    import builtins
    import errno
    real = builtins.open

    def full(path, mode="r", *args, **kwargs):
        if str(path).endswith("train.jsonl") and "a" in mode:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, mode, *args, **kwargs)
    monkeypatch.setattr(builtins, "open", full)
    with pytest.raises(SystemExit) as e:
        run_folder.append_row(str(tmp_path), {"iteration": 1, "episode": 4}, run_folder.TRAIN_LOG)
    assert "No space left on device" in one_line(e.value.code) and "--resume" in e.value.code


@pytest.mark.parametrize("name", ["-dashrun", "my 'best' run", "a$HOME;b"])
def test_the_printed_resume_command_parses_back_to_the_run_whatever_its_name(name):
    command = console.resume_command("rl.py", ["--seed", "1", f"--name={name}"], name)
    argv = shlex.split(command)[2:]
    assert rl.get_args(argv).name == name and "--resume" in argv


# -----------------------------------------------------------------------------
# the third recount (issue 70): kills and Ctrl-C everywhere, advice that works as printed

def test_sigterm_and_sighup_stop_rl_as_ctrl_c_does(tiny_checkpoint, tmp_path, monkeypatch):
    """A kill (SIGTERM) or a closed terminal (SIGHUP) right after the evaluation at episode 4 was saved: the
    run stops with where it stands and the command that goes on, and that command finishes it."""
    import signal
    save = run_folder.atomic_save
    for kind in ("SIGTERM", "SIGHUP"):
        flags = ["--ckpt", tiny_checkpoint, "--episodes", "8", "--batch-size", "2", "--group-size", "2",
                 "--eval-every", "4", "--eval-size", "2", "--out", str(tmp_path), "--threads", "1",
                 "--no-save", "--device", "cpu", "--name", kind]

        def save_then_kill(obj, path, kind=kind):
            save(obj, path)
            if obj["episode"] == 4:
                os.kill(os.getpid(), getattr(signal, kind))
        monkeypatch.setattr(run_folder, "atomic_save", save_then_kill)
        with pytest.raises(SystemExit) as e:
            rl.main(flags)
        message = e.value.code.strip()
        assert message.startswith("interrupted:") and message.endswith("--resume") and "\n" not in message
        monkeypatch.setattr(run_folder, "atomic_save", save)
        rl.main(shlex.split(message.split("to go on: ")[1])[2:])
        assert [r["episode"] for r in rows(tmp_path / kind / "metrics.jsonl")] == [0, 4, 8]
        assert signal.getsignal(getattr(signal, kind)) is not None  # the handler was put back


def test_a_ctrl_c_in_any_other_command_is_one_line():
    def main():
        raise KeyboardInterrupt
    with pytest.raises(SystemExit) as e:
        console.run_script(main)
    assert e.value.code.strip().startswith("interrupted (Ctrl-C)") and "\n" not in e.value.code.strip()


def test_the_resume_advice_names_the_script_as_it_was_started(monkeypatch):
    """Run from another folder, the advice names the script's own path; under torchrun, torchrun with the
    same process count; called from Python, the script's name."""
    monkeypatch.setattr(sys, "argv", ["../code/rl.py", "--alpha", "3"])
    assert console.resume_command("rl.py", ["--alpha", "3"]) == "python ../code/rl.py --alpha 3 --resume"
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert console.resume_command("rl.py", ["--alpha", "3"]).startswith(
        "torchrun --standalone --nproc_per_node 2 ../code/rl.py --alpha 3")
    monkeypatch.delenv("WORLD_SIZE")
    assert console.resume_command("rl.py", ["--kl-coef", "0"]) == "python rl.py --kl-coef 0 --resume"


def test_a_resume_refuses_a_log_whose_rows_are_out_of_order(tiny_checkpoint, tmp_path):
    """A metrics.jsonl with an evaluation written twice (a copy-paste, two writers long ago): --resume would
    append after it and log episodes 8, 0, 16, ...; it is refused, naming the file and line."""
    flags = ["--ckpt", tiny_checkpoint, "--episodes", "8", "--batch-size", "2", "--group-size", "2",
             "--eval-every", "4", "--eval-size", "2", "--out", str(tmp_path), "--threads", "1", "--no-save",
             "--device", "cpu", "--name", "cut"]
    from test_rl import interrupt_after_saving
    interrupt_after_saving(flags, 4)
    path = tmp_path / "cut" / "metrics.jsonl"
    first, second = path.read_text().splitlines()
    path.write_text("\n".join([first, second, first]) + "\n")
    message = refused(rl.main, [*flags, "--resume"])
    assert "metrics.jsonl line 3: episode 0 after 4 (rows duplicated or out of order)" in message
