"""Numba CUDA backend: @cuda.jit kernels (built lazily: importing needs no GPU).

Host functions follow the interface in registry.py. They take device arrays (CuPy or Numba) and
return the same kind; NumPy arrays are copied to the device and back (_device.on_device), which
is also how the kernels run under NUMBA_ENABLE_CUDASIM=1. All three layers run on the banked
kernels of conv2d.py with their tile: shared = 1 x 1, tiled = (TP, TQ), local = (P, Q).
"""
from .conv2d import conv2d, conv2d_bias_grad, conv2d_input_grad, conv2d_weight_grad
from .local2d import local2d, local2d_bias_grad, local2d_input_grad, local2d_weight_grad
from .tiled import (tiled_conv2d, tiled_conv2d_bias_grad, tiled_conv2d_input_grad,
                    tiled_conv2d_weight_grad)



def unavailable():
    """None if the kernels can run here (a CUDA GPU, or the simulator), else the reason."""
    try:
        from numba import cuda
    except ImportError as exc:
        return f"numba.cuda does not import ({exc}); pip install 'sharenet_fast[cuda]'"
    from .. import config

    if config.CUDASIM:
        return None
    try:
        if cuda.is_available():
            return None
    except Exception as exc:  # pragma: no cover - depends on the driver
        return f"CUDA driver error: {type(exc).__name__}: {exc}"
    return ("no CUDA GPU found (numba.cuda.is_available() is False); "
            "NUMBA_ENABLE_CUDASIM=1 runs these kernels on Numba's simulator")


__all__ = ["conv2d", "conv2d_input_grad", "conv2d_weight_grad", "conv2d_bias_grad",
           "local2d", "local2d_input_grad", "local2d_weight_grad", "local2d_bias_grad",
           "tiled_conv2d", "tiled_conv2d_input_grad", "tiled_conv2d_weight_grad",
           "tiled_conv2d_bias_grad"]
