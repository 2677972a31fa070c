"""Reduced-precision storage (docs/design.md, Precision): bfloat16 and float16 arrays, float32
accumulation, on every backend that has the kernels (a backend's DTYPES), every layer, pass and
case of the registry, against the float64 oracle run on the same (already rounded) inputs.

Three things are checked separately:
  - accumulation: out_dtype=np.float32 returns the unrounded float32 result, within float32's
    bound (1e-5) of the oracle;
  - rounding: the storage-dtype result is that float32 result rounded to nearest even, bit for
    bit (what ml_dtypes' cast gives), and so within the dtype's documented bound;
  - master weights: a float32 grad_weight / grad_bias for reduced weights is added into in
    float32; a reduced one gets one rounding of its float32 sum.
"""
import ml_dtypes
import numpy as np
import pytest
from numba import njit

import sharenet_fast as sf
from _support import (BACKENDS, LAYER_NAMES, PASSES, SHAPES, UNTIED_BY_ID, UNTIED_CASES, UntiedCase,
                      layer_call, layer_reference, make_layer_inputs, rel_err)
from sharenet_fast import config, dtypes, registry
from sharenet_fast.cpu._simd import narrow, widen

BF16 = np.dtype(ml_dtypes.bfloat16)
F16 = np.dtype(np.float16)
REDUCED = [BF16, F16]
REDUCED_IDS = ["bf16", "f16"]
# backends with reduced kernels, by dtype
TAKES = {dt.name: [b for b in BACKENDS if dt.name in registry.get(b).DTYPES] for dt in REDUCED}
# Numba CUDA on the simulator (every CUDA thread a Python thread): the main table runs the
# cheapest case of each kernel signature (conftest.py); the relations below run one small case
SIMULATED = {"numba-cuda"} if config.CUDASIM else set()
SMALL = UNTIED_BY_ID["same_dilated"]
# conv2d over the shared-conv shapes; the untied layers over their cases (tile = (1, 1): conv2d
# ignores it)
CASES = ([("conv2d", UntiedCase(c, (1, 1))) for c in SHAPES]
         + [(layer, uc) for layer in LAYER_NAMES for uc in UNTIED_CASES])
CASE_IDS = [f"{layer}-{uc.id}" for layer, uc in CASES]


def _inputs(layer, uc, dtype, seed=0):
    """The registry's random inputs (float64) rounded to `dtype`: the oracle reads them as
    they are stored."""
    d = make_layer_inputs(layer, uc, np.float64, seed=seed)
    return type(d)(*(a.astype(dtype) for a in d))


def _takes(backend, dtype):
    if backend not in TAKES[np.dtype(dtype).name]:
        pytest.skip(f"{backend} has no {np.dtype(dtype).name} kernels")


