"""Hypothesis-fuzzed shapes, CPU backend vs the oracle, with NUMBA_BOUNDSCHECK=1.

The flag only takes effect if set before Numba compiles, so the fuzzing runs in a subprocess
(tests/_fuzz_boundscheck.py). conftest.py starts that subprocess right after collection so its
compilation overlaps the rest of the run; this test waits for it and checks it exited 0.
"""
import numpy as np
import pytest

from _support import BACKENDS, FUZZ_TIMEOUT_S


@pytest.mark.skipif("cpu" not in BACKENDS, reason="cpu backend not available")
@pytest.mark.fuzz_subprocess
def test_fuzz_under_boundscheck(fuzz_run):
    rc, output, seconds = fuzz_run.result()
    assert rc is not None, (f"fuzz subprocess overran {FUZZ_TIMEOUT_S} s and was killed; "
                            f"output:\n{output}")
    assert rc == 0, f"fuzz subprocess exited {rc} after {seconds:.0f} s; output:\n{output}"
    assert "examples passed under NUMBA_BOUNDSCHECK=1" in output, output




@pytest.mark.skipif("numba-cuda" not in BACKENDS, reason="numba-cuda backend not available")
def test_fuzz_numba_cuda():
    """The same fuzz for the numba-cuda backend, in process: on the simulator (no GPU) every
    array access is bounds-checked by NumPy indexing, and shapes are kept small (the simulator
    runs each CUDA thread as a Python thread); on a GPU the same shapes run for real."""
    from hypothesis import HealthCheck, given, settings

    import _fuzz_boundscheck as fz

    @settings(max_examples=8, deadline=None, database=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
              print_blob=True)
    @given(fz.shapes(max_n=2, max_c=2, max_k=3, max_hw=7, max_rs=3, big_n=()))
    def fuzz(case):
        fz.check(case, backend="numba-cuda", dtypes=(np.float32,))
    fuzz()
