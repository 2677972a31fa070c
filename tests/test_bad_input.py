"""Bad input raises ValueError/TypeError naming the argument, before any kernel runs.

Every test here runs with the kernels of every available backend replaced by functions that raise
AssertionError, so a check that happens too late (inside or after a kernel) fails the test with
AssertionError instead of the expected exception.
"""
import importlib

import ml_dtypes
import numpy as np
import pytest

import sharenet_fast as sf
from _support import BACKENDS, UNAVAILABLE, random_array
from sharenet_fast import dtypes, registry

KERNEL_FUNCTIONS = tuple(f"{op}{suffix}" for op in ("conv2d", "local2d", "tiled_conv2d")
                         for suffix in ("", "_input_grad", "_weight_grad", "_bias_grad",
                                        "_input_weight_grad"))


@pytest.fixture(autouse=True)
def kernels_must_not_run(monkeypatch):
    def make(backend, fn):
        def boom(*args, **kwargs):
            raise AssertionError(f"kernel {backend}.{fn} ran on bad input")
        return boom

    for name in BACKENDS:
        module = importlib.import_module(registry.BACKENDS[name][0])
        for fn in KERNEL_FUNCTIONS:
            # raising=False: a backend without a fused input+weight pass gets the guard too
            monkeypatch.setattr(module, fn, make(name, fn), raising=False)


def test_kernel_guard_is_active():
    """The autouse fixture really intercepts a valid call (else the tests below prove nothing)."""
    x, w, dy = _good()
    for backend in BACKENDS:
        with pytest.raises(AssertionError, match="ran on bad input"):
            sf.conv2d(x, w, backend=backend)
        with pytest.raises(AssertionError, match="ran on bad input"):
            sf.conv2d_backward(dy, x, w, backend=backend)
        for layer, wl, bl in ((sf.local2d, WL, BL), (sf.tiled_conv2d, WT, BT)):
            with pytest.raises(AssertionError, match="ran on bad input"):
                layer(x, wl, bl, backend=backend)
        for layer, wl in ((sf.local2d_backward, WL), (sf.tiled_conv2d_backward, WT)):
            with pytest.raises(AssertionError, match="ran on bad input"):
                layer(dy, x, wl, backend=backend)


def _good(dtype=np.float32):
    """x (2, 3, 8, 8), weight (4, 3, 3, 3), grad_out (2, 4, 6, 6)."""
    rng = np.random.default_rng(3)
    return (random_array(rng, (2, 3, 8, 8), dtype), random_array(rng, (4, 3, 3, 3), dtype),
            random_array(rng, (2, 4, 6, 6), dtype))


def fwd(fn=sf.conv2d, **over):
    """A call of the forward `fn` on the good inputs with `over` replacing arguments."""
    x, w, _ = _good()
    args = dict(x=x, weight=w, bias=None)
    args.update(over)

    def call(backend):
        a = dict(args)
        return fn(a.pop("x"), a.pop("weight"), a.pop("bias"), backend=backend, **a)
    return call


def bwd(fn=sf.conv2d_backward, **over):
    """A call of the backward `fn` on the good inputs with `over` replacing arguments."""
    x, w, dy = _good()
    args = dict(grad_out=dy, x=x, weight=w)
    args.update(over)

    def call(backend):
        a = dict(args)
        return fn(a.pop("grad_out"), a.pop("x"), a.pop("weight"), backend=backend, **a)
    return call


def _readonly(a):
    a = a.copy()
    a.setflags(write=False)
    return a


f32 = np.float32
BF16 = ml_dtypes.bfloat16
X = _good()[0]
W = _good()[1]
DY = _good()[2]

