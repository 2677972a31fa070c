#!/usr/bin/env bash
# Everything a session with a lent GPU should run, in one device call (the device tool runs
# commands in the repository root and brings back what is written under $OUT):
#   1. the GPU test suite (-m gpu: real sizes, determinism, CuPy, compute-sanitizer),
#   2. the whole normal suite on the real GPU (the numba-cuda cases the simulator skips),
#   3. the GPU benchmark, saved under bench/results/ and copied to $OUT.
# Usage: bash bench/run_on_gpu.sh [extra args for python -m bench.gpu]
set -uo pipefail
OUT=${OUT:-/tmp/sharenet_gpu_out}
mkdir -p "$OUT"
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
python3 -c "import sharenet_fast as sf; print(sf.backends())" | tee "$OUT/backends.txt"
python3 -m pytest -m gpu -q -p no:cacheprovider 2>&1 | tee "$OUT/pytest_gpu.txt" | tail -15
python3 -m pytest -q -p no:cacheprovider -k "numba-cuda or numba_cuda" 2>&1 \
    | tee "$OUT/pytest_numba_cuda.txt" | tail -5
python3 -m bench.gpu --save "$@" 2>&1 | tee "$OUT/bench_gpu.txt" | tail -40
cp bench/results/gpu_* "$OUT/" 2>/dev/null || true
