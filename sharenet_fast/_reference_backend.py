"""The float64 oracle behind the backend interface: results cast to the input dtype."""
import numpy as np

from . import reference as ref


def _kw(g):
    return dict(stride=g.stride, padding=g.padding, dilation=g.dilation)


def _into(result, out, dtype):
    if out is None:
        return np.ascontiguousarray(result, dtype=dtype)  # C order, like every backend
    out += result.astype(dtype)
    return out


def conv2d(x, weight, bias, g):
    return ref.conv2d(x, weight, bias, **_kw(g)).astype(x.dtype)


def conv2d_input_grad(dy, weight, g):
    return ref.conv2d_input_grad(dy, g.x_shape, weight, **_kw(g)).astype(dy.dtype)


def conv2d_weight_grad(dy, x, g, out=None, deterministic=False):
    return _into(ref.conv2d_weight_grad(dy, x, g.w_shape, **_kw(g)), out, x.dtype)


def conv2d_bias_grad(dy, out=None):
    return _into(ref.conv2d_bias_grad(dy), out, dy.dtype)


def local2d(x, weight, bias, g):
    return ref.local2d(x, weight, bias, **_kw(g)).astype(x.dtype)


def local2d_input_grad(dy, weight, g):
    return ref.local2d_input_grad(dy, g.x_shape, weight, **_kw(g)).astype(dy.dtype)


def local2d_weight_grad(dy, x, g, out=None, deterministic=False):
    w_shape = (g.P, g.Q) + g.w_shape
    return _into(ref.local2d_weight_grad(dy, x, w_shape, **_kw(g)), out, x.dtype)


def local2d_bias_grad(dy, out=None):
    return _into(ref.local2d_bias_grad(dy), out, dy.dtype)


def tiled_conv2d(x, weight, bias, g):
    return ref.tiled_conv2d(x, weight, bias, **_kw(g)).astype(x.dtype)


def tiled_conv2d_input_grad(dy, weight, g):
    return ref.tiled_conv2d_input_grad(dy, g.x_shape, weight, **_kw(g)).astype(dy.dtype)


def tiled_conv2d_weight_grad(dy, x, g, tile, out=None, deterministic=False):
    w_shape = tuple(tile) + g.w_shape
    return _into(ref.tiled_conv2d_weight_grad(dy, x, w_shape, **_kw(g)), out, x.dtype)


def tiled_conv2d_bias_grad(dy, tile, out=None):
    return _into(ref.tiled_conv2d_bias_grad(dy, tile), out, dy.dtype)


def soft_sharing_penalty(a, b, strength, grad_a=None, grad_b=None):
    penalty, da, db = ref.soft_sharing_penalty(a, b, strength)
    for out, d in ((grad_a, da), (grad_b, db)):
        if out is not None:
            out += d.astype(out.dtype)
    return penalty
