"""Public API: validation and dispatch only, no arithmetic.

Every check runs before any kernel: a bad call raises ValueError/TypeError naming the argument
and the shapes involved, and never reaches a kernel.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from . import registry
from .geometry import ConvGeometry

DTYPES = (np.float32, np.float64)
NEEDS = ("input", "weight", "bias")


class Grads(NamedTuple):
    input: object
    weight: object
    bias: object


def _array(name, a, ndim, dtype=None):
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(a).__name__}")
    if a.dtype not in DTYPES:
        raise TypeError(f"{name} must be float32 or float64, got dtype {a.dtype}")
    if dtype is not None and a.dtype != dtype:
        raise TypeError(f"{name} has dtype {a.dtype} but x has dtype {dtype}: mixed dtypes")
    if a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {a.shape}")
    if 0 in a.shape:
        raise ValueError(f"{name} must have no empty dimension, got shape {a.shape}")
    return a


def _backend(name):
    if not isinstance(name, str):
        raise TypeError(f"backend must be a str, got {type(name).__name__}")
    if name == "auto":
        name = "cpu"  # NumPy arrays run on the CPU; CuPy dispatch arrives with the GPU backends
    return registry.get(name)


def _geometry(x, weight, stride, padding, dilation):
    N, C, H, W = x.shape
    K, Cw, R, S = weight.shape
    if Cw != C:
        raise ValueError(f"channel mismatch: x has C={C} channels (shape {x.shape}) but weight "
                         f"expects C={Cw} (shape {weight.shape})")
    return ConvGeometry.make(N, C, H, W, K, R, S, stride, padding, dilation)


def _contig(a):
    return np.ascontiguousarray(a)


def conv2d(x, weight, bias=None, *, stride=1, padding=0, dilation=1, backend="auto"):
    """Shared-weight 2D convolution (cross-correlation, zero padding), NCHW.

    x (N, C, H, W), weight (K, C, R, S), bias (K,) or None -> y (N, K, P, Q), dtype of x.
    """
    _array("x", x, 4)
    _array("weight", weight, 4, x.dtype)
    g = _geometry(x, weight, stride, padding, dilation)
    if bias is not None:
        _array("bias", bias, 1, x.dtype)
        if bias.shape != (g.K,):
            raise ValueError(f"bias must have shape (K,) = ({g.K},), got {bias.shape}")
    be = _backend(backend)
    return be.conv2d(_contig(x), _contig(weight), None if bias is None else _contig(bias), g)


def _check_accumulator(name, buf, shape, dtype):
    if buf is None:
        return
    if not isinstance(buf, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(buf).__name__}")
    if buf.dtype != dtype:
        raise TypeError(f"{name} has dtype {buf.dtype} but x has dtype {dtype}: mixed dtypes")
    if buf.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {buf.shape}")
    if not buf.flags.writeable:
        raise ValueError(f"{name} is read-only; it is accumulated into in place")


def conv2d_backward(grad_out, x, weight, *, stride=1, padding=0, dilation=1,
                    needs=NEEDS, deterministic=False, grad_weight=None, grad_bias=None,
                    backend="auto"):
    """Gradients of conv2d: Grads(input, weight, bias); an entry not in `needs` is None.

    grad_weight / grad_bias, when given, are added into in place and returned (hard sharing:
    a weight used at several call sites gets the sum of their gradients).
    deterministic=True asks for a weight gradient with the same bits on every run.
    """
    _array("x", x, 4)
    _array("weight", weight, 4, x.dtype)
    _array("grad_out", grad_out, 4, x.dtype)
    g = _geometry(x, weight, stride, padding, dilation)
    if grad_out.shape != g.y_shape:
        raise ValueError(f"grad_out must have the output shape (N, K, P, Q) = {g.y_shape} for "
                         f"x {x.shape} and weight {weight.shape}, got {grad_out.shape}")
    if isinstance(needs, str):
        needs = (needs,)
    try:
        needs = tuple(needs)
    except TypeError:
        raise TypeError(f"needs must be a sequence of names from {NEEDS}, got {needs!r}") from None
    bad = [n for n in needs if n not in NEEDS]
    if bad:
        raise ValueError(f"needs must name only {NEEDS}, got {bad!r}")
    if not isinstance(deterministic, (bool, np.bool_)):
        raise TypeError(f"deterministic must be a bool, got {deterministic!r}")
    _check_accumulator("grad_weight", grad_weight, g.w_shape, x.dtype)
    _check_accumulator("grad_bias", grad_bias, (g.K,), x.dtype)
    be = _backend(backend)

    dy = _contig(grad_out)
    dx = dw = db = None
    if "input" in needs:
        dx = be.conv2d_input_grad(dy, _contig(weight), g)
    if "weight" in needs:
        dw = _accumulate(grad_weight, lambda out: be.conv2d_weight_grad(
            dy, _contig(x), g, out=out, deterministic=bool(deterministic)))
    if "bias" in needs:
        db = _accumulate(grad_bias, lambda out: be.conv2d_bias_grad(dy, out=out))
    return Grads(dx, dw, db)


def _accumulate(buf, compute):
    """Run compute(out) so the result lands in `buf` (added) or in a fresh array (buf None).

    Kernels accumulate only into C-contiguous buffers; any other layout gets the sum through a
    temporary, so a strided grad_weight view is still added into, never silently replaced.
    """
    if buf is None:
        return compute(None)
    if buf.flags.c_contiguous:
        return compute(buf)
    buf += compute(None)
    return buf


def param_count(sharing, input_shape, filters, kernel, *, stride=1, padding=0, dilation=1,
                tile=None, bias=True):
    """ParamCount(neurons, weights_per_neuron, params, bytes) for shared, tiled or local."""
    from .geometry import param_count as _pc

    return _pc(sharing, input_shape, filters, kernel, stride=stride, padding=padding,
               dilation=dilation, tile=tile, bias=bias)


backends = registry.backends
