"""Smoke tests on a GPU (CUDA or Apple MPS): each script a few steps there. Skipped, and said so, on a
machine without one (CI has none)."""
import json
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AVAILABLE = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
GPUS = [device for device, there in AVAILABLE.items() if there]
pytestmark = pytest.mark.skipif(not GPUS, reason="no CUDA or MPS device here: the GPU smoke tests need one")
DEVICE = GPUS[0] if GPUS else "cpu"


def run(script, *flags):
    r = subprocess.run([sys.executable, script, *flags, "--device", DEVICE], cwd=ROOT, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    return r


def test_pretraining_runs_and_resumes_bit_identical_on_the_gpu(tmp_path):
    tiny = ["--digits", "2", "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "256",
            "--batch-size", "8", "--eval-size", "4", "--eval-every", "3"]
    run("pretrain.py", *tiny, "--steps", "6", "--out", str(tmp_path / "whole.pt"))
    run("pretrain.py", *tiny, "--steps", "3", "--out", str(tmp_path / "cut.pt"))
    run("pretrain.py", *tiny, "--steps", "6", "--out", str(tmp_path / "cut.pt"), "--resume")
    whole, cut = (torch.load(tmp_path / f"{n}.pt", weights_only=True)["model"] for n in ("whole", "cut"))
    assert all(torch.equal(whole[k], cut[k]) for k in whole)


def test_rl_runs_on_the_gpu(tiny_checkpoint, tmp_path):
    r = run("rl.py", "--ckpt", tiny_checkpoint, "--episodes", "8", "--batch-size", "2", "--group-size", "2",
            "--eval-every", "4", "--eval-size", "4", "--out", str(tmp_path), "--name", "gpu")
    assert "done:" in r.stdout
    config = json.loads((tmp_path / "gpu" / "config.json").read_text())
    assert config["device"] == DEVICE and config["generation_dtype"] == "float32"


def test_generation_on_the_gpu_matches_the_cpu(tiny_checkpoint):
    import data
    from model import load_checkpoint
    problems = data.eval_set("identical", 2, 16)
    on_cpu = data.complete(load_checkpoint(tiny_checkpoint, "cpu"), problems, device="cpu")
    on_gpu = data.complete(load_checkpoint(tiny_checkpoint, DEVICE), problems, device=DEVICE)
    assert sum(a == b for a, b in zip(on_cpu, on_gpu)) >= 14  # float32 both; a near-tie may round apart


def test_bench_runs_on_the_gpu(tiny_checkpoint):
    r = run("bench.py", "--ckpt", tiny_checkpoint, "--batch-size", "4")
    assert "kv-cache speedup" in r.stdout
