#!/usr/bin/env bash
# The GPU check: everything a session with a lent CUDA GPU runs, in one go (about 8 minutes), with its
# report in results/gpu/ (or $OUT). On the GPU machine: `bash tests/gpu_check.sh`; then commit results/gpu/.
#   1. tests/test_gpu.py: the scripts on the GPU, the main command's episode 0 against the CPU's, an RL run
#      killed and resumed, pre-training on 400+-token rows resumed bit-identically
#   2. python rl.py --alpha 3 (every default): wall time, start and end accuracy, peak GPU memory
#   3. python -m lab.bench: tokens/s of decoding and training, the draft against token-by-token decoding
#   4. with 2+ GPUs: the default run under torchrun on 2 of them
set -uo pipefail
cd "$(dirname "$0")/.."
report=${OUT:-results/gpu}
py=${PYTHON:-python3}
mkdir -p "$report"
export PYTHONUNBUFFERED=1
{
  echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown), $(date -u '+%Y-%m-%d %H:%M UTC')"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  $py -c "import torch; print('torch', torch.__version__, '| CPU cores', __import__('os').cpu_count())"
} > "$report/machine.txt" 2>&1
cat "$report/machine.txt"

echo "1. tests/test_gpu.py"
timeout 240 $py -m pytest -q -p no:cacheprovider tests/test_gpu.py > "$report/tests.txt" 2>&1
tail -n 3 "$report/tests.txt"

echo "2. python rl.py --alpha 3"
timeout 180 $py - > "$report/rl_default.txt" 2>&1 <<'PY'
import sys, time
import torch
import rl
start = time.time()
rl.main(["--alpha", "3", "--out", "/tmp/gpu_check_runs", "--name", "default", "--force", "--no-save"])
print(f"wall {time.time() - start:.1f} s | peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
PY
grep -E "^done:|^wall" "$report/rl_default.txt"

echo "3. python -m lab.bench"
timeout 150 $py -m lab.bench --recompute-every 64 > "$report/bench.txt" 2>&1
grep -E "tokens/s|draft" "$report/bench.txt"

if [ "$(nvidia-smi -L | wc -l)" -ge 2 ]; then
  echo "4. torchrun, 2 GPUs"
  timeout 180 $py -m torch.distributed.run --standalone --nproc_per_node 2 rl.py --alpha 3 \
    --out /tmp/gpu_check_runs --name torchrun --force --no-save > "$report/torchrun.txt" 2>&1
  grep -E "^done:" "$report/torchrun.txt"
fi
echo "report: $report"