# id: (call builder, exception, regex the message must match: it names the argument)
BAD = {
    "x_3d": (fwd(x=X[0]), ValueError, r"\bx must be 4-D.*\(3, 8, 8\)"),
    "x_3d_backward": (bwd(x=X[0]), ValueError, r"\bx must be 4-D"),
    "weight_5d": (fwd(weight=W[None]), ValueError, r"weight must be 4-D.*\(1, 4, 3, 3, 3\)"),
    "grad_out_3d": (bwd(grad_out=DY[0]), ValueError, r"grad_out must be 4-D"),
    "channel_mismatch": (fwd(weight=W[:, :2]), ValueError,
                         r"channel.*x.*\(2, 3, 8, 8\).*weight.*\(4, 2, 3, 3\)"),
    "channel_mismatch_backward": (bwd(weight=W[:, :2]), ValueError, r"channel.*x.*weight"),
    "bias_wrong_shape": (fwd(bias=np.ones(5, f32)), ValueError, r"bias must have shape.*\(5,\)"),
    "bias_2d": (fwd(bias=np.ones((4, 1), f32)), ValueError, r"bias must be 1-D"),
    "grad_out_wrong_shape": (bwd(grad_out=DY[:, :, :5]), ValueError,
                             r"grad_out must have the output shape.*\(2, 4, 6, 6\).*\(2, 4, 5, 6\)"),
    "grad_out_wrong_K": (bwd(grad_out=DY[:, :3]), ValueError, r"grad_out"),
    "stride_zero": (fwd(stride=0), ValueError, r"stride must be positive"),
    "stride_negative_pair": (bwd(stride=(1, -2)), ValueError, r"stride must be positive"),
    "dilation_zero": (fwd(dilation=0), ValueError, r"dilation must be positive"),
    "dilation_negative_pair": (bwd(dilation=(-1, 1)), ValueError, r"dilation must be positive"),
    "padding_negative": (fwd(padding=-1), ValueError, r"padding must be non-negative"),
    "padding_negative_pair": (bwd(padding=(0, -1)), ValueError, r"padding must be non-negative"),
    "output_size_lt_1": (fwd(weight=random_array(np.random.default_rng(0), (4, 3, 9, 3), f32)),
                         ValueError, r"output size.*kernel"),
    "output_size_lt_1_dilated": (bwd(dilation=4), ValueError, r"output size.*dilation"),
    "output_size_lt_1_stride_pad_ok": (fwd(weight=random_array(np.random.default_rng(0),
                                                               (4, 3, 11, 11), f32), padding=1),
                                       ValueError, r"output size"),
    "mixed_dtypes_weight": (fwd(weight=W.astype(np.float64)), TypeError,
                            r"weight has dtype float64 but x has dtype float32"),
    "mixed_dtypes_bias": (fwd(bias=np.ones(4)), TypeError, r"bias has dtype float64"),
    "mixed_dtypes_grad_out": (bwd(grad_out=DY.astype(np.float64)), TypeError,
                              r"grad_out has dtype float64"),
    "x_int64": (fwd(x=np.ones((2, 3, 8, 8), np.int64)), TypeError, r"\bx must be float32, "
                                                                   r"float64, bfloat16 or "
                                                                   r"float16.*int64"),
    "weight_float16": (fwd(weight=W.astype(np.float16)), TypeError,
                       r"weight has dtype float16 but x has dtype float32: mixed"),
    # reduced-precision storage: one storage dtype per call, float32 only as a master buffer
    "mixed_storage_bf16_f16": (fwd(x=X.astype(BF16), weight=W.astype(np.float16)), TypeError,
                               r"weight has dtype float16 but x has dtype bfloat16"),
    "bias_f32_for_bf16": (fwd(x=X.astype(BF16), weight=W.astype(BF16), bias=np.ones(4, f32)),
                          TypeError, r"bias has dtype float32 but x has dtype bfloat16"),
    "grad_out_f32_for_bf16": (bwd(x=X.astype(BF16), weight=W.astype(BF16)), TypeError,
                              r"grad_out has dtype float32 but x has dtype bfloat16"),
    "grad_weight_f64_for_bf16": (bwd(x=X.astype(BF16), weight=W.astype(BF16),
                                     grad_out=DY.astype(BF16),
                                     grad_weight=np.zeros((4, 3, 3, 3))), TypeError,
                                 r"grad_weight has dtype float64.*must be bfloat16 \(or "
                                 r"float32: master weights\)"),
    "grad_weight_f32_for_f16_wrong_shape": (bwd(x=X.astype(np.float16),
                                                weight=W.astype(np.float16),
                                                grad_out=DY.astype(np.float16),
                                                grad_weight=np.zeros((4, 3, 3, 2), f32)),
                                            ValueError, r"grad_weight must have shape"),
    "out_dtype_f64_for_bf16": (fwd(x=X.astype(BF16), weight=W.astype(BF16),
                                   out_dtype=np.float64), TypeError,
                               r"out_dtype must be None, bfloat16 or float32 for bfloat16"),
    "out_dtype_f32_for_f64": (fwd(x=X.astype(np.float64), weight=W.astype(np.float64),
                                  out_dtype=f32), TypeError, r"out_dtype.*float64 inputs"),
    "out_dtype_not_a_dtype": (bwd(x=X.astype(BF16), weight=W.astype(BF16),
                                  grad_out=DY.astype(BF16), out_dtype="floaty"),
                              TypeError, r"out_dtype must be a dtype"),
    "x_uint16": (fwd(x=X.view(np.uint16)[..., ::2].copy(), weight=W.view(np.uint16)[..., :3]),
                 TypeError, r"\bx must be .*uint16"),
    "grad_out_int32": (bwd(grad_out=DY.astype(np.int32)), TypeError, r"grad_out must be float"),
    "x_list": (fwd(x=X.tolist()), TypeError, r"\bx must be a numpy.ndarray.*list"),
    "weight_list_backward": (bwd(weight=W.tolist()), TypeError, r"weight must be a numpy"),
    "bias_list": (fwd(bias=[1.0, 2.0, 3.0, 4.0]), TypeError, r"bias must be a numpy"),
    "stride_string": (fwd(stride="2"), TypeError, r"stride must be an int or a pair"),
    "stride_3_tuple": (fwd(stride=(1, 1, 1)), TypeError, r"stride must be an int or a pair"),
    "stride_float": (bwd(stride=1.0), TypeError, r"stride must be an int or a pair"),
    "padding_word": (fwd(padding="full"), ValueError, r"padding must be .*'valid' or 'same'"),
    "padding_same_strided": (fwd(padding="same", stride=2), ValueError,
                             r"padding='same' needs stride 1"),
    "padding_list": (fwd(padding=[1, 2, 3]), TypeError, r"padding must be an int or a pair"),
    "dilation_bool": (fwd(dilation=True), TypeError, r"dilation must be an int or a pair"),
    # integers past the kernels' index range: a ValueError naming them, not an overflow in a
    # kernel call ("Int value is too large")
    "stride_2_pow_70": (fwd(stride=2**70), ValueError, r"stride must be at most 2147483647"),
    "stride_pair_huge": (bwd(stride=(1, 2**40)), ValueError, r"stride must be at most"),
    "padding_huge": (fwd(padding=2**31), ValueError, r"padding must be at most"),
    "padding_past_index_range": (fwd(padding=2**30), ValueError,
                                 r"padding \(1073741824, 1073741824\) takes the padded input"),
    "dilation_huge": (bwd(dilation=(2**64, 1)), ValueError, r"dilation must be at most"),
    "needs_bad_entry": (bwd(needs=("input", "weights")), ValueError, r"needs.*'weights'"),
    "needs_bad_string": (bwd(needs="grad"), ValueError, r"needs.*'grad'"),
    "needs_not_iterable": (bwd(needs=3), TypeError, r"needs"),
    "deterministic_not_bool": (bwd(deterministic="yes"), TypeError, r"deterministic"),
    "grad_weight_wrong_shape": (bwd(grad_weight=np.zeros((4, 3, 3, 2), f32)), ValueError,
                                r"grad_weight must have shape \(4, 3, 3, 3\)"),
    "grad_weight_wrong_dtype": (bwd(grad_weight=np.zeros((4, 3, 3, 3))), TypeError,
                                r"grad_weight has dtype float64"),
    "grad_weight_read_only": (bwd(grad_weight=_readonly(np.zeros((4, 3, 3, 3), f32))),
                              ValueError, r"grad_weight is read-only"),
    "grad_weight_list": (bwd(grad_weight=np.zeros((4, 3, 3, 3)).tolist()), TypeError,
                         r"grad_weight must be a numpy"),
    "grad_bias_wrong_shape": (bwd(grad_bias=np.zeros(3, f32)), ValueError,
                              r"grad_bias must have shape \(4,\)"),
    "grad_bias_wrong_dtype": (bwd(grad_bias=np.zeros(4)), TypeError, r"grad_bias has dtype"),
    "grad_bias_read_only": (bwd(grad_bias=_readonly(np.zeros(4, f32))), ValueError,
                            r"grad_bias is read-only"),
    "x_empty_N0": (fwd(x=np.ones((0, 3, 8, 8), f32)), ValueError,
                   r"\bx must have no empty dimension.*\(0, 3, 8, 8\)"),
    "weight_empty_K0": (fwd(weight=np.ones((0, 3, 3, 3), f32)), ValueError,
                        r"weight must have no empty dimension"),
    "x_empty_N0_backward": (bwd(x=np.ones((0, 3, 8, 8), f32)), ValueError,
                            r"\bx must have no empty dimension"),
}


