#!/usr/bin/env bash
# On a GPU host (a python with torch, transformers, peft and safetensors; no venv, no network):
# the engine's GPU tests, then the benchmark. Results (logs, RESULT json) go to $OUT.
#
#   OUT=/tmp/out bash engine/scripts/gpu-bench.sh single   # GPU tests + Qwen3-1.7B-shape bench (one GPU)
#   OUT=/tmp/out bash engine/scripts/gpu-bench.sh again    # GPU tests, 1.7B engine variants again, 8B on one GPU
#   OUT=/tmp/out bash engine/scripts/gpu-bench.sh fsdp     # GPU tests + Qwen3-8B-shape: 1 GPU, then FSDP on 2
#   OUT=/tmp/out bash engine/scripts/gpu-bench.sh vl8      # GPU tests + Qwen3-VL-8B shape, 8 episodes of 5 screenshots
#   OUT=/tmp/out bash engine/scripts/gpu-bench.sh vl32     # Qwen3-VL-32B shape, one 16k-token episode (no tests)
#   OUT=/tmp/out bash engine/scripts/gpu-bench.sh vl       # both VL shapes, no tests
#
# Each part has its own time limit, so one that hangs still leaves the others' results.
set -uo pipefail
cd "$(dirname "$0")/../.."
export PYTHONPATH="$PWD/engine${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
# NVLink multicast stays off (a program using it can take a shared host's GPUs out of service).
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
OUT="${OUT:-/tmp/trajstore-gpu}"
mkdir -p "$OUT"
py="${PYTHON:-python3}"

{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  "$py" -c 'import torch, transformers, peft, safetensors, sys; print("python", sys.version.split()[0], "torch", torch.__version__, "transformers", transformers.__version__, "peft", peft.__version__, "safetensors", safetensors.__version__, "gpus", torch.cuda.device_count())'
} 2>&1 | tee "$OUT/env.txt"

# The GPU tests (test_gpu.py alone: the policy server's tests need fastapi, which GPU hosts lack).
[[ "${1:-single}" == vl32 || "${1:-single}" == vl ]] || (cd engine && timeout 200 "$py" -m pytest tests/test_gpu.py -q -p no:cacheprovider -rA) 2>&1 | tee "$OUT/gpu_tests.log" | tail -12

case "${1:-single}" in
  single)
    timeout 420 "$py" -m trajstore_engine bench --profile --out "$OUT/bench.json" 2>&1 | tee "$OUT/bench.log" | tail -40
    ;;
  again)
    # A second sample of the 1.7B figures (the spread between runs), and the 8B one-GPU baseline.
    timeout 250 "$py" -m trajstore_engine bench --variants varlen_kernels,varlen_layers --reps 5 --skip-long \
      --out "$OUT/bench.json" 2>&1 | tee "$OUT/bench.log" | tail -6
    timeout 170 "$py" -m trajstore_engine bench --model 8b --variants varlen_layers --skip-naive --skip-long \
      --out "$OUT/bench_8b_1gpu.json" 2>&1 | tee "$OUT/bench_8b_1gpu.log" | tail -6
    ;;
  fsdp)
    timeout 170 "$py" -m trajstore_engine bench --model 8b --variants varlen_layers --skip-naive --skip-long \
      --out "$OUT/bench_8b_1gpu.json" 2>&1 | tee "$OUT/bench_8b_1gpu.log" | tail -8
    timeout 260 "$py" -m torch.distributed.run --standalone --nproc-per-node 2 -m trajstore_engine bench \
      --model 8b --variants varlen_layers --skip-long --out "$OUT/bench_8b_2gpu.json" 2>&1 | tee "$OUT/bench_8b_2gpu.log" | tail -12
    ;;
  vl8)
    timeout 480 "$py" -m trajstore_engine bench --vl 8b --reps 2 --out "$OUT/bench_vl_8b.json" 2>&1 | tee "$OUT/bench_vl_8b.log" | tail -12
    ;;
  vl)
    # both VL shapes in one call, without the tests
    timeout 240 "$py" -m trajstore_engine bench --vl 8b --reps 2 --micro-batch-tokens "${VL_MBT:-12288}" \
      --out "$OUT/bench_vl_8b.json" 2>&1 | tee "$OUT/bench_vl_8b.log" | tail -8
    timeout 330 "$py" -m trajstore_engine bench --vl 32b --reps 2 --out "$OUT/bench_vl_32b.json" 2>&1 \
      | tee "$OUT/bench_vl_32b.log" | tail -8
    ;;
  vl32)
    timeout 560 "$py" -m trajstore_engine bench --vl 32b --reps 2 --out "$OUT/bench_vl_32b.json" 2>&1 | tee "$OUT/bench_vl_32b.log" | tail -12
    ;;
  *) echo "usage: gpu-bench.sh single|again|fsdp|vl8|vl32" >&2; exit 2 ;;
esac
