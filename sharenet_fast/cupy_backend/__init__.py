"""CuPy backend: the CUDA C kernels of kernels/ compiled at run time by NVRTC (cupy.RawModule),
launched with the host logic shared with the Numba CUDA backend (sharenet_fast/_gpu_host.py).

Host functions follow registry.py (_gpu_host.layer_ops on this backend's DEV). They take CuPy
arrays (returned as CuPy) or NumPy arrays (copied to the device and back); the kernels run on
CuPy's current stream. Status: compiled by NVRTC (tests/test_cupy_backend.py) and run by a g++
emulation (tests/test_cupy_emulated.py) without a GPU; not yet run on a GPU.
"""
import functools

import numpy as np

from .. import _gpu_host as host
from .. import config
from .._device import flat, host_io, kind
from . import _loader


def unavailable():
    """None if CuPy can run kernels here, else the reason."""
    try:
        import cupy
    except ImportError as exc:
        return f"cupy does not import ({exc}); pip install 'sharenet_fast[cupy]'"
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        return f"no CUDA GPU for CuPy ({type(exc).__name__}: {exc})"
    if n < 1:
        return "no CUDA GPU for CuPy (device count 0)"
    return None


def _to_device(a):
    import cupy

    return cupy.asarray(a)


class _CupyDevice:
    """The `dev` of _gpu_host for CuPy: RawModule kernels, CuPy arrays, the current stream."""

    @staticmethod
    def empty(like, shape, dtype):
        import cupy

        return cupy.empty(shape, dtype=dtype)

    @staticmethod
    def zeros(like, shape, dtype):
        import cupy

        return cupy.zeros(shape, dtype=dtype)

    @staticmethod
    def to_device_like(like, a):
        return _to_device(a)

    flat = staticmethod(flat)

    @staticmethod
    def launch(name, dtype, tiles, grid, threads, like, *args, ksize=None):
        kernel = _loader.module().get_function(
            _loader.name(name, np.dtype(dtype).name, tiles, config.CUDA_BIAS_THREADS, ksize))
        # the kernels take every integer as long long; bools and Python ints become int64
        args = tuple(np.int64(a) if isinstance(a, (bool, int, np.bool_)) else a for a in args)
        grid = tuple(grid) if isinstance(grid, tuple) else (grid,)
        kernel(grid, (threads,), args)


DEV = _CupyDevice()


def _cupy_only(fn):
    """NumPy arrays are copied in and out; Numba device arrays are refused (use CuPy)."""
    wrapped = host_io(_to_device, lambda d: d.get(), lambda d, out: d.get(out=out))(fn)

    @functools.wraps(fn)
    def checked(*args, **kwargs):
        if any(kind(a) == "numba" for a in args + tuple(kwargs.values())):
            raise TypeError("the cupy backend takes CuPy or NumPy arrays, not Numba device "
                            "arrays (wrap them with cupy.asarray, or use backend='numba-cuda')")
        return wrapped(*args, **kwargs)
    return checked


globals().update({name: _cupy_only(fn) for name, fn in host.layer_ops(DEV).items()})
__all__ = list(host.OPS)
