"""Root pytest configuration (tests/ and bench/).

Without a GPU the Numba CUDA kernels run on Numba's simulator: NUMBA_ENABLE_CUDASIM=1 is set
here, before numba.cuda or sharenet_fast.config is imported (config shrinks the launch geometry
under the simulator). Set NUMBA_ENABLE_CUDASIM yourself to override either way.

The run shares one kernel cache: the first process to compile a CPU kernel (a pytest-xdist
worker, or a subprocess a test starts: DDP ranks, the CLI, the examples) writes it to a
NUMBA_CACHE_DIR made for this run, and the others load it (compiling is most of the CPU tests'
time). The directory starts empty, so every kernel is still compiled once per run; it is removed
when the run ends. Set SHARENET_FAST_CACHE or NUMBA_CACHE_DIR yourself to choose otherwise.
"""
import atexit
import os
import shutil
import tempfile

if "NUMBA_ENABLE_CUDASIM" not in os.environ and not os.path.exists("/dev/nvidiactl"):
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"

# in the controlling process only (xdist workers inherit its environment), before any test
# module imports sharenet_fast (config reads SHARENET_FAST_CACHE at import): a directory for this
# run (tests/_support.once_per_run keeps its results there), the kernel cache in it
if "PYTEST_XDIST_WORKER" not in os.environ and "SHARENET_FAST_TEST_RUN" not in os.environ:
    _run = tempfile.mkdtemp(prefix="sharenet_fast_test_run_")
    atexit.register(shutil.rmtree, _run, ignore_errors=True)
    os.environ["SHARENET_FAST_TEST_RUN"] = _run
    if "SHARENET_FAST_CACHE" not in os.environ and "NUMBA_CACHE_DIR" not in os.environ:
        os.environ.update(SHARENET_FAST_CACHE="1", NUMBA_CACHE_DIR=os.path.join(_run, "kernels"))


def pytest_xdist_auto_num_workers(config):
    """`-n auto` (pyproject's addopts): a worker per core this process may run on, at most 4
    (each worker imports torch and compiles its own share of the kernels)."""
    return max(1, min(4, len(os.sched_getaffinity(0))))
