"""The float64 oracle behind the backend interface: each op-table layer's oracle functions with
the backends' signatures (optable.py), results cast to the input dtype (or out_dtype).

Every storage dtype: the oracle reads reduced (bfloat16/float16) inputs exactly, sums in float64
and rounds once; an out= buffer gets its sum in float64, rounded once into its dtype."""
import numpy as np

from . import dtypes
from . import reference as ref
from .optable import LAYERS

KINDS = ("numpy",)
GROUPS = True          # every layer takes ConvGeometry.groups (docs/design.md)
DTYPES = dtypes.NAMES


def _kw(g):
    # "same" when the geometry has its odd extra end row/column: the oracle resolves it again
    padding = "same" if g.extra != (0, 0) else g.padding
    return dict(stride=g.stride, padding=padding, dilation=g.dilation, groups=g.groups)


def _into(result, out, dtype):
    if out is None:
        return np.ascontiguousarray(result, dtype=dtype)  # C order, like every backend
    out[...] = (out.astype(np.float64) + result).astype(out.dtype)
    return out


def _layer(spec):
    """(forward, input_grad, weight_grad, bias_grad) of one layer on its oracle."""
    def forward(x, weight, bias, g, grid, out_dtype=None):
        return _into(spec.reference("forward", x, weight, bias, **_kw(g)), None,
                     out_dtype or x.dtype)

    def input_grad(dy, weight, g, grid, out_dtype=None):
        return _into(spec.reference("input", g.x_shape, weight, None, dy, **_kw(g)), None,
                     out_dtype or dy.dtype)

    def weight_grad(dy, x, g, grid, out=None, deterministic=False, out_dtype=None):
        dw = spec.reference("weight", x, spec.weight_shape(g, grid), None, dy, **_kw(g))
        return _into(dw, out, out_dtype or x.dtype)

    def bias_grad(dy, g, grid, out=None, out_dtype=None):
        db = spec.reference("bias", None, spec.weight_shape(g, grid), None, dy)
        return _into(db, out, out_dtype or dy.dtype)
    return forward, input_grad, weight_grad, bias_grad


conv2d, conv2d_input_grad, conv2d_weight_grad, conv2d_bias_grad = _layer(LAYERS["conv2d"])
tiled_conv2d, tiled_conv2d_input_grad, tiled_conv2d_weight_grad, tiled_conv2d_bias_grad = \
    _layer(LAYERS["tiled_conv2d"])
local2d, local2d_input_grad, local2d_weight_grad, local2d_bias_grad = _layer(LAYERS["local2d"])


def soft_sharing_penalty(a, b, strength, grad_a=None, grad_b=None):
    penalty, da, db = ref.soft_sharing_penalty(a, b, strength)
    for out, d in ((grad_a, da), (grad_b, db)):
        if out is not None:
            _into(d, out, out.dtype)
    return penalty


def neighbour_penalty(weight, strength, metric, neighbourhood, wrap, grad_weight=None):
    penalty, d = ref.neighbour_penalty(weight, strength, metric, neighbourhood, wrap)
    if grad_weight is not None:
        _into(d, grad_weight, grad_weight.dtype)
    return penalty


def average_banks(weight, groups_of, out):
    out[...] = ref.average_banks(weight, groups_of).astype(out.dtype)
    return out
