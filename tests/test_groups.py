"""groups= on every layer: each pass against the float64 oracle (which is itself checked against
PyTorch's grouped conv in test_golden.py), on every backend with grouped kernels, every dtype;
the block-diagonal identity; bad input; backends without grouped kernels refuse."""
import ml_dtypes
import numpy as np
import pytest

import sharenet_fast as sf
from _support import (BACKENDS, PASSES, Case, UntiedCase, assert_close, layer_reference,
                      make_layer_inputs)
from sharenet_fast import dtypes, reference

# Kernel paths a group meets: groups 2-4 (CPU shared/tiled: per-group slices; local: the group
# segments of the patch, MR tiles cut at a group's end, a split reduction's zero rows), depthwise
# with and without a channel multiplier (its own kernels), strides, dilations, "same", batch
# tails (the local forward's batch columns: 5 and 9 split the reduction, 16 takes whole vectors),
# and S*C/G filling vectors (the shared weight gradient's in-place form).
GROUPED_CASES = [
    UntiedCase(Case("g2_pad1", 2, 4, 9, 8, 6, 3, 3, padding=1, groups=2), (2, 2)),
    UntiedCase(Case("g3_stride2", 3, 6, 10, 9, 9, 3, 2, stride=2, groups=3), (2, 3)),
    UntiedCase(Case("g4_dil_Kg1", 5, 8, 9, 9, 4, 3, 3, padding=2, dilation=2, groups=4),
               (3, 2)),
    UntiedCase(Case("g2_batch16", 16, 4, 6, 7, 8, 3, 3, padding=1, groups=2), (2, 1)),
    UntiedCase(Case("g2_wgrad_inplace", 2, 32, 8, 8, 10, 3, 2, groups=2), (2, 2)),
    UntiedCase(Case("depthwise", 2, 4, 9, 10, 4, 3, 3, padding=1, groups=4), (2, 2)),
    UntiedCase(Case("depthwise_m2_s2", 2, 3, 11, 11, 6, 3, 3, stride=2, padding=1, groups=3),
               (2, 3)),
    UntiedCase(Case("depthwise_same_dil", 1, 2, 7, 8, 2, 2, 3, padding="same",
                    dilation=(2, 1), groups=2), (3, 2)),
    UntiedCase(Case("depthwise_s1x2_b9", 9, 5, 8, 9, 5, 3, 3, stride=(1, 2), padding=(0, 1),
                    groups=5), (1, 2)),
    # stride 2 with an even width: the phase split's pairwise de-interleave, both parities of
    # the column padding
    UntiedCase(Case("depthwise_s2_even_w", 2, 4, 10, 12, 4, 3, 3, stride=2, padding=(1, 0),
                    groups=4), (2, 2)),
    UntiedCase(Case("depthwise_s2_even_w_pad1", 1, 2, 9, 8, 4, 3, 2, stride=2, padding=1,
                    dilation=(1, 3), groups=2), (1, 1)),
    # the phase split's general stride (3 column phases) and a 5-wide kernel (a 3-tap pass and
    # two single taps per row)
    UntiedCase(Case("depthwise_s3_k5", 2, 2, 13, 14, 4, 3, 5, stride=3, padding=2,
                    groups=2), (1, 1)),
]
GROUPED_IDS = [uc.case.id for uc in GROUPED_CASES]
LAYERS = ["conv2d", "tiled_conv2d", "local2d"]
GROUPED_BACKENDS = [b for b in BACKENDS if getattr(sf.registry.get(b), "GROUPS", False)]
REFUSING = [b for b in BACKENDS if b not in GROUPED_BACKENDS]
# the reference backend is the oracle itself: its grouped passes are checked against PyTorch
# (test_golden.py), not against themselves here
KERNEL_BACKENDS = [b for b in GROUPED_BACKENDS if b != "reference"]
DTYPE_PARAMS = [pytest.param(np.float32, id="f32"), pytest.param(np.float64, id="f64")]
# 16-bit storage: every group path once (the widening and rounding are the ungrouped code's)
HALF_CASES = [GROUPED_CASES[i] for i in (0, 2, 5, 6)]


def _inputs(layer, uc, dtype, seed=0):
    d = make_layer_inputs(layer, uc, np.float64, seed)
    return type(d)(*(a.astype(dtype) for a in d))


def _ok(backend, dtype):
    return dtypes.lookup(dtype).name in sf.registry.get(backend).DTYPES


@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
@pytest.mark.parametrize("uc", GROUPED_CASES, ids=GROUPED_IDS)
@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.sim_kernel_table
def test_grouped_passes_match_oracle(backend, layer, uc, dtype):
    _check_passes(backend, layer, uc, dtype)


