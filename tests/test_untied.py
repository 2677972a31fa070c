"""Locally-connected and tiled layers: every available backend x layer x pass x dtype x case vs the
float64 oracle, accumulation, poisoned outputs, non-contiguous inputs, the identities that tie
the three layers together, finite differences, the adjoint identity and determinism."""
import importlib

import ml_dtypes
import numba
import numpy as np
import pytest

import sharenet_fast as sf
from _support import (BACKENDS, DTYPE_IDS, DTYPES, LAYER_NAMES, LAYERS, PASSES, UNTIED_BY_ID,
                      UNTIED_CASES, UNTIED_IDS, Case, UntiedCase, assert_close, grid,
                      layer_call, layer_reference, make_inputs, make_layer_inputs, random_array,
                      SHAPES_BY_ID)


# ------------------------------------------------------------------------- the main table
@pytest.mark.parametrize("uc", UNTIED_CASES, ids=UNTIED_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("pass_", PASSES)
@pytest.mark.parametrize("layer", LAYER_NAMES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.sim_kernel_table
def test_layer_matches_reference(backend, layer, pass_, dtype, uc):
    d = make_layer_inputs(layer, uc, dtype)
    originals = [a.copy() for a in d]
    expected = layer_reference(layer, pass_, d, uc.case.kw)
    out = layer_call(layer, pass_, backend, d, uc.case.kw)
    for a, orig in zip(d, originals):
        np.testing.assert_array_equal(a, orig, err_msg="an input was modified")
    assert isinstance(out, np.ndarray)
    assert out.dtype == np.dtype(dtype)
    want = {"forward": uc.case.y_shape, "input": uc.case.x_shape,
            "weight": d.w.shape, "bias": d.b.shape}[pass_]
    assert out.shape == want == expected.shape
    assert_close(out, expected, dtype, f"{backend} {layer} {pass_} {uc.id}")


@pytest.mark.parametrize("layer", LAYER_NAMES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_full_backward_and_no_bias(backend, layer):
    uc = UNTIED_BY_ID["nonsquare_all"]
    d = make_layer_inputs(layer, uc, np.float64, seed=1)
    kw = uc.case.kw
    y = LAYERS[layer].forward(d.x, d.w, backend=backend, **kw)
    assert_close(y, LAYERS[layer].ref_forward(d.x, d.w, None, **kw), np.float64, "no bias")
    g = LAYERS[layer].backward(d.dy, d.x, d.w, backend=backend, **kw)
    assert isinstance(g, sf.Grads)
    for pass_, out in zip(PASSES[1:], g):
        assert_close(out, layer_reference(layer, pass_, d, kw), np.float64, pass_)


# ------------------------------------------------------------ accumulation (hard sharing)
@pytest.mark.parametrize("case_id", ["alexnet_s4_k11", "batch13", "wgrad_chunks", "K7_Q5_tails"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("layer", LAYER_NAMES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.sim_one_case
def test_accumulates_into_poisoned_buffers(backend, layer, dtype, case_id, rng):
    uc = UNTIED_BY_ID[case_id]
    d = make_layer_inputs(layer, uc, dtype)
    kw = uc.case.kw
    ref_w = layer_reference(layer, "weight", d, kw)
    ref_b = layer_reference(layer, "bias", d, kw)
    init_w = random_array(rng, d.w.shape, dtype) * 10
    init_b = random_array(rng, d.b.shape, dtype) * 10
    gw, gb = init_w.copy(), init_b.copy()
    for times in (1, 2):  # a second call site adds again
        g = LAYERS[layer].backward(d.dy, d.x, d.w, needs=("weight", "bias"), grad_weight=gw,
                                   grad_bias=gb, backend=backend, **kw)
        assert g.input is None and g.weight is gw and g.bias is gb
        assert_close(gw, init_w.astype(np.float64) + times * ref_w, dtype, f"grad_weight x{times}")
        assert_close(gb, init_b.astype(np.float64) + times * ref_b, dtype, f"grad_bias x{times}")


@pytest.mark.parametrize("needs", [("weight", "bias"), ("input", "weight", "bias")],
                         ids=["weight_bias", "all"])   # "all" runs local2d's fused pass
@pytest.mark.parametrize("contiguous", [True, False], ids=["contiguous", "strided"])
@pytest.mark.parametrize("layer", LAYER_NAMES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_accumulates_into_views(backend, layer, contiguous, needs, rng):
    uc = UNTIED_BY_ID["nonsquare_all"]
    d = make_layer_inputs(layer, uc, np.float32)
    kw = uc.case.kw
    big = random_array(rng, (2,) + d.w.shape[:-1] + (2 * d.w.shape[-1],), np.float32)
    big0 = big.copy()
    # a C-contiguous view with an offset (big[1, ..., :S] is not: use a slab), or a strided one
    view = big[1].reshape(-1)[:d.w.size].reshape(d.w.shape) if contiguous else big[1, ..., ::2]
    assert view.flags.c_contiguous == contiguous
    bview = random_array(rng, d.b.shape[::-1], np.float32).T
    init, init_b = view.astype(np.float64), bview.astype(np.float64)
    g = LAYERS[layer].backward(d.dy, d.x, d.w, needs=needs, grad_weight=view,
                               grad_bias=bview, backend=backend, **kw)
    assert g.weight is view and g.bias is bview
    assert_close(view, init + layer_reference(layer, "weight", d, kw), np.float32, "view")
    assert_close(bview, init_b + layer_reference(layer, "bias", d, kw), np.float32, "bias")
    if "input" in needs:
        assert_close(g.input, layer_reference(layer, "input", d, kw), np.float32, "input")
    np.testing.assert_array_equal(big[0], big0[0])
    if not contiguous:
        np.testing.assert_array_equal(big[1, ..., 1::2], big0[1, ..., 1::2])
    else:
        rest = big[1].reshape(-1)[d.w.size:]
        np.testing.assert_array_equal(rest, big0[1].reshape(-1)[d.w.size:])


# ------------------------------------------------------------------ NaN-poisoned allocations
NAN_MODULES = ("conv2d", "local2d", "depthwise")


class _NanNumpy:
    """numpy, except that empty() returns NaN-filled arrays: an unwritten element stays NaN."""

    def __init__(self, calls):
        self.calls = calls

    def __getattr__(self, name):
        return getattr(np, name)

    def empty(self, shape, dtype=float, order="C", **kw):
        self.calls.append(shape)
        return np.full(shape, np.nan, dtype=dtype, order=order)


@pytest.mark.skipif("cpu" not in BACKENDS, reason="cpu backend not available")
@pytest.mark.parametrize("uc", UNTIED_CASES, ids=UNTIED_IDS)
@pytest.mark.parametrize("layer", LAYER_NAMES)
def test_cpu_writes_every_element_of_nan_poisoned_outputs(layer, uc, monkeypatch):
    check_nan_poisoned(layer, make_layer_inputs(layer, uc, np.float64, seed=2), uc.case.kw,
                       monkeypatch)


def check_nan_poisoned(layer, d, kw, monkeypatch):
    """Every pass of `layer` on the CPU with every np.empty of its modules NaN-filled: no
    element of a result may stay unwritten, and each still matches the oracle."""
    dtype = np.float64
    for pass_ in PASSES:  # compile with the real numpy first
        layer_call(layer, pass_, "cpu", d, kw)
    calls = []
    for mod in NAN_MODULES:   # every module of the CPU backend that allocates results
        monkeypatch.setattr(importlib.import_module(f"sharenet_fast.cpu.{mod}"), "np",
                            _NanNumpy(calls))
    outs = [layer_call(layer, p, "cpu", d, kw) for p in PASSES]
    assert calls, "the NaN allocator was not used: the test no longer poisons anything"
    for pass_, out in zip(PASSES, outs):
        assert not np.isnan(out).any(), f"{pass_}: {np.isnan(out).sum()} elements never written"
        assert_close(out, layer_reference(layer, pass_, d, kw), dtype, pass_)


# ------------------------------------------------------------------------------ identities
IDENTITY_CASES = ["alexnet_s4_k11", "pad1_3x3", "nonsquare_all", "dilation2", "crop_mixed",
                  "stride_1x2"]


def _conv_and_banks(case_id, dtype, seed):
    case = SHAPES_BY_ID[case_id]
    d = make_inputs(case, dtype, seed=seed)
    g = case.geometry
    return case, d, g


@pytest.mark.parametrize("case_id", IDENTITY_CASES)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.sim_one_case
def test_tiled_1x1_is_conv2d(backend, dtype, case_id):
    case, d, g = _conv_and_banks(case_id, dtype, 31)
    kw = case.kw
    y = sf.tiled_conv2d(d.x, d.w[None, None], d.b[None, None], backend=backend, **kw)
    t = sf.tiled_conv2d_backward(d.dy, d.x, d.w[None, None], backend=backend, **kw)
    c = sf.conv2d_backward(d.dy, d.x, d.w, backend=backend, **kw)
    assert_close(y, sf.conv2d(d.x, d.w, d.b, backend=backend, **kw).astype(np.float64), dtype,
                 "forward")
    assert_close(t.input, c.input.astype(np.float64), dtype, "input grad")
    assert_close(t.weight[0, 0], c.weight.astype(np.float64), dtype, "weight grad")
    assert_close(t.bias[0, 0], c.bias.astype(np.float64), dtype, "bias grad")


@pytest.mark.parametrize("case_id", IDENTITY_CASES)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.sim_one_case
def test_tiled_full_grid_is_local2d(backend, dtype, case_id, rng):
    case, d, g = _conv_and_banks(case_id, dtype, 32)
    kw = case.kw
    w = random_array(rng, (g.P, g.Q) + g.w_shape, dtype)
    b = random_array(rng, (g.P, g.Q, g.K), dtype)
    assert_close(sf.tiled_conv2d(d.x, w, b, backend=backend, **kw),
                 sf.local2d(d.x, w, b, backend=backend, **kw).astype(np.float64), dtype, "fwd")
    t = sf.tiled_conv2d_backward(d.dy, d.x, w, backend=backend, **kw)
    lo = sf.local2d_backward(d.dy, d.x, w, backend=backend, **kw)
    for name, a, b_ in zip(("input", "weight", "bias"), t, lo):
        assert a.shape == b_.shape
        assert_close(a, b_.astype(np.float64), dtype, name)


@pytest.mark.parametrize("case_id", IDENTITY_CASES)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.sim_one_case
def test_local2d_with_equal_banks_is_conv2d(backend, dtype, case_id):
    """Every bank = one filter: local2d is conv2d, and its weight gradient summed over the
    positions is conv2d's (sharing = adding the gradients of a depth slice)."""
    case, d, g = _conv_and_banks(case_id, dtype, 33)
    kw = case.kw
    w = np.ascontiguousarray(np.broadcast_to(d.w, (g.P, g.Q) + g.w_shape))
    b = np.ascontiguousarray(np.broadcast_to(d.b, (g.P, g.Q, g.K)))
    assert_close(sf.local2d(d.x, w, b, backend=backend, **kw),
                 sf.conv2d(d.x, d.w, d.b, backend=backend, **kw).astype(np.float64), dtype, "fwd")
    lo = sf.local2d_backward(d.dy, d.x, w, backend=backend, **kw)
    c = sf.conv2d_backward(d.dy, d.x, d.w, backend=backend, **kw)
    assert_close(lo.input, c.input.astype(np.float64), dtype, "input grad")
    assert_close(lo.weight.astype(np.float64).sum(axis=(0, 1)), c.weight.astype(np.float64),
                 dtype, "sum of local weight grads")
    assert_close(lo.bias.astype(np.float64).sum(axis=(0, 1)), c.bias.astype(np.float64), dtype,
                 "sum of local bias grads")


# --------------------------------------------------------------------- non-contiguous inputs
@pytest.mark.parametrize("layer", LAYER_NAMES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_and_read_only_inputs(backend, layer):
    uc = UNTIED_BY_ID["batch13"]
    d = make_layer_inputs(layer, uc, np.float64, seed=3)
    kw = uc.case.kw
    rev = [np.ascontiguousarray(a[..., ::-1])[..., ::-1] for a in d]   # negative strides
    for a in rev:
        assert not a.flags.c_contiguous
        a.setflags(write=False)
    x, w, b, dy = rev
    y = LAYERS[layer].forward(x, w, b, backend=backend, **kw)
    g = LAYERS[layer].backward(dy, x, w, backend=backend, **kw)
    for pass_, out in zip(PASSES, (y, *g)):
        assert out.flags.writeable and out.flags.c_contiguous
        assert_close(out, layer_reference(layer, pass_, d, kw), np.float64, pass_)


@pytest.mark.parametrize("layer", LAYER_NAMES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_needs_subsets(backend, layer, rng):
    uc = UNTIED_BY_ID["pad1_3x3"]
    d = make_layer_inputs(layer, uc, np.float64)
    gw = random_array(rng, d.w.shape)
    gw0 = gw.copy()
    g = LAYERS[layer].backward(d.dy, d.x, d.w, needs=("input", "bias"), grad_weight=gw,
                               backend=backend, **uc.case.kw)
    assert g.weight is None and g.input is not None and g.bias is not None
    np.testing.assert_array_equal(gw, gw0)
    assert LAYERS[layer].backward(d.dy, d.x, d.w, needs=(), backend=backend,
                                  **uc.case.kw) == (None, None, None)


# ------------------------------------------------------------------------------- gradients
FD_CASES = [
    UntiedCase(Case("fd_pad_stride", 2, 2, 5, 6, 3, 3, 2, stride=(2, 1), padding=1), (2, 2)),
    UntiedCase(Case("fd_dilated", 1, 2, 6, 5, 2, 2, 3, stride=1, padding=(0, 2),
                    dilation=(2, 1)), (3, 2)),
]


@pytest.mark.skipif("cpu" not in BACKENDS, reason="cpu backend not available")
@pytest.mark.parametrize("uc", FD_CASES, ids=[c.id for c in FD_CASES])
@pytest.mark.parametrize("layer", LAYER_NAMES)
def test_finite_differences_cpu(layer, uc):
    """L = sum(layer(x, w, b) * G); dL/dx, dL/dw, dL/db by central differences (float64)."""
    d = make_layer_inputs(layer, uc, np.float64, seed=7)
    kw = uc.case.kw
    fwd = LAYERS[layer].forward

    def loss(x, w, b):
        return float(np.sum(fwd(x, w, b, backend="cpu", **kw) * d.dy))

    h = 1e-5
    args = [d.x, d.w, d.b]
    g = LAYERS[layer].backward(d.dy, d.x, d.w, backend="cpu", **kw)
    rng = np.random.default_rng(8)
    for i, (name, analytic) in enumerate(zip(("input", "weight", "bias"), g)):
        # every element for x and b; a random sample of 60 for the (larger) weights
        idxs = list(np.ndindex(args[i].shape))
        if len(idxs) > 60:
            idxs = [idxs[j] for j in rng.choice(len(idxs), 60, replace=False)]
        for idx in idxs:
            plus = [v.copy() for v in args]
            minus = [v.copy() for v in args]
            plus[i][idx] += h
            minus[i][idx] -= h
            num = (loss(*plus) - loss(*minus)) / (2 * h)
            np.testing.assert_allclose(analytic[idx], num, rtol=1e-6, atol=1e-7,
                                       err_msg=f"{name}{idx}")


@pytest.mark.parametrize("case_id", ["alexnet_s4_k11", "nonsquare_all", "dilation2",
                                     "stride_gt_kernel", "pad_gt_input", "batch13"])
@pytest.mark.parametrize("layer", LAYER_NAMES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.sim_one_case
def test_adjoint_identity(backend, layer, case_id):
    """<layer(x, w), dy> == <x, input_grad(dy)> == <w, weight_grad(dy, x)> (float64)."""
    uc = UNTIED_BY_ID[case_id]
    d = make_layer_inputs(layer, uc, np.float64, seed=5)
    kw = uc.case.kw
    y = LAYERS[layer].forward(d.x, d.w, backend=backend, **kw)
    g = LAYERS[layer].backward(d.dy, d.x, d.w, backend=backend, **kw)
    lhs = np.vdot(y, d.dy)
    assert abs(lhs - np.vdot(d.x, g.input)) <= 1e-12 * abs(lhs)
    assert abs(lhs - np.vdot(d.w, g.weight)) <= 1e-12 * abs(lhs)
    yb = LAYERS[layer].forward(d.x, d.w, d.b, backend=backend, **kw)
    via_bias = np.vdot(d.b, g.bias)
    assert abs((np.vdot(yb, d.dy) - lhs) - via_bias) <= 1e-12 * (abs(lhs) + abs(via_bias))


# ------------------------------------------------------------------------------ determinism
@pytest.mark.skipif("cpu" not in BACKENDS, reason="cpu backend not available")
@pytest.mark.parametrize("layer", LAYER_NAMES)
def test_cpu_weight_grad_bitwise_reproducible_and_thread_independent(layer):
    uc = UntiedCase(Case("det_n5_24x24", 5, 2, 24, 24, 5, 3, 3, padding=1), (2, 3))
    d = make_layer_inputs(layer, uc, np.float32, seed=12)
    before = numba.get_num_threads()
    results = []
    try:
        for n in sorted({1, numba.config.NUMBA_NUM_THREADS}) * 2:
            numba.set_num_threads(n)
            results.append(LAYERS[layer].backward(d.dy, d.x, d.w, deterministic=True,
                                                  backend="cpu", **uc.case.kw))
    finally:
        numba.set_num_threads(before)
    for r in results[1:]:
        for a, b in zip(r, results[0]):
            assert np.array_equal(a, b)


# ----------------------------------------------------------------------------- peak memory
@pytest.mark.skipif("cpu" not in BACKENDS, reason="cpu backend not available")
def test_local2d_forward_allocates_no_buffer_as_big_as_the_weights():
    """unfold + einsum would allocate an N*C*R*S*P*Q column buffer; local2d must not.
    tracemalloc sees NumPy's host allocations; the kernels' own buffers are one patch per task."""
    import tracemalloc

    uc = UntiedCase(Case("alexnet_small", 2, 3, 67, 67, 16, 11, 11, stride=4), (1, 1))
    d = make_layer_inputs("local2d", uc, np.float32)
    sf.local2d(d.x, d.w, d.b, stride=4, backend="cpu")     # compile outside the measurement
    tracemalloc.start()
    try:
        y = sf.local2d(d.x, d.w, d.b, stride=4, backend="cpu")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    unfold = uc.case.N * uc.case.C * 11 * 11 * y.shape[2] * y.shape[3] * 4
    assert peak - y.nbytes < d.w.nbytes / 2, (peak, y.nbytes, d.w.nbytes)
    assert peak < unfold, (peak, unfold)


# ---------------------------------------------------------------------- workspace reuse
@pytest.mark.parametrize("case_id", ["pad1_3x3", "alexnet_s4_k11", "kernel_eq_input"])
@pytest.mark.parametrize("layer", ["conv2d"] + LAYER_NAMES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_results_survive_the_next_call(backend, layer, case_id):
    """CPU kernels reuse scratch buffers between calls (cpu/_workspace.py): no returned array
    may be one of them. Results of a first call must be unchanged by a second, different call."""
    uc = UNTIED_BY_ID[case_id]
    kw = uc.case.kw
    if layer == "conv2d":
        d = make_inputs(uc.case, np.float64, seed=40)
        fwd, bwd = sf.conv2d, sf.conv2d_backward
    else:
        d = make_layer_inputs(layer, uc, np.float64, seed=40)
        fwd, bwd = LAYERS[layer].forward, LAYERS[layer].backward
    first = [fwd(d.x, d.w, d.b, backend=backend, **kw),
             *bwd(d.dy, d.x, d.w, backend=backend, **kw),
             bwd(d.dy, d.x, d.w, needs="input", backend=backend, **kw).input]
    kept = [a.copy() for a in first]
    other = [2 * a + 1 for a in d]  # same shapes, different values
    fwd(other[0], other[1], other[2], backend=backend, **kw)
    bwd(other[3], other[0], other[1], backend=backend, **kw)
    bwd(other[3], other[0], other[1], needs="input", backend=backend, **kw)
    for a, b in zip(first, kept):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------- local2d with a batch of a vector or more
# The CPU input gradient of local2d keeps the images innermost when the batch fills a vector
# (N >= 16 float32 lanes with AVX-512, 8 with AVX2 or float64): in float32 no case above
# reaches it. One vector a call and two (DGRAD_NVMAX) with a partial one, a second chunk of
# images, groups, a strided and dilated w (one run per tap), 16-bit storage; alone and beside
# the weight gradient.
BATCH_CASES = [
    Case("batch16", 16, 3, 7, 8, 5, 3, 3, padding=1),
    Case("batch35_groups", 35, 4, 6, 7, 6, 3, 2, stride=(2, 1), groups=2),
    Case("batch20_dil", 20, 2, 7, 9, 3, 2, 3, stride=(1, 2), padding=1, dilation=(1, 2)),
]


@pytest.mark.skipif("cpu" not in BACKENDS, reason="cpu backend not available")
@pytest.mark.parametrize("dtype", [*DTYPES, ml_dtypes.bfloat16, np.float16],
                         ids=[*DTYPE_IDS, "bf16", "f16"])
@pytest.mark.parametrize("case", BATCH_CASES, ids=lambda c: c.id)
def test_local_backward_with_batches_of_vectors(case, dtype):
    d = make_layer_inputs("local2d", UntiedCase(case, (1, 1)), dtype)
    for needs in (("input",), ("input", "weight", "bias")):
        g = sf.local2d_backward(d.dy, d.x, d.w, needs=needs, backend="cpu", **case.kw)
        for pass_ in needs:
            assert_close(getattr(g, pass_), layer_reference("local2d", pass_, d, case.kw),
                         dtype, f"{case.id} {pass_} with {needs}")


# ------------------------------- local2d weight gradient streamed into an aligned result
# Where a group's C*R*S is a multiple of the vector and the result is 64-byte aligned (every
# result is), the weight gradient's tiles go to it with non-temporal stores, no staging bank
# (cpu/local2d.py _streams). Cases: one vector of T, groups with a filter tile past Kg, a
# strided and dilated w (the gather's element path), a batch of a vector (the input gradient
# apart); every element of a NaN-poisoned result written, equal bit for bit to the staged path.
STREAM_CASES = [
    Case("stream_t16", 3, 4, 7, 8, 6, 2, 2),
    Case("stream_groups", 2, 8, 6, 7, 10, 2, 2, groups=2),
    Case("stream_dil", 2, 3, 11, 12, 5, 4, 4, stride=(2, 1), dilation=(1, 2)),
    Case("stream_batch16", 16, 2, 6, 6, 4, 2, 4, padding=1),
]


@pytest.mark.skipif("cpu" not in BACKENDS, reason="cpu backend not available")
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", STREAM_CASES, ids=lambda c: c.id)
def test_local_weight_gradient_streamed_to_an_aligned_result(case, dtype, monkeypatch):
    import sys
    from sharenet_fast.cpu import _workspace
    mod = sys.modules["sharenet_fast.cpu.local2d"]
    real = mod._streams
    seen = []

    def spy(*a):
        seen.append(real(*a))
        return seen[-1] and use[0]

    def poisoned(shape, dt):
        out = _workspace.result(shape, dt)
        out[...] = np.nan
        return out
    monkeypatch.setattr(mod, "_streams", spy)
    monkeypatch.setattr(mod, "result", poisoned)
    d = make_layer_inputs("local2d", UntiedCase(case, (1, 1)), dtype)
    got = {}
    for use in ([True], [False]):
        for needs in (("weight",), ("input", "weight")):
            g = sf.local2d_backward(d.dy, d.x, d.w, needs=needs, backend="cpu", **case.kw)
            got[use[0], needs] = g.weight
            assert_close(g.weight, layer_reference("local2d", "weight", d, case.kw), dtype,
                         f"{case.id} weight with {needs}")
    assert seen and all(seen), "the streamed path was not taken"
    for needs in (("weight",), ("input", "weight")):
        np.testing.assert_array_equal(got[True, needs], got[False, needs])