def _case(backend, uc):
    """`uc`, or on the simulator a small case."""
    return SMALL if backend in SIMULATED else uc


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("pass_", PASSES)
@pytest.mark.parametrize("layer,uc", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("dtype", REDUCED, ids=REDUCED_IDS)
@pytest.mark.sim_kernel_table(max_macs=2000)
def test_reduced_matches_oracle(dtype, layer, uc, pass_, backend):
    _takes(backend, dtype)
    d = _inputs(layer, uc, dtype)
    originals = [a.copy() for a in d]
    expected = layer_reference(layer, pass_, d, uc.case.kw)
    row = dtypes.lookup(dtype)
    wide = layer_call(layer, pass_, backend, d, uc.case.kw, out_dtype=np.float32)
    out = layer_call(layer, pass_, backend, d, uc.case.kw)
    what = f"{backend} {layer} {pass_} {uc.id} {row.name}"
    for a, orig in zip(d, originals):
        np.testing.assert_array_equal(a, orig, err_msg=f"{what}: an input was modified")
    assert wide.dtype == np.float32 and out.dtype == dtype, what
    assert wide.shape == out.shape == expected.shape, what
    err32 = rel_err(wide, expected)
    assert err32 <= row.out_tol, f"{what} float32 result: rel err {err32:.3g}"
    if backend != "reference":   # (the oracle rounds its float64 sums once, not twice)
        # the stored result is the float32 result rounded to nearest even, bit for bit
        np.testing.assert_array_equal(out.view(np.uint16),
                                      wide.astype(dtype).view(np.uint16),
                                      err_msg=f"{what}: not the float32 result rounded")
    err = rel_err(out, expected)
    assert err <= row.tol, f"{what}: rel err {err:.3g} > {row.tol:g}"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layer", ["conv2d", *LAYER_NAMES])
@pytest.mark.parametrize("dtype", REDUCED, ids=REDUCED_IDS)
def test_full_backward_fused_pass(dtype, layer, backend):
    """All three gradients in one call (local2d: the fused input+weight pass) equal the passes
    one at a time, in both result dtypes."""
    _takes(backend, dtype)
    uc = _case(backend, UNTIED_BY_ID["batch13"])
    d = _inputs(layer, uc, dtype, seed=2)
    bwd = getattr(sf, layer + "_backward")
    for out_dtype in (None, np.float32):
        g = bwd(d.dy, d.x, d.w, backend=backend, out_dtype=out_dtype, **uc.case.kw)
        for pass_, got in zip(PASSES[1:], g):
            one = layer_call(layer, pass_, backend, d, uc.case.kw, out_dtype=out_dtype)
            assert got.dtype == one.dtype == (out_dtype or dtype)
            np.testing.assert_array_equal(got, one, err_msg=f"{backend} {layer} {pass_}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layer", ["conv2d", *LAYER_NAMES])
@pytest.mark.parametrize("dtype", REDUCED, ids=REDUCED_IDS)
def test_master_gradient_buffers(dtype, layer, backend, rng):
    """grad_weight / grad_bias in float32 for reduced weights (master weights): added into in
    float32, no rounding; in the storage dtype: the float32 sum rounded once."""
    _takes(backend, dtype)
    uc = _case(backend, UNTIED_BY_ID["alexnet_s4_k11"])
    d = _inputs(layer, uc, dtype, seed=3)
    bwd = getattr(sf, layer + "_backward")
    refs = {p: layer_reference(layer, p, d, uc.case.kw) for p in ("weight", "bias")}
    gw = rng.uniform(-1, 1, d.w.shape).astype(np.float32)
    gb = rng.uniform(-1, 1, d.b.shape).astype(np.float32)
    gw0, gb0 = gw.copy(), gb.copy()
    got = bwd(d.dy, d.x, d.w, needs=("weight", "bias"), grad_weight=gw, grad_bias=gb,
              backend=backend, **uc.case.kw)
    assert got.weight is gw and got.bias is gb
    for name, buf, buf0 in (("weight", gw, gw0), ("bias", gb, gb0)):
        expected = buf0.astype(np.float64) + refs[name]
        assert rel_err(buf, expected) <= 1e-5, f"{backend} {layer} float32 {name}"
    # reduced buffers: one rounding of the float32 sum
    rw = gw0.astype(dtype)
    got = bwd(d.dy, d.x, d.w, needs=("weight",), grad_weight=rw, backend=backend,
              **uc.case.kw)
    assert got.weight is rw
    expected = (gw0.astype(dtype).astype(np.float64) + refs["weight"])
    row = dtypes.lookup(dtype)
    assert rel_err(rw, expected) <= row.tol, f"{backend} {layer} {row.name} weight"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("grads", ["storage", "master", "mixed", "none"])
@pytest.mark.parametrize("dtype", REDUCED, ids=REDUCED_IDS)
def test_penalty_reduced(dtype, grads, backend, rng):
    _takes(backend, dtype)
    n = 70001 if backend not in SIMULATED else 3001     # several chunks and a ragged tail
    a = rng.standard_normal(n).astype(dtype)
    b = (a.astype(np.float32) + rng.standard_normal(n).astype(np.float32) * 0.1).astype(dtype)
    strength = 0.37
    d = a.astype(np.float64) - b.astype(np.float64)
    want = 0.5 * strength * np.sum(d * d)
    # (grad_a, grad_b) dtypes; "mixed": a float32 master gradient beside a 16-bit one
    gdts = {"storage": (dtype, dtype), "master": (np.float32, np.float32),
            "mixed": (dtype, np.float32), "none": None}[grads]
    row = dtypes.lookup(dtype)
    ga = gb = None
    if gdts is not None:
        ga0 = rng.standard_normal(n).astype(gdts[0])
        gb0 = rng.standard_normal(n).astype(gdts[1])
        ga, gb = ga0.copy(), gb0.copy()
    p = sf.soft_sharing_penalty(a, b, strength, grad_a=ga, grad_b=gb, backend=backend)
    assert abs(p - want) <= 1e-9 * want, f"{backend}: penalty {p} != {want}"
    if gdts is None:
        return
    for buf, buf0, sign, gdt in ((ga, ga0, 1, gdts[0]), (gb, gb0, -1, gdts[1])):
        tol = 1e-6 if gdt == np.float32 else row.tol
        expected = buf0.astype(np.float64) + sign * strength * d
        assert buf.dtype == gdt
        assert rel_err(buf, expected) <= tol, f"{backend} {grads}"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layer", ["conv2d", *LAYER_NAMES])
def test_reduced_non_contiguous_inputs(layer, backend):
    _takes(backend, BF16)
    uc = _case(backend, UNTIED_BY_ID["pad1_3x3"])
    d = _inputs(layer, uc, BF16, seed=5)
    f = getattr(sf, layer)
    x = np.asfortranarray(d.x)
    w = np.swapaxes(np.swapaxes(d.w, -1, -2).copy(), -1, -2)    # same values, strided
    assert not x.flags.c_contiguous and not w.flags.c_contiguous
    np.testing.assert_array_equal(f(x, w, d.b, backend=backend, **uc.case.kw),
                                  f(d.x, d.w, d.b, backend=backend, **uc.case.kw))


# ------------------------------------------------------------- the conversions themselves
@njit
def _narrow_all(src, dst):
    for i in range(src.size):
        dst[i] = narrow(src[i], dst)


@njit
def _widen_all(src, dst):
    for i in range(src.size):
        dst[i] = widen(src[i])


@pytest.mark.parametrize("dtype", REDUCED, ids=REDUCED_IDS)
def test_rounding_is_ml_dtypes_bit_for_bit(dtype, rng):
    """float32 -> bf16/f16 rounding (nearest even; NaN stays NaN, overflow to inf, subnormals)
    and the widening back agree with ml_dtypes / NumPy on every special case and on ties."""
    view = dtypes.lookup(dtype).view
    special = np.array([np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-40, -1e-45, 3.4e38,
                        -3.39e38, 65504.0, 65520.0, 1.0 + 2.0**-8, 1.0 + 3 * 2.0**-8,
                        1.0 + 2.0**-11, 1.0 + 3 * 2.0**-11, 6e-8, 2.0**-24], np.float32)
    # ties: float32 values exactly halfway between two neighbours of the storage type
    ties = (rng.integers(0, 2**15, 4096, dtype=np.uint32) << 16 | 0x8000).view(np.float32)
    bits = rng.integers(0, 2**32, 100000, dtype=np.uint64).astype(np.uint32)
    x = np.concatenate([special, ties, bits.view(np.float32)])
    got = np.empty(x.size, view)
    with np.errstate(over="ignore", invalid="ignore"):
        _narrow_all(x, got)
        want = x.astype(dtype)
    nan = np.isnan(x)
    np.testing.assert_array_equal(got[~nan], want.view(view)[~nan])
    assert np.all(np.isnan(got.view(dtype)[nan].astype(np.float32)))
    back = np.empty(x.size, np.float32)
    _widen_all(got, back)
    np.testing.assert_array_equal(back, got.view(dtype).astype(np.float32))


# conv2d's bfloat16 pairs kernels (vdpbf16ps, where config.DOT_BF16): shapes that reach each
# of their edges: odd C (a zero channel pair), odd R*S*C (a zero step), Q not a multiple of
# the vector (whole-vector reads past the row), odd Q (the weight gradient's zero position),
# stride 2 (the gathered forward, column pairs sw apart), K past one filter tile, groups.
PAIRS_CASES = [
    # N, C, H, W, K, R, S, stride, padding, dilation, groups
    (2, 3, 23, 23, 20, 5, 5, 2, 0, 1, 1),
    (2, 16, 17, 17, 16, 3, 3, 1, 1, 1, 1),
    (3, 5, 13, 21, 7, 3, 2, 1, 1, (2, 1), 1),
    (2, 8, 12, 40, 64, 3, 3, 1, 1, 1, 2),
    (1, 7, 11, 37, 9, 3, 3, 1, 0, 1, 1),
    (2, 4, 9, 9, 3, 3, 3, 2, 1, (2, 3), 1),
    (16, 6, 6, 6, 33, 1, 1, 1, 0, 1, 1),
]


def _conv2d_module():
    import sys
    import sharenet_fast.cpu  # noqa: F401  (the package's conv2d name is the host function)
    return sys.modules["sharenet_fast.cpu.conv2d"]


@pytest.mark.skipif("cpu" not in BACKENDS, reason="CPU backend only")
@pytest.mark.parametrize("case", PAIRS_CASES, ids=[f"pairs{i}" for i in range(len(PAIRS_CASES))])
def test_bf16_conv_pairs_kernels(case, monkeypatch):
    """Every conv2d pass in bfloat16 against the float64 oracle (float32 results, 1e-5) and
    against the widening path (the float32 kernels on widened copies) where the target has
    the pairs kernels; that they are the route taken is checked through the native flags."""
    N, C, H, W, K, R, S, stride, padding, dilation, groups = case
    kw = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    rng = np.random.default_rng(7)
    x = rng.standard_normal((N, C, H, W)).astype(BF16)
    w = rng.standard_normal((K, C // groups, R, S)).astype(BF16)
    b = rng.standard_normal(K).astype(BF16)
    y64 = sf.conv2d(*(a.astype(np.float64) for a in (x, w, b)), **kw)
    dy = rng.standard_normal(y64.shape).astype(BF16)
    g64 = sf.conv2d_backward(*(a.astype(np.float64) for a in (dy, x, w)), **kw)
    c2 = _conv2d_module()
    results = {}
    for native in ((True, False) if config.DOT_BF16 else (False,)):
        monkeypatch.setattr(c2, "DOT_BF16", native)
        y = sf.conv2d(x, w, b, backend="cpu", out_dtype=np.float32, **kw)
        g = sf.conv2d_backward(dy, x, w, backend="cpu", out_dtype=np.float32, **kw)
        for name, got, want in (("forward", y, y64), ("input", g.input, g64.input),
                                ("weight", g.weight, g64.weight), ("bias", g.bias, g64.bias)):
            assert got.dtype == np.float32
            assert rel_err(got, want) <= 1e-5, (name, native)
        results[native] = (y, g.input, g.weight)
        # the storage-dtype results: the float32 ones rounded
        yb = sf.conv2d(x, w, b, backend="cpu", **kw)
        assert yb.dtype == BF16
        np.testing.assert_array_equal(yb.view(np.uint16), y.astype(BF16).view(np.uint16))
    if config.DOT_BF16:
        monkeypatch.setattr(c2, "DOT_BF16", True)
        from sharenet_fast.geometry import ConvGeometry
        g = ConvGeometry.make(N, C, H, W, K, R, S, **kw)
        assert c2.native_forward(x, w, b, g, (1, 1))
        assert c2.native_input_grad(dy, w, g, (1, 1)) == (g.stride == (1, 1))
        assert c2.native_weight_grad(dy, x, g, (1, 1)) == (g.dilation[1] == 1)
        for new, old in zip(results[True], results[False]):
            assert rel_err(new, old.astype(np.float64)) <= 2e-6
