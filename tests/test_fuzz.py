"""Hypothesis-fuzzed shapes, CPU backend vs the oracle, with NUMBA_BOUNDSCHECK=1.

The flag only takes effect if set before Numba compiles, so the fuzzing runs in a subprocess
(tests/_fuzz_boundscheck.py). conftest.py starts that subprocess right after collection so its
compilation overlaps the rest of the run; this test waits for it and checks it exited 0.
"""
import pytest

from _support import BACKENDS, FUZZ_TEST_NAME, FUZZ_TIMEOUT_S


@pytest.mark.skipif("cpu" not in BACKENDS, reason="cpu backend not available")
def test_fuzz_under_boundscheck(fuzz_run):
    rc, output, seconds = fuzz_run.result()
    assert rc is not None, (f"fuzz subprocess overran {FUZZ_TIMEOUT_S} s and was killed; "
                            f"output:\n{output}")
    assert rc == 0, f"fuzz subprocess exited {rc} after {seconds:.0f} s; output:\n{output}"
    assert "examples passed under NUMBA_BOUNDSCHECK=1" in output, output


assert test_fuzz_under_boundscheck.__name__ == FUZZ_TEST_NAME  # conftest finds it by this name