# ------------------------------------------------------------------ local2d and tiled_conv2d
# x (2, 3, 8, 8) and 3x3 filters give a 6x6 output: local weight (6, 6, 4, 3, 3, 3).
_rng = np.random.default_rng(4)
WL = random_array(_rng, (6, 6, 4, 3, 3, 3), f32)
BL = random_array(_rng, (6, 6, 4), f32)
WT = random_array(_rng, (2, 3, 4, 3, 3, 3), f32)
BT = random_array(_rng, (2, 3, 4), f32)


lf = lambda **o: fwd(sf.local2d, **{"weight": WL, **o})            # noqa: E731
lb = lambda **o: bwd(sf.local2d_backward, **{"weight": WL, **o})   # noqa: E731
tf = lambda **o: fwd(sf.tiled_conv2d, **{"weight": WT, **o})       # noqa: E731
tb = lambda **o: bwd(sf.tiled_conv2d_backward, **{"weight": WT, **o})  # noqa: E731

BAD.update({
    "local_weight_4d": (lf(weight=W), ValueError, r"weight must be 6-D.*\(4, 3, 3, 3\)"),
    "local_grid_does_not_match_output": (
        lf(weight=WL[:5]), ValueError,
        r"local2d weight.*grid \(5, 6\) does not match the output size \(P, Q\) = \(6, 6\)"),
    "local_grid_wrong_after_stride": (
        lf(stride=2), ValueError, r"grid \(6, 6\) does not match.*\(3, 3\)"),
    "local_grid_mismatch_backward": (lb(weight=WL[:, :4]), ValueError, r"grid \(6, 4\)"),
    "local_channel_mismatch": (lf(weight=WL[:, :, :, :2]), ValueError, r"channel.*x.*weight"),
    "local_bias_1d": (lf(bias=np.ones(4, f32)), ValueError, r"bias must be 3-D.*\(4,\)"),
    "local_bias_wrong_shape": (lf(bias=np.ones((6, 5, 4), f32)), ValueError,
                               r"bias must have shape \(P, Q, K\) = \(6, 6, 4\)"),
    "local_bias_shape_of_shared": (lf(bias=np.ones((1, 1, 4), f32)), ValueError,
                                   r"bias must have shape"),
    "local_mixed_dtypes": (lf(weight=WL.astype(np.float64)), TypeError,
                           r"weight has dtype float64 but x has dtype float32"),
    "local_x_3d": (lf(x=X[0]), ValueError, r"\bx must be 4-D"),
    "local_grad_out_wrong_shape": (lb(grad_out=DY[:, :, :5]), ValueError,
                                   r"grad_out must have the output shape"),
    "local_grad_weight_wrong_shape": (lb(grad_weight=np.zeros((4, 3, 3, 3), f32)), ValueError,
                                      r"grad_weight must have shape \(6, 6, 4, 3, 3, 3\)"),
    "local_grad_bias_wrong_shape": (lb(grad_bias=np.zeros(4, f32)), ValueError,
                                    r"grad_bias must have shape \(6, 6, 4\)"),
    "local_output_size_lt_1": (lf(dilation=5), ValueError, r"output size"),
    "local_stride_zero": (lb(stride=0), ValueError, r"stride must be positive"),
    "tiled_tile_larger_than_output": (
        tf(weight=random_array(_rng, (7, 1, 4, 3, 3, 3), f32)), ValueError,
        r"tile \(TP, TQ\) = \(7, 1\).*larger than the output \(P, Q\) = \(6, 6\)"),
    "tiled_tile_larger_after_stride": (tb(stride=3), ValueError,
                                       r"tile.*\(2, 3\).*larger than the output.*\(2, 2\)"),
    "tiled_weight_5d": (tf(weight=WT[0]), ValueError, r"weight must be 6-D"),
    "tiled_channel_mismatch": (tb(weight=WT[:, :, :, :2]), ValueError, r"channel"),
    "tiled_bias_wrong_shape": (tf(bias=np.ones((3, 2, 4), f32)), ValueError,
                               r"bias must have shape \(TP, TQ, K\) = \(2, 3, 4\)"),
    "tiled_grad_weight_wrong_shape": (tb(grad_weight=np.zeros((3, 2, 4, 3, 3, 3), f32)),
                                      ValueError, r"grad_weight must have shape \(2, 3, 4"),
    "tiled_grad_bias_wrong_dtype": (tb(grad_bias=np.zeros((2, 3, 4))), TypeError,
                                    r"grad_bias has dtype float64"),
    "tiled_weight_list": (tf(weight=WT.tolist()), TypeError, r"weight must be a numpy"),
    "tiled_needs_bad": (tb(needs=("weights",)), ValueError, r"needs"),
    "tiled_empty_K": (tf(weight=np.ones((2, 3, 0, 3, 3, 3), f32)), ValueError,
                      r"weight must have no empty dimension"),
})


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_bad_input_raises_naming_the_argument(case, backend):
    call, exc, match = BAD[case]
    with pytest.raises(exc, match=match):
        call(backend)


