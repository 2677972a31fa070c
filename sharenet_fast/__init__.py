"""sharenet_fast: fast kernels for parameter sharing in convolutional layers.

See docs/design.md for the contract. Public API:
    conv2d, conv2d_backward                 shared weights: one bank (K, C, R, S)
    tiled_conv2d, tiled_conv2d_backward     a TP x TQ grid of banks (TP, TQ, K, C, R, S)
    local2d, local2d_backward               one bank per output position (P, Q, K, C, R, S)
    soft_sharing_penalty                    strength/2 * ||a - b||^2, gradients added in place
    neighbour_penalty                       each bank near its grid neighbours (l2 or cosine)
    average_banks                           banks set to their mean over blocks of positions
    Grads, param_count, ParamCount, backends, layers (the op table), ConvGeometry
"""
from .api import (Grads, average_banks, backends, conv2d, conv2d_backward, local2d,
                  local2d_backward, neighbour_penalty, param_count, soft_sharing_penalty,
                  tiled_conv2d, tiled_conv2d_backward)
from .geometry import ConvGeometry, ParamCount
from .optable import layers

__version__ = "0.3.0"

__all__ = ["conv2d", "conv2d_backward", "local2d", "local2d_backward", "tiled_conv2d",
           "tiled_conv2d_backward", "soft_sharing_penalty", "neighbour_penalty", "average_banks",
           "Grads", "param_count", "ParamCount", "backends", "layers", "ConvGeometry", "__version__"]
