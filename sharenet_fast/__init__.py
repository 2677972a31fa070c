"""sharenet_fast: fast kernels for parameter sharing in convolutional layers.

See DESIGN.md for the contract. Public API:
    conv2d, conv2d_backward, Grads, param_count, ParamCount, backends
"""
from .api import Grads, backends, conv2d, conv2d_backward, param_count
from .geometry import ConvGeometry, ParamCount

__version__ = "0.1.0"

__all__ = ["conv2d", "conv2d_backward", "Grads", "param_count", "ParamCount", "backends",
           "ConvGeometry", "__version__"]
