"""Gradient checks independent of the oracle: central finite differences, the adjoint identity,
and bitwise determinism of the weight gradient."""
import numba
import numpy as np
import pytest

import sharenet_fast as sf
from _support import BACKENDS, SHAPES_BY_ID, Case, make_inputs, random_array

# Tiny float64 cases (same kernel signatures as the rest of the suite: no extra compiles).
FD_CASES = [
    Case("fd_pad_stride", 2, 2, 5, 6, 3, 3, 2, stride=(2, 1), padding=1),
    Case("fd_dilated", 1, 3, 6, 5, 2, 2, 3, stride=1, padding=(0, 2), dilation=(2, 1)),
]


@pytest.mark.skipif("cpu" not in BACKENDS, reason="cpu backend not available")
@pytest.mark.parametrize("case", FD_CASES, ids=[c.id for c in FD_CASES])
def test_finite_differences_cpu(case):
    """L = sum(conv2d(x, w, b) * G); dL/dx, dL/dw, dL/db from central differences."""
    rng = np.random.default_rng(7)
    x = random_array(rng, case.x_shape)
    w = random_array(rng, case.w_shape)
    b = random_array(rng, (case.K,))
    G = random_array(rng, case.y_shape)

    def loss(x, w, b):
        return float(np.sum(sf.conv2d(x, w, b, backend="cpu", **case.kw) * G))

    h = 1e-5
    args = [x, w, b]
    numeric = []
    for i, a in enumerate(args):
        grad = np.empty_like(a)
        for idx in np.ndindex(a.shape):
            plus = [v.copy() for v in args]
            minus = [v.copy() for v in args]
            plus[i][idx] += h
            minus[i][idx] -= h
            grad[idx] = (loss(*plus) - loss(*minus)) / (2 * h)
        numeric.append(grad)
    g = sf.conv2d_backward(G, x, w, backend="cpu", **case.kw)
    for name, analytic, num in zip(("input", "weight", "bias"), g, numeric):
        # L is linear in each argument, so the only error is rounding: ~1e-16 * |L| / h
        np.testing.assert_allclose(analytic, num, rtol=1e-6, atol=1e-7, err_msg=name)


ADJOINT_CASES = ["alexnet_s4_k11", "nonsquare_all", "dilation2", "stride_gt_kernel",
                 "pad_gt_input", "K7_Q5_tails", "wgrad_chunks"]


@pytest.mark.parametrize("case_id", ADJOINT_CASES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.sim_one_case
def test_adjoint_identity(backend, case_id):
    """<conv2d(x, w), dy> == <x, input_grad(dy)> == <w, weight_grad(dy, x)> (float64)."""
    case = SHAPES_BY_ID[case_id]
    d = make_inputs(case, np.float64, seed=5)
    y = sf.conv2d(d.x, d.w, backend=backend, **case.kw)
    g = sf.conv2d_backward(d.dy, d.x, d.w, needs=("input", "weight"), backend=backend,
                           **case.kw)
    lhs = np.vdot(y, d.dy)
    via_input = np.vdot(d.x, g.input)
    via_weight = np.vdot(d.w, g.weight)
    assert abs(lhs - via_input) <= 1e-12 * abs(lhs), (lhs, via_input)
    assert abs(lhs - via_weight) <= 1e-12 * abs(lhs), (lhs, via_weight)
    # with bias: <conv2d(x, w, b), dy> - <conv2d(x, w), dy> == <b, bias_grad(dy)>
    yb = sf.conv2d(d.x, d.w, d.b, backend=backend, **case.kw)
    db = sf.conv2d_backward(d.dy, d.x, d.w, needs="bias", backend=backend, **case.kw).bias
    via_bias = np.vdot(d.b, db)
    assert abs((np.vdot(yb, d.dy) - lhs) - via_bias) <= 1e-12 * (abs(lhs) + abs(via_bias))


# ------------------------------------------------------------------------------ determinism
DET_CASES = [
    Case("det_n4_16x16", 4, 3, 16, 16, 8, 3, 3, padding=1),
    Case("det_n4_48x48_chunked", 4, 2, 48, 48, 5, 3, 3, padding=1),   # 20 work units
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", DET_CASES, ids=[c.id for c in DET_CASES])
@pytest.mark.parametrize("backend", BACKENDS)
def test_deterministic_weight_grad_is_bitwise_reproducible(backend, case, dtype):
    d = make_inputs(case, dtype, seed=11)
    runs = [sf.conv2d_backward(d.dy, d.x, d.w, needs=("weight", "bias"), deterministic=True,
                               backend=backend, **case.kw) for _ in range(3)]
    for g in runs[1:]:
        assert np.array_equal(g.weight, runs[0].weight)
        assert np.array_equal(g.bias, runs[0].bias)
    # accumulating into a buffer is reproducible too
    accs = []
    for _ in range(3):
        acc = np.ones(case.w_shape, dtype)
        sf.conv2d_backward(d.dy, d.x, d.w, needs=("weight",), deterministic=True,
                           grad_weight=acc, backend=backend, **case.kw)
        accs.append(acc)
    assert all(np.array_equal(a, accs[0]) for a in accs[1:])


@pytest.mark.skipif("cpu" not in BACKENDS, reason="cpu backend not available")
def test_cpu_weight_grad_independent_of_thread_count():
    """cpu/conv2d.py promises the reduction order depends only on the shapes, never the threads."""
    case = DET_CASES[1]
    d = make_inputs(case, np.float32, seed=12)
    before = numba.get_num_threads()
    results = []
    try:
        for n in sorted({1, numba.config.NUMBA_NUM_THREADS}):
            numba.set_num_threads(n)
            results.append(sf.conv2d_backward(d.dy, d.x, d.w, needs=("weight",),
                                              deterministic=True, backend="cpu",
                                              **case.kw).weight)
    finally:
        numba.set_num_threads(before)
    assert all(np.array_equal(r, results[0]) for r in results[1:])
