"""CPU backend: Numba @njit(parallel=True) kernels; the host functions the op table names
(optable.py), exported for dispatch.

Every storage dtype of dtypes.py: local2d and the penalty read bfloat16/float16 in their kernels
(their weights are the traffic); the shared conv's bfloat16 passes run kernels of their own on
AVX512_BF16 targets (conv2d.py, vdpbf16ps); everything else runs on float32 copies of reduced
arrays (_precision.adapted).
"""
from .. import dtypes
from . import conv2d as _conv2d
from . import tiled as _tiled
from ._precision import adapted
from .local2d import (local2d, local2d_bias_grad, local2d_input_grad, local2d_input_weight_grad,
                      local2d_weight_grad)
from .sharing import average_banks, neighbour_penalty, soft_sharing_penalty

conv2d = adapted(_conv2d.conv2d, _conv2d.native_forward)
conv2d_input_grad = adapted(_conv2d.conv2d_input_grad, _conv2d.native_input_grad)
conv2d_weight_grad = adapted(_conv2d.conv2d_weight_grad, _conv2d.native_weight_grad)
conv2d_bias_grad = adapted(_conv2d.conv2d_bias_grad)
tiled_conv2d = adapted(_tiled.tiled_conv2d, _tiled.native_forward)
tiled_conv2d_input_grad = adapted(_tiled.tiled_conv2d_input_grad, _tiled.native_input_grad)
tiled_conv2d_weight_grad = adapted(_tiled.tiled_conv2d_weight_grad)
tiled_conv2d_bias_grad = adapted(_tiled.tiled_conv2d_bias_grad)

KINDS = ("numpy",)
GROUPS = True          # every layer takes ConvGeometry.groups (docs/design.md)
DTYPES = dtypes.NAMES

__all__ = ["conv2d", "conv2d_input_grad", "conv2d_weight_grad", "conv2d_bias_grad",
           "local2d", "local2d_input_grad", "local2d_weight_grad", "local2d_bias_grad",
           "local2d_input_weight_grad",
           "tiled_conv2d", "tiled_conv2d_input_grad", "tiled_conv2d_weight_grad",
           "tiled_conv2d_bias_grad", "soft_sharing_penalty", "neighbour_penalty", "average_banks"]
