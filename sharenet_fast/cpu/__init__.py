"""CPU backend: Numba @njit(parallel=True) kernels. Host functions re-exported for dispatch."""
from .conv2d import conv2d, conv2d_bias_grad, conv2d_input_grad, conv2d_weight_grad

__all__ = ["conv2d", "conv2d_input_grad", "conv2d_weight_grad", "conv2d_bias_grad"]