@pytest.mark.parametrize("dtype", [ml_dtypes.bfloat16, np.float16], ids=["bf16", "f16"])
@pytest.mark.parametrize("uc", HALF_CASES, ids=lambda u: u.id)
@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.sim_kernel_table
def test_grouped_16_bit_passes_match_oracle(backend, layer, uc, dtype):
    _check_passes(backend, layer, uc, dtype)


def _check_passes(backend, layer, uc, dtype):
    """The forward, and the three gradients from one backward call (the fused pass where a
    backend has one), each against the oracle."""
    if not _ok(backend, dtype):
        pytest.skip(f"{backend} has no {np.dtype(dtype).name} kernels")
    if backend == "numba-cuda" and sf.config.CUDASIM:
        # One banked kernel per pass serves all three layers (the grid is the only difference,
        # and the ungrouped tables cover it), and the group index math does not depend on the
        # dtype: on the simulator (~20 us per multiply-add) the shared and tiled layers run in
        # float32 and bfloat16, the local one its smallest case. A GPU runs them all.
        if np.dtype(dtype).itemsize != 4 and np.dtype(dtype) != np.dtype(ml_dtypes.bfloat16):
            pytest.skip("CUDA simulator: float32 and bfloat16 cover the grouped kernels "
                        "(every dtype runs on a GPU)")
        if layer == "local2d" and (uc.case.id != "depthwise_same_dil" or dtype != np.float32):
            pytest.skip("CUDA simulator: the grouped local layer runs its smallest case (the "
                        "same kernels as the shared and tiled ones; every case runs on a GPU)")
    d = _inputs(layer, uc, dtype)
    kw = uc.case.kw
    got = {"forward": getattr(sf, layer)(d.x, d.w, d.b, backend=backend, **kw),
           **getattr(sf, layer + "_backward")(d.dy, d.x, d.w, backend=backend, **kw)._asdict()}
    for pass_ in PASSES:
        assert got[pass_].dtype == np.dtype(dtype), pass_
        assert_close(got[pass_], layer_reference(layer, pass_, d, kw), dtype,
                     f"{layer} {pass_} groups={uc.case.groups}")


