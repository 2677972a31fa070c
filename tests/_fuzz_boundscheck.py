"""Hypothesis-fuzzed shapes, CPU backend vs the float64 oracle, under NUMBA_BOUNDSCHECK=1.

(tests/test_fuzz.py also imports `shapes` and `check` to fuzz the numba-cuda backend in process,
on smaller shapes, where the simulator bounds-checks every array access itself.)

Every layer: conv2d, local2d and tiled_conv2d (with a random tile), forward and backward.

Not collected by pytest (the name does not match test_*.py): tests/test_fuzz.py runs it in a
subprocess with NUMBA_BOUNDSCHECK=1 in the environment, because the flag only takes effect if it
is set before Numba compiles anything. Exit status 0 means every example passed. Run by hand:

    NUMBA_BOUNDSCHECK=1 python tests/_fuzz_boundscheck.py [max_examples]
"""
import os
import sys
import time

import numpy as np

try:
    import sharenet_fast as sf
except ImportError:  # running from a checkout without an install
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import sharenet_fast as sf

import numba
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from numba import njit

from sharenet_fast import reference as ref
from sharenet_fast.dtypes import BFLOAT16, rel_err, tol
from sharenet_fast.geometry import out_size

MAX_EXAMPLES = int(sys.argv[1]) if __name__ == "__main__" and len(sys.argv) > 1 else 25


def check_boundscheck_is_live():
    """The flag must be on, and must turn an out-of-bounds read into an IndexError."""
    assert numba.config.BOUNDSCHECK, "NUMBA_BOUNDSCHECK=1 was not seen by numba"

    @njit
    def read(a, i):
        return a[i]

    try:
        read(np.zeros(3), 3)
    except IndexError:
        return
    raise AssertionError("an out-of-bounds read did not raise IndexError under NUMBA_BOUNDSCHECK")


pair = st.tuples  # readability below


@st.composite
def shapes(draw, max_n=3, max_c=4, max_k=6, max_hw=12, max_rs=5, big_n=(16, 17)):
    # big_n: batches of a vector or more (16 float32 lanes), where local2d's CPU input
    # gradient keeps the images innermost
    N = draw(st.one_of(st.integers(1, max_n), st.sampled_from(big_n)) if big_n
             else st.integers(1, max_n))
    C = draw(st.integers(1, max_c))
    K = draw(st.integers(1, max_k))
    H, W = draw(st.integers(1, max_hw)), draw(st.integers(1, max_hw))
    R, S = draw(st.integers(1, max_rs)), draw(st.integers(1, max_rs))
    stride = draw(pair(st.integers(1, 3), st.integers(1, 3)))
    padding = draw(pair(st.integers(0, 2), st.integers(0, 2)))
    dilation = draw(pair(st.integers(1, 2), st.integers(1, 2)))
    P = out_size(H, R, stride[0], padding[0], dilation[0])
    Q = out_size(W, S, stride[1], padding[1], dilation[1])
    assume(P >= 1 and Q >= 1)
    seed = draw(st.integers(0, 2**32 - 1))
    tile = (draw(st.integers(1, P)), draw(st.integers(1, Q)))
    return (N, C, H, W, K, R, S, stride, padding, dilation, seed, tile)


def check(case, backend="cpu", dtypes=(np.float64, np.float32)):
    N, C, H, W, K, R, S, stride, padding, dilation, seed, tile = case
    kw = dict(stride=stride, padding=padding, dilation=dilation)
    rng = np.random.default_rng(seed)
    x64 = rng.uniform(0.5, 1.5, (N, C, H, W)) * rng.choice([-1.0, 1.0], (N, C, H, W))
    w64 = rng.standard_normal((K, C, R, S)) + 0.1
    b64 = rng.standard_normal(K) + 0.1
    for dtype in dtypes:
        x, w, b = x64.astype(dtype), w64.astype(dtype), b64.astype(dtype)
        y = sf.conv2d(x, w, b, backend=backend, **kw)
        dy = rng.standard_normal(y.shape).astype(dtype) + np.dtype(dtype).type(0.1)
        g = sf.conv2d_backward(dy, x, w, backend=backend, **kw)
        expected = {
            "forward": ref.conv2d(x, w, b, **kw),
            "input": ref.conv2d_input_grad(dy, x.shape, w, **kw),
            "weight": ref.conv2d_weight_grad(dy, x, w.shape, **kw),
            "bias": ref.conv2d_bias_grad(dy),
        }
        got = {"forward": y, "input": g.input, "weight": g.weight, "bias": g.bias}
        for op, out in got.items():
            assert out.dtype == dtype and out.shape == expected[op].shape, (op, case, dtype)
            err = rel_err(out, expected[op])
            assert err <= tol(dtype), f"{op} {np.dtype(dtype).name} {case}: rel err {err:.3g}"
        check_untied(x, w64, dy, dtype, tile, kw, rng, case, backend)


def check_untied(x, w64, dy, dtype, tile, kw, rng, case, backend="cpu"):
    """local2d and tiled_conv2d on the same geometry, banks perturbed per position/tile."""
    N, K, P, Q = dy.shape
    for name, grid, fwd, bwd, rf, rb in (
            ("local2d", (P, Q), sf.local2d, sf.local2d_backward, ref.local2d,
             ref.local2d_backward),
            ("tiled", tile, sf.tiled_conv2d, sf.tiled_conv2d_backward, ref.tiled_conv2d,
             ref.tiled_conv2d_backward)):
        w = (w64 + rng.standard_normal(grid + w64.shape)).astype(dtype)
        b = (rng.standard_normal(grid + (K,)) + 0.1).astype(dtype)
        y = fwd(x, w, b, backend=backend, **kw)
        g = bwd(dy, x, w, backend=backend, **kw)
        expected = (rf(x, w, b, **kw),) + rb(dy, x, w, **kw)
        for op, out, e in zip(("forward", "input", "weight", "bias"), (y, *g), expected):
            assert out.dtype == dtype and out.shape == e.shape, (name, op, case, dtype)
            err = rel_err(out, e)
            assert err <= tol(dtype), f"{name} {op} {np.dtype(dtype).name} {case}: {err:.3g}"


@settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
          print_blob=True)
@given(shapes())
def fuzz(case):
    # bfloat16 too: on AVX512_BF16 targets its conv2d passes run kernels of their own (the
    # pairs layouts' copies and gathers are bounds-checked here)
    check(case, dtypes=(np.float64, np.float32, BFLOAT16))


if __name__ == "__main__":
    t0 = time.perf_counter()
    check_boundscheck_is_live()
    fuzz()
    print(f"fuzz: {MAX_EXAMPLES} examples passed under NUMBA_BOUNDSCHECK=1 "
          f"in {time.perf_counter() - t0:.1f} s")
