"""Registry-driven correctness: every available backend x op x dtype x shape vs the float64 oracle.

Also: accumulation into poisoned (random) grad_weight / grad_bias buffers, strided accumulators,
non-contiguous inputs, `needs` subsets, and a NaN-poisoned allocator for the CPU host launchers.
"""
import importlib

import numpy as np
import pytest

import sharenet_fast as sf
from _support import (BACKENDS, DTYPE_IDS, DTYPES, OP_NAMES, OPS, SHAPE_IDS, SHAPES,
                      SHAPES_BY_ID, assert_close, make_inputs, random_array, reference_all, tol)


def test_registry_lists_available_backends():
    status = sf.backends()
    assert status["cpu"] == "available"
    assert status["reference"] == "available"
    assert set(BACKENDS) == {n for n, s in status.items() if s == "available"}
    for name, why in status.items():
        assert isinstance(why, str) and why, name


# ------------------------------------------------------------------------- the main table
@pytest.mark.parametrize("case", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("op", OP_NAMES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.sim_kernel_table
def test_op_matches_reference(backend, op, dtype, case):
    d = make_inputs(case, dtype)
    originals = [a.copy() for a in d]
    expected = OPS[op].ref(d, case.kw)
    out = OPS[op].api(backend, d, case.kw)
    for a, orig in zip(d, originals):
        np.testing.assert_array_equal(a, orig, err_msg="an input was modified")
    assert isinstance(out, np.ndarray)
    assert out.dtype == np.dtype(dtype), f"output dtype {out.dtype} != input dtype"
    assert out.shape == expected.shape
    expected_shape = {"forward": case.y_shape, "input": case.x_shape,
                      "weight": case.w_shape, "bias": (case.K,)}[op]
    assert out.shape == expected_shape
    assert_close(out, expected, dtype, f"{backend} {op} {case.id}")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_forward_without_bias_and_full_backward(backend, dtype):
    case = SHAPES_BY_ID["nonsquare_all"]
    d = make_inputs(case, dtype, seed=1)
    ref = reference_all(d, case.kw)
    y = sf.conv2d(d.x, d.w, backend=backend, **case.kw)
    assert_close(y, sf.reference.conv2d(d.x, d.w, None, **case.kw), dtype, "forward, no bias")
    g = sf.conv2d_backward(d.dy, d.x, d.w, backend=backend, **case.kw)
    assert isinstance(g, sf.Grads)
    for name, out in zip(("input", "weight", "bias"), g):
        assert out.dtype == np.dtype(dtype)
        assert_close(out, ref[name], dtype, name)


def test_auto_backend_is_cpu_for_numpy():
    case = SHAPES_BY_ID["pad1_3x3"]
    d = make_inputs(case, np.float32)
    np.testing.assert_array_equal(sf.conv2d(d.x, d.w, d.b, **case.kw),
                                  sf.conv2d(d.x, d.w, d.b, backend="cpu", **case.kw))


# ------------------------------------------------------------- poisoned / strided accumulators
ACC_SHAPES = ["alexnet_s4_k11", "nonsquare_all", "K7_Q5_tails", "K1", "wgrad_chunks"]


@pytest.mark.parametrize("case_id", ACC_SHAPES)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.sim_one_case
def test_accumulates_into_poisoned_buffers(backend, dtype, case_id, rng):
    case = SHAPES_BY_ID[case_id]
    d = make_inputs(case, dtype)
    ref = reference_all(d, case.kw)
    init_w = random_array(rng, case.w_shape, dtype) * 10
    init_b = random_array(rng, (case.K,), dtype) * 10
    gw, gb = init_w.copy(), init_b.copy()
    g = sf.conv2d_backward(d.dy, d.x, d.w, needs=("weight", "bias"), grad_weight=gw,
                           grad_bias=gb, backend=backend, **case.kw)
    assert g.input is None
    assert g.weight is gw and g.bias is gb, "the given accumulators must be returned"
    assert gw.dtype == np.dtype(dtype) and gb.dtype == np.dtype(dtype)
    assert_close(gw, init_w.astype(np.float64) + ref["weight"], dtype, "grad_weight")
    assert_close(gb, init_b.astype(np.float64) + ref["bias"], dtype, "grad_bias")

    # hard sharing: a second call site adds again
    g2 = sf.conv2d_backward(d.dy, d.x, d.w, needs=("weight", "bias"), grad_weight=gw,
                            grad_bias=gb, backend=backend, **case.kw)
    assert g2.weight is gw and g2.bias is gb
    assert_close(gw, init_w.astype(np.float64) + 2 * ref["weight"], dtype, "grad_weight x2")
    assert_close(gb, init_b.astype(np.float64) + 2 * ref["bias"], dtype, "grad_bias x2")


def _strided_views(case, dtype, rng):
    """Non-C-contiguous accumulators: a strided slice and a transposed-back (F-order) view."""
    big = random_array(rng, (case.K, case.C, case.R, 2 * case.S), dtype)
    sliced = big[..., ::2]
    fortran = np.asfortranarray(random_array(rng, case.w_shape, dtype))
    transposed = random_array(rng, case.w_shape[::-1], dtype).transpose(3, 2, 1, 0)
    big_b = random_array(rng, (3 * case.K,), dtype)
    return big, sliced, fortran, transposed, big_b


@pytest.mark.parametrize("case_id", ["alexnet_s4_k11", "nonsquare_all", "pad1_3x3"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_accumulates_into_non_contiguous_views(backend, dtype, case_id, rng):
    case = SHAPES_BY_ID[case_id]
    d = make_inputs(case, dtype)
    ref = reference_all(d, case.kw)
    big, sliced, fortran, transposed, big_b = _strided_views(case, dtype, rng)
    big0, big_b0 = big.copy(), big_b.copy()
    bias_view = big_b[1::3]
    for view in (sliced, fortran, transposed):
        assert not view.flags.c_contiguous
        init = view.astype(np.float64)
        init_b = bias_view.astype(np.float64)
        g = sf.conv2d_backward(d.dy, d.x, d.w, needs=("weight", "bias"), grad_weight=view,
                               grad_bias=bias_view, backend=backend, **case.kw)
        assert g.weight is view and g.bias is bias_view
        assert_close(view, init + ref["weight"], dtype, "strided grad_weight")
        assert_close(bias_view, init_b + ref["bias"], dtype, "strided grad_bias")
    # the parents' elements outside the views are untouched
    np.testing.assert_array_equal(big[..., 1::2], big0[..., 1::2])
    np.testing.assert_array_equal(big_b[0::3], big_b0[0::3])
    np.testing.assert_array_equal(big_b[2::3], big_b0[2::3])


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_accumulator_is_a_contiguous_slice_of_a_bigger_array(backend, dtype, rng):
    """grad_weight = big[1] (C-contiguous view with an offset): only big[1] changes."""
    case = SHAPES_BY_ID["K7_Q5_tails"]
    d = make_inputs(case, dtype)
    ref = reference_all(d, case.kw)
    big = random_array(rng, (3,) + case.w_shape, dtype)
    big0 = big.copy()
    view = big[1]
    assert view.flags.c_contiguous and view.base is not None
    g = sf.conv2d_backward(d.dy, d.x, d.w, needs=("weight",), grad_weight=view,
                           backend=backend, **case.kw)
    assert g.weight is view
    assert_close(big[1], big0[1].astype(np.float64) + ref["weight"], dtype, "big[1]")
    np.testing.assert_array_equal(big[0], big0[0])
    np.testing.assert_array_equal(big[2], big0[2])


class _NanEmptyNumpy:
    """numpy, except that empty() returns NaN-filled arrays: an unwritten element stays NaN."""

    def __getattr__(self, name):
        return getattr(np, name)

    @staticmethod
    def empty(shape, dtype=float, order="C", **kw):
        return np.full(shape, np.nan, dtype=dtype, order=order)


@pytest.fixture
def nan_empty_cpu(monkeypatch, dtype, case):
    """Replace `np` in the CPU launcher module so its host-side np.empty allocations (outputs and
    the weight-gradient partials) start as NaN. The test's own case runs once beforehand, so
    every kernel it picks is compiled (or loaded from the cache) before the stand-in is in place:
    Numba never types a kernel's `np` global as the stand-in (inside kernels np.empty is
    compiled code and is not affected)."""
    # importlib, not `import ... as`: sharenet_fast.cpu.conv2d is also the name of a function
    cpu_conv2d = importlib.import_module("sharenet_fast.cpu.conv2d")

    d = make_inputs(case, dtype)  # warm up: the kernels (which depend on the shape) of this case
    sf.conv2d(d.x, d.w, d.b, backend="cpu", **case.kw)
    sf.conv2d_backward(d.dy, d.x, d.w, backend="cpu", **case.kw)
    calls = []

    class Spy(_NanEmptyNumpy):
        @staticmethod
        def empty(shape, dtype=float, order="C", **kw):
            calls.append(shape)
            return _NanEmptyNumpy.empty(shape, dtype, order, **kw)

    monkeypatch.setattr(cpu_conv2d, "np", Spy())
    return calls


@pytest.mark.skipif("cpu" not in BACKENDS, reason="cpu backend not available")
@pytest.mark.parametrize("case", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_cpu_writes_every_element_of_nan_poisoned_outputs(nan_empty_cpu, dtype, case):
    d = make_inputs(case, dtype, seed=2)
    ref = reference_all(d, case.kw)
    y = sf.conv2d(d.x, d.w, d.b, backend="cpu", **case.kw)
    g = sf.conv2d_backward(d.dy, d.x, d.w, backend="cpu", **case.kw)
    assert nan_empty_cpu, "the NaN allocator was not used: the test no longer poisons anything"
    for name, out in zip(OP_NAMES, (y, g.input, g.weight, g.bias)):
        assert not np.isnan(out).any(), f"{name}: {np.isnan(out).sum()} elements never written"
        assert_close(out, ref[name], dtype, name)


# --------------------------------------------------------------------- non-contiguous inputs
def _non_contiguous(a, kind, rng):
    """The same values as `a` in a non-C-contiguous array of the given kind."""
    if kind == "transposed" and a.ndim == 1:  # a 1-D transpose is a no-op: use a strided view
        kind = "strided"
    if kind == "transposed":  # stored in reversed axis order, viewed back
        out = np.ascontiguousarray(a.transpose(tuple(reversed(range(a.ndim))))).transpose(
            tuple(reversed(range(a.ndim))))
    elif kind == "strided":   # every other element of a bigger array along the last axis
        big = random_array(rng, a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
        big[..., ::2] = a
        out = big[..., ::2]
    elif kind == "reversed":  # negative strides
        out = np.ascontiguousarray(a[..., ::-1])[..., ::-1]
    else:
        raise ValueError(kind)
    np.testing.assert_array_equal(out, a)
    assert not out.flags.c_contiguous
    return out


@pytest.mark.parametrize("kind", ["transposed", "strided", "reversed"])
@pytest.mark.parametrize("case_id", ["alexnet_s4_k11", "nonsquare_all", "K7_Q5_tails"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.sim_one_case
def test_non_contiguous_inputs(backend, dtype, case_id, kind, rng):
    case = SHAPES_BY_ID[case_id]
    d = make_inputs(case, dtype, seed=3)
    ref = reference_all(d, case.kw)
    x, w, b, dy = (_non_contiguous(a, kind, rng) for a in d)
    y = sf.conv2d(x, w, b, backend=backend, **case.kw)
    g = sf.conv2d_backward(dy, x, w, backend=backend, **case.kw)
    # same values as the contiguous inputs give, and correct
    y_c = sf.conv2d(d.x, d.w, d.b, backend=backend, **case.kw)
    g_c = sf.conv2d_backward(d.dy, d.x, d.w, backend=backend, **case.kw)
    for name, out, out_c in zip(OP_NAMES, (y, *g), (y_c, *g_c)):
        assert out.dtype == np.dtype(dtype)
        assert_close(out, ref[name], dtype, f"{name} ({kind} inputs)")
        assert_close(out, out_c, dtype, f"{name} ({kind} vs contiguous inputs)")
    # inputs are not modified
    for a, orig in zip((x, w, b, dy), d):
        np.testing.assert_array_equal(a, orig)


@pytest.mark.parametrize("backend", BACKENDS)
def test_read_only_inputs(backend):
    """Read-only inputs (np.load(mmap_mode="r"), broadcast results...) work: kernels only read
    them. float64 only: read-only arrays are new Numba signatures, and each one compiles."""
    case = SHAPES_BY_ID["nonsquare_all"]
    d = make_inputs(case, np.float64, seed=4)
    ref = reference_all(d, case.kw)
    for a in d:
        a.setflags(write=False)
    y = sf.conv2d(d.x, d.w, d.b, backend=backend, **case.kw)
    g = sf.conv2d_backward(d.dy, d.x, d.w, backend=backend, **case.kw)
    for name, out in zip(OP_NAMES, (y, *g)):
        assert out.flags.writeable, f"{name}: the result should be a fresh, writeable array"
        assert_close(out, ref[name], np.float64, f"{name} (read-only inputs)")


# ------------------------------------------------------------------------------ needs subsets
NEEDS_CASES = [
    (("weight",), (False, True, False)),
    (("input",), (True, False, False)),
    ("bias", (False, False, True)),
    (["input", "bias"], (True, False, True)),
    (("weight", "input"), (True, True, False)),
    ((), (False, False, False)),
    (("input", "weight", "bias"), (True, True, True)),
]


@pytest.mark.parametrize("needs,present", NEEDS_CASES, ids=[repr(n) for n, _ in NEEDS_CASES])
@pytest.mark.parametrize("backend", BACKENDS)
def test_needs_subsets(backend, needs, present):
    case = SHAPES_BY_ID["pad1_3x3"]
    dtype = np.float64
    d = make_inputs(case, dtype)
    ref = reference_all(d, case.kw)
    g = sf.conv2d_backward(d.dy, d.x, d.w, needs=needs, backend=backend, **case.kw)
    assert isinstance(g, sf.Grads) and len(g) == 3
    assert g._fields == ("input", "weight", "bias")
    for name, out, want in zip(("input", "weight", "bias"), g, present):
        if want:
            assert isinstance(out, np.ndarray), name
            assert_close(out, ref[name], dtype, name)
        else:
            assert out is None, f"{name} not in needs={needs!r} but returned"


@pytest.mark.parametrize("backend", BACKENDS)
def test_accumulator_untouched_when_not_needed(backend, rng):
    case = SHAPES_BY_ID["pad1_3x3"]
    d = make_inputs(case, np.float64)
    gw = random_array(rng, case.w_shape)
    gb = random_array(rng, (case.K,))
    gw0, gb0 = gw.copy(), gb.copy()
    g = sf.conv2d_backward(d.dy, d.x, d.w, needs=("input",), grad_weight=gw, grad_bias=gb,
                           backend=backend, **case.kw)
    assert g.weight is None and g.bias is None
    np.testing.assert_array_equal(gw, gw0)
    np.testing.assert_array_equal(gb, gb0)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_error_measure_rejects_what_it_must(dtype, rng):
    """The one error measure (sharenet_fast.dtypes) behind every check: a result off by twice
    the dtype's bound fails it, half the bound passes, an unwritten (NaN-poisoned) element or
    a wrong shape can never pass."""
    from sharenet_fast import dtypes

    ref = random_array(rng, (5, 7))
    noise = random_array(rng, ref.shape)
    noise *= np.linalg.norm(ref) / np.linalg.norm(noise)        # ||noise|| = ||ref||
    assert dtypes.rel_err(ref + 2 * tol(dtype) * noise, ref) > tol(dtype)
    assert dtypes.rel_err(ref + 0.5 * tol(dtype) * noise, ref) <= tol(dtype)
    poisoned = ref.copy()
    poisoned[2, 3] = np.nan
    assert dtypes.rel_err(poisoned, ref) == float("inf")
    with pytest.raises(ValueError, match="shape"):
        dtypes.rel_err(ref[:, :6], ref)
