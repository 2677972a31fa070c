"""Numba CUDA backend: @cuda.jit kernels (built lazily: importing needs no GPU).

Host functions follow the interface in registry.py. They take device arrays (CuPy or Numba) and
return the same kind; NumPy arrays are copied to the device and back (_device.on_device), which
is also how the kernels run under NUMBA_ENABLE_CUDASIM=1. All three layers run on the banked
kernels of conv2d.py with their tile (shared = 1 x 1, tiled = (TP, TQ), local = (P, Q)),
through the host side shared with the cupy backend (_gpu_host.layer_ops).
"""
from .. import _gpu_host
from .._device import on_device
from .conv2d import DEV


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


globals().update({name: on_device(fn) for name, fn in _gpu_host.layer_ops(DEV).items()})
__all__ = list(_gpu_host.OPS)
