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


def interrupted(script, flags, until):
    """Run script with flags on the GPU, Ctrl-C it once the file `until` exists, and wait for it to end."""
    import signal
    import time
    process = subprocess.Popen([sys.executable, script, *flags, "--device", DEVICE], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while process.poll() is None and not os.path.exists(until):
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    process.wait()


def test_pretraining_runs_and_resumes_bit_identical_on_the_gpu(tmp_path):
    tiny = ["--digits", "2", "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "256",
            "--batch-size", "8", "--eval-size", "4", "--eval-every", "3", "--steps", "40"]  # cut after step 3
    run("pretrain.py", *tiny, "--out", str(tmp_path / "whole.pt"))
    interrupted("pretrain.py", [*tiny, "--out", str(tmp_path / "cut.pt")], str(tmp_path / "cut.pt"))
    run("pretrain.py", *tiny, "--out", str(tmp_path / "cut.pt"), "--resume")
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
    from lab import generation
    from model import load_checkpoint
    problems = data.eval_set("identical", 2, 16)
    on_cpu = generation.complete(load_checkpoint(tiny_checkpoint, "cpu"), problems, device="cpu")
    on_gpu = generation.complete(load_checkpoint(tiny_checkpoint, DEVICE), problems, device=DEVICE)
    assert sum(a == b for a, b in zip(on_cpu, on_gpu)) >= 14  # float32 both; a near-tie may round apart


def test_bench_runs_on_the_gpu(tiny_checkpoint):
    r = run("-m", "lab.bench", "--ckpt", tiny_checkpoint, "--batch-size", "4")
    assert "kv-cache speedup" in r.stdout


ADD7 = os.path.join(ROOT, "checkpoints", "add7.pt")
ADD7_FLAGS = ["--ckpt", ADD7, "--episodes", "128", "--eval-every", "64", "--eval-size", "50", "--no-save"]


@pytest.mark.skipif(DEVICE != "cuda", reason="the main command's checks are for CUDA")
def test_the_main_command_on_the_gpu_starts_where_the_cpu_does(tmp_path):
    """rl.py on add7.pt: episode 0 is the reference's greedy accuracy, float32 on both devices, so the GPU's
    equals the CPU's on the same 50 problems (their finished rows leave the batch, the stop rule runs)."""
    import data
    from lab import generation
    from model import load_checkpoint
    run("rl.py", *ADD7_FLAGS, "--out", str(tmp_path), "--name", "gpu")
    first = json.loads((tmp_path / "gpu" / "metrics.jsonl").read_text().splitlines()[0])
    problems = data.rl_eval_sets(7, 1, 50)["plus"]
    texts = generation.complete(load_checkpoint(ADD7, "cpu"), problems, device="cpu")
    assert first["acc_plus"] == generation.percent_correct(texts, problems)


@pytest.mark.skipif(DEVICE != "cuda", reason="the main command's checks are for CUDA")
def test_an_rl_run_killed_on_the_gpu_resumes_to_the_same_metrics(tmp_path):
    import signal
    import time
    run("rl.py", *ADD7_FLAGS, "--out", str(tmp_path), "--name", "whole")
    command = [sys.executable, "rl.py", *ADD7_FLAGS, "--out", str(tmp_path), "--name", "cut", "--device",
               DEVICE]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = tmp_path / "cut" / "metrics.jsonl"
    while process.poll() is None and not (metrics.exists() and metrics.read_text().count("\n") >= 2):
        time.sleep(0.2)  # kill it after the evaluation at episode 64
    process.send_signal(signal.SIGKILL)
    process.wait()
    run("rl.py", *ADD7_FLAGS, "--out", str(tmp_path), "--name", "cut", "--resume")
    rows = lambda name: [{k: v for k, v in json.loads(line).items() if k != "minutes"}
                         for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    assert rows("cut") == rows("whole")


@pytest.mark.skipif(DEVICE != "cuda", reason="the main command's checks are for CUDA")
def test_pretraining_on_long_rows_resumes_bit_identical_on_the_gpu(tmp_path):
    """Rows of 400+ tokens (9-digit problems): long enough for attention's backward to split its work, which
    only the deterministic kernels keep in the same order."""
    flags = ["--digits", "9", "--n-layer", "2", "--n-head", "2", "--n-embd", "32", "--block-size", "1024",
             "--batch-size", "8", "--eval-size", "2", "--eval-every", "4", "--steps", "16"]
    run("pretrain.py", *flags, "--out", str(tmp_path / "whole.pt"))
    interrupted("pretrain.py", [*flags, "--out", str(tmp_path / "cut.pt")], str(tmp_path / "cut.pt"))
    run("pretrain.py", *flags, "--out", str(tmp_path / "cut.pt"), "--resume")
    whole, cut = (torch.load(tmp_path / f"{n}.pt", weights_only=True)["model"] for n in ("whole", "cut"))
    assert all(torch.equal(whole[k], cut[k]) for k in whole)