@pytest.mark.parametrize("uc", GROUPED_CASES[:6:2] + GROUPED_CASES[5:7], ids=lambda u: u.id)
@pytest.mark.parametrize("layer", LAYERS)
def test_grouped_layer_is_the_block_diagonal_ungrouped_layer(layer, uc):
    """Two computations through the CPU kernels, no oracle: the grouped layer and the ungrouped
    one whose weight has zeros outside each filter's group (reference.ungroup)."""
    d = _inputs(layer, uc, np.float64)
    kw = uc.case.kw
    full = reference.ungroup(d.w, uc.case.groups)
    plain = {k: v for k, v in kw.items() if k != "groups"}
    y = getattr(sf, layer)(d.x, d.w, d.b, backend="cpu", **kw)
    np.testing.assert_allclose(y, getattr(sf, layer)(d.x, full, d.b, backend="cpu", **plain),
                               rtol=1e-12, atol=1e-12)
    g = getattr(sf, layer + "_backward")(d.dy, d.x, d.w, backend="cpu", **kw)
    gf = getattr(sf, layer + "_backward")(d.dy, d.x, full, backend="cpu", **plain)
    np.testing.assert_allclose(g.input, gf.input, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(g.weight, reference.regroup(gf.weight, uc.case.groups),
                               rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(g.bias, gf.bias)


@pytest.mark.parametrize("uc", [GROUPED_CASES[i] for i in (0, 2, 5, 6, 9, 10)],
                         ids=lambda u: u.id)
@pytest.mark.parametrize("layer", LAYERS)
def test_grouped_cpu_writes_every_element_of_nan_poisoned_outputs(layer, uc, monkeypatch):
    """Every result array the CPU backend allocates (np.empty in its modules) starts as NaN:
    the per-group slices, the depthwise planes and phases must cover every element."""
    from test_untied import check_nan_poisoned
    check_nan_poisoned(layer, _inputs(layer, uc, np.float64), uc.case.kw, monkeypatch)


@pytest.mark.parametrize("uc", [GROUPED_CASES[0], GROUPED_CASES[6]], ids=lambda u: u.id)
@pytest.mark.parametrize("layer", LAYERS)
def test_grouped_gradients_accumulate_and_fuse(layer, uc):
    """grad_weight= is added into (a poisoned-free random buffer), the fused local pass equals
    the separate ones bitwise, and the result is the same on a second call."""
    d = _inputs(layer, uc, np.float32)
    kw, bwd = uc.case.kw, getattr(sf, layer + "_backward")
    acc = np.random.default_rng(1).standard_normal(d.w.shape).astype(np.float32)
    start = acc.copy()
    both = bwd(d.dy, d.x, d.w, backend="cpu", grad_weight=acc, **kw)
    assert both.weight is acc
    alone = bwd(d.dy, d.x, d.w, backend="cpu", needs=("weight",), **kw).weight
    np.testing.assert_allclose(acc, start + alone, rtol=1e-6, atol=1e-6)
    dx = bwd(d.dy, d.x, d.w, backend="cpu", needs=("input",), **kw).input
    np.testing.assert_array_equal(both.input, dx)
    again = bwd(d.dy, d.x, d.w, backend="cpu", needs=("weight",), **kw).weight
    np.testing.assert_array_equal(again, alone)


@pytest.mark.parametrize("layer", LAYERS)
def test_groups_1_is_the_default_bitwise(layer):
    uc = UntiedCase(Case("plain", 3, 4, 9, 8, 6, 3, 3, padding=1), (2, 2))
    d = _inputs(layer, uc, np.float32)
    kw = uc.case.kw
    f, bwd = getattr(sf, layer), getattr(sf, layer + "_backward")
    np.testing.assert_array_equal(f(d.x, d.w, d.b, **kw), f(d.x, d.w, d.b, groups=1, **kw))
    for a, b in zip(bwd(d.dy, d.x, d.w, **kw), bwd(d.dy, d.x, d.w, groups=1, **kw)):
        np.testing.assert_array_equal(a, b)


def _grouped_args(layer, C=4, K=6, G=2):
    uc = UntiedCase(Case("bad", 2, C, 8, 8, K, 3, 3, padding=1, groups=G), (2, 2))
    return _inputs(layer, uc, np.float32)


@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("groups, exc, words", [
    (0, ValueError, "groups must be >= 1"), (-2, ValueError, "groups must be >= 1"),
    (3, ValueError, "groups=3 must divide"), (1.0, TypeError, "groups must be an int"),
    (True, TypeError, "groups must be an int"), ("2", TypeError, "groups must be an int"),
    (4, ValueError, "groups=4 must divide"), (1, ValueError, "channel mismatch")])
def test_bad_groups_is_a_clear_error(layer, groups, exc, words):
    d = _grouped_args(layer)             # weight made for groups=2: (..., 6, 2, 3, 3)
    for call in (lambda: getattr(sf, layer)(d.x, d.w, d.b, padding=1, groups=groups),
                 lambda: getattr(sf, layer + "_backward")(d.dy, d.x, d.w, padding=1,
                                                          groups=groups)):
        with pytest.raises(exc, match=words):
            call()


def test_groups_not_dividing_K_names_K():
    d = _grouped_args("conv2d", C=4, K=6, G=2)
    w = np.ones((5, 2, 3, 3), np.float32)
    with pytest.raises(ValueError, match="filters K=5"):
        sf.conv2d(d.x, w, padding=1, groups=2)


@pytest.mark.parametrize("backend", REFUSING or ["none"])
def test_backend_without_grouped_kernels_refuses(backend):
    if backend == "none":
        pytest.skip("every available backend has grouped kernels")
    d = _grouped_args("conv2d")
    with pytest.raises(TypeError, match="no grouped kernels yet.*'cpu'"):
        sf.conv2d(d.x, d.w, d.b, padding=1, groups=2, backend=backend)


def test_geometry_counts_the_grouped_work():
    g = sf.ConvGeometry.make(8, 32, 56, 56, 64, 3, 3, 1, 1, 1, groups=4)
    assert (g.Cg, g.Kg, g.w_shape, g.depthwise) == (8, 16, (64, 8, 3, 3), False)
    assert g.macs == 8 * 64 * 56 * 56 * 8 * 9
    dw = sf.ConvGeometry.make(8, 32, 56, 56, 32, 3, 3, 1, 1, 1, groups=32)
    assert dw.depthwise and dw.w_shape == (32, 1, 3, 3)
    assert dw.min_bytes("forward") == 4 * (8 * 32 * 56 * 56 * 2 + 32 * 9)


def test_bench_groups_runs_on_small_shapes(monkeypatch, capsys):
    """python -m bench.groups end to end on small shapes: every row, each peer pair checked to
    compute the same layer first (the benchmark asserts it), % of floor printed."""
    pytest.importorskip("torch")
    from bench import groups
    monkeypatch.setattr(groups, "CONV_SHAPES", {"g2": (2, 4, 9, 9, 4, 3, 3, 1, 1, 2),
                                                "dw_s2": (2, 4, 9, 10, 8, 3, 3, 2, 1, 4)})
    monkeypatch.setattr(groups, "LOCAL_SHAPES", {"lc_g2": (2, 4, 7, 7, 4, 3, 3, 1, 1, 2)})
    assert groups.main(["--repeat", "1", "--read-mb", "8"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert len([r for r in rows if r.startswith(("| g2 ", "| dw_s2 "))]) == 4
    assert len([r for r in rows if r.startswith("| lc_g2 ")]) == 2
    assert all("%" in r for r in rows if r.startswith(("| g2", "| dw", "| lc")))
