import math
import os
import signal
import subprocess
import sys

import pytest
import torch

import data
from lab import generation
from conftest import task_problems
import pretrain
from model import load_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "256", "--batch-size", "8",
        "--eval-size", "4", "--seed", "0", "--device", "cpu"]  # CPU facts: bit-identical resume, float32


def run(*args):
    return subprocess.run([sys.executable, "pretrain.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def test_smoke_run_writes_a_loadable_checkpoint_and_resumes(tmp_path):
    out = str(tmp_path / "add2.pt")
    r = run("--digits", "2", "--steps", "6", "--eval-every", "3", "--out", out, *TINY)
    assert r.returncode == 0, r.stderr
    assert "done: 6 steps" in r.stdout and "2-digit operands greedy" in r.stdout
    model, meta = load_checkpoint(out, with_meta=True)
    assert meta["step"] == 6 and meta["args"]["digits"] == 2 and sorted(meta["evals"]) == [3, 6]
    assert set(meta["provenance"]) == {"commit", "threads", "machine", "torch"}  # what it was trained on
    assert model.config.n_embd == 16 and not model.training
    # the reloaded model generates text that the task code can read
    completions = generation.complete(model, task_problems(1, 2))
    assert isinstance(completions[0], str)
    # a resume keeps the run's own --steps: the cosine schedule decays over them
    r = run("--digits", "2", "--steps", "9", "--eval-every", "3", "--out", out, "--resume", *TINY)
    assert r.returncode == 1 and "--steps 9 (the run has 6)" in r.stderr and "cosine" in r.stderr
    r = run("--digits", "2", "--steps", "6", "--eval-every", "3", "--out", out, "--resume", *TINY)
    assert r.returncode == 0 and load_checkpoint(out, with_meta=True)[1]["step"] == 6, r.stderr


def test_learning_rate_schedule():
    args = pretrain.get_args(["--steps", "1000", "--warmup", "100", "--lr", "1e-3", "--min-lr", "1e-5"])
    assert math.isclose(pretrain.learning_rate(0, args), 1e-5)
    assert math.isclose(pretrain.learning_rate(99, args), 1e-3)
    assert math.isclose(pretrain.learning_rate(1000, args), 1e-5)
    lrs = [pretrain.learning_rate(s, args) for s in range(100, 1001)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_batches_have_nearly_equal_lengths():
    """Drawing 16 batches at once and sorting them by length leaves a small share of each batch to padding:
    under 5% for addition, and for any task under a quarter of what unsorted batches (a pool of 1) waste."""
    import random

    def waste(pool):
        stream, shares = pretrain.batches(7, 32, pool, random.Random(0)), []
        for _ in range(32):
            lengths = [data.sequence_length(problem) for problem in next(stream)]
            shares.append(1 - sum(lengths) / (len(lengths) * max(lengths)))
        return sum(shares) / len(shares)
    assert waste(16) < waste(1) / 4
    if data.NAME == "addition":
        assert waste(16) < 0.05


def test_random_offset_keeps_loss_finite_and_positions_in_range():
    args = pretrain.get_args(["--digits", "2", *TINY])
    model = pretrain.GPT(pretrain.GPTConfig(block_size=256, n_layer=1, n_head=2, n_embd=16))
    x, y = data.make_batch(task_problems(2, 2))
    offset = torch.tensor([0, 256 - x.size(1)])
    _, loss = model(x, y, offset)
    assert torch.isfinite(loss)
    with pytest.raises(ValueError, match="block_size"):
        model(x, y, offset + 1)
    assert args.out == f"runs/{data.NAME[:3]}2.pt"  # never a shipped checkpoint by default


def test_an_interrupted_run_resumes_bit_identical(tmp_path, monkeypatch):
    # --eval-every 5 is not a multiple of --pool 4: the replayed data stream must still line up
    flags = ["--digits", "2", "--steps", "12", "--eval-every", "5", "--pool", "4", "--threads", "1", *TINY]
    pretrain.main([*flags, "--out", str(tmp_path / "whole.pt")])
    evaluate, calls = pretrain.evaluate, []

    def evaluate_then_ctrl_c(*args):  # Ctrl-C arrives during the first evaluation
        calls.append(1)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGINT)
        return evaluate(*args)
    monkeypatch.setattr(pretrain, "evaluate", evaluate_then_ctrl_c)
    with pytest.raises(SystemExit, match="interrupted after step 5"):
        pretrain.main([*flags, "--out", str(tmp_path / "cut.pt")])
    assert load_checkpoint(str(tmp_path / "cut.pt"), with_meta=True)[1]["step"] == 5
    with pytest.raises(SystemExit, match="other flags"):
        pretrain.main([*flags[:-2], "--seed", "1", "--out", str(tmp_path / "cut.pt"), "--resume"])
    pretrain.main([*flags, "--out", str(tmp_path / "cut.pt"), "--resume"])
    whole, cut = (load_checkpoint(str(tmp_path / f"{name}.pt"), with_meta=True) for name in ("whole", "cut"))
    assert all(torch.equal(a, b) for a, b in zip(whole[0].state_dict().values(),
                                                 cut[0].state_dict().values()))
    assert whole[1]["evals"] == cut[1]["evals"] and cut[1]["step"] == 12


def test_existing_output_is_never_replaced_without_force(tmp_path):
    out = tmp_path / "mine.pt"
    out.write_bytes(b"precious")
    r = run("--digits", "2", "--steps", "2", "--out", str(out), *TINY)
    assert r.returncode == 1 and "exists" in r.stderr and "--force" in r.stderr
    assert out.read_bytes() == b"precious"


def test_a_diverging_run_stops_and_saves_nothing(tmp_path):
    r = run("--digits", "2", "--steps", "30", "--eval-every", "30", "--lr", "1e6", "--warmup", "0", "--out",
            str(tmp_path / "nan.pt"), *TINY)
    assert r.returncode == 1 and "not finite" in r.stderr and "Traceback" not in r.stderr, r.stderr[-300:]
    assert not (tmp_path / "nan.pt").exists()
