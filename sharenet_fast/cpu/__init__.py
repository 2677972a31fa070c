"""CPU backend: Numba @njit(parallel=True) kernels; the host functions the op table names
(optable.py), exported for dispatch."""
from .conv2d import conv2d, conv2d_bias_grad, conv2d_input_grad, conv2d_weight_grad
from .local2d import (local2d, local2d_bias_grad, local2d_input_grad, local2d_input_weight_grad,
                      local2d_weight_grad)
from .sharing import soft_sharing_penalty
from .tiled import (tiled_conv2d, tiled_conv2d_bias_grad, tiled_conv2d_input_grad,
                    tiled_conv2d_weight_grad)

KINDS = ("numpy",)

__all__ = ["conv2d", "conv2d_input_grad", "conv2d_weight_grad", "conv2d_bias_grad",
           "local2d", "local2d_input_grad", "local2d_weight_grad", "local2d_bias_grad",
           "local2d_input_weight_grad",
           "tiled_conv2d", "tiled_conv2d_input_grad", "tiled_conv2d_weight_grad",
           "tiled_conv2d_bias_grad", "soft_sharing_penalty"]
