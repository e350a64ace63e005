import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bench_runs_and_reports_the_speedup(tiny_checkpoint):
    r = subprocess.run([sys.executable, "-m", "lab.bench", "--ckpt", tiny_checkpoint, "--batch-size", "2",
                        "--eval-size", "3", "--device", "cpu"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert "rows decoded identically by both: 2 of 2" in r.stdout
    assert "fast and plain loops: 2 of 2" in r.stdout  # float32 on this tiny model: the same tokens
    for prefix in ("generation, KV cache:", "generation, KV cache, plain:", "generation, full recompute:",
                   "training, forward + backward:"):
        line = next(line for line in lines if line.startswith(prefix))
        assert float(line[len(prefix):].split()[0]) > 0 and "tokens/s" in line
    assert next(line for line in lines if line.startswith("arithmetic: generation ")).count("GFLOP/s") == 3
    speedup = next(line for line in lines if line.startswith("kv-cache speedup: "))
    assert speedup.endswith("x") and float(speedup.split()[-1][:-1]) > 0
    assert [line.split(" (")[0] for line in lines[-2:]] == ["draft, rollout", "draft, evaluation"]
    assert all(float(line.split()[-1][:-1]) > 0 for line in lines[-2:])