# --------------------------------------------------------------------------------- backends
@pytest.mark.parametrize("which", ["forward", "backward"])
def test_unknown_backend_is_a_value_error(which):
    call = fwd() if which == "forward" else bwd()
    with pytest.raises(ValueError, match=r"backend must be one of.*'no-such-backend'"):
        call("no-such-backend")


def test_backend_not_a_string_is_a_type_error():
    with pytest.raises(TypeError, match=r"backend must be a str"):
        fwd()(3)


@pytest.mark.parametrize("name", ["cupy", "numba-cuda"])
@pytest.mark.parametrize("which", ["forward", "backward"])
def test_unavailable_backend_is_a_runtime_error(which, name):
    if name not in UNAVAILABLE:
        pytest.skip(f"{name} is available on this machine")
    call = fwd() if which == "forward" else bwd()
    with pytest.raises(RuntimeError, match=rf"{name}.*not available"):
        call(name)


@pytest.mark.parametrize("dtype", [BF16, np.float16], ids=["bf16", "f16"])
@pytest.mark.parametrize("which", ["forward", "backward", "penalty"])
def test_backend_without_reduced_kernels_is_a_type_error(which, dtype, monkeypatch):
    """A bfloat16/float16 array on a backend that has no kernels for it: TypeError naming the
    backend and the dtype, before any kernel runs (the fixture's guard). Every backend has
    them today, so each is also told it has none (its DTYPES: the refusal is data)."""
    lacking = [b for b in BACKENDS
               if np.dtype(dtype).name not in registry.get(b).DTYPES]
    if not lacking:
        for b in BACKENDS:
            monkeypatch.setattr(registry.get(b), "DTYPES", dtypes.FULL)
        lacking = list(BACKENDS)
    x, w, dy = (a.astype(dtype) for a in _good())
    for backend in lacking:
        with pytest.raises(TypeError, match=rf"backend '{backend}' has no "
                                            rf"{np.dtype(dtype).name} kernels"):
            if which == "forward":
                sf.conv2d(x, w, backend=backend)
            elif which == "backward":
                sf.local2d_backward(dy, x, np.ones((6, 6) + w.shape, dtype), backend=backend)
            else:
                sf.soft_sharing_penalty(w, w, 0.5, backend=backend)


def test_bad_input_is_reported_before_backend_lookup_errors_matter():
    """A bad argument is reported as such even with a valid but unavailable backend named."""
    if "cupy" not in UNAVAILABLE:
        pytest.skip("cupy is available")
    with pytest.raises(ValueError, match=r"stride must be positive"):
        fwd(stride=0)("cupy")
