#!/usr/bin/env bash
# Everything a session with a lent GPU should run (the device tool runs commands in the
# repository root and brings back what is written under $OUT; one call may last 10 minutes,
# so run the stages as separate calls):
#   bash bench/run_on_gpu.sh tests   the GPU tests (-m gpu: real sizes, determinism, CuPy,
#                                    compute-sanitizer) and the numba-cuda/cupy suites on the
#                                    real GPU (the cases the simulator skips)
#   bash bench/run_on_gpu.sh bench   the GPU benchmark (python -m bench --gpu --full --save:
#                                    JSON, markdown and both plots under bench/results/, copied
#                                    to $OUT; extra arguments go to python -m bench)
set -uo pipefail
OUT=${OUT:-/tmp/sharenet_gpu_out}
mkdir -p "$OUT"
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH}
stage=${1:-tests}
shift || true
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
python3 -c "import sharenet_fast as sf; print(sf.backends())" | tee "$OUT/backends.txt"
if [ "$stage" = tests ]; then
    python3 -m pytest -m gpu -q -p no:cacheprovider -x 2>&1 | tee "$OUT/pytest_gpu.txt" | tail -15
    python3 -m pytest -q -p no:cacheprovider -k "numba-cuda or numba_cuda or cupy" 2>&1 \
        | tee "$OUT/pytest_gpu_backends.txt" | tail -5
elif [ "$stage" = bench ]; then
    python3 -m bench --gpu --full --save "$@" 2>&1 | tee "$OUT/bench_gpu.txt" | tail -80
    cp bench/results/gpu_* "$OUT/" 2>/dev/null || true
else
    echo "stage must be tests or bench, got $stage" >&2
    exit 2
fi
