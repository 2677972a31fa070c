"""CuPy backend: the CUDA C kernels of kernels/ compiled at run time by NVRTC (cupy.RawModule),
launched with the host logic shared with the Numba CUDA backend (sharenet_fast/_gpu_host.py).

Host functions follow registry.py. They take CuPy arrays (returned as CuPy) or NumPy arrays
(copied to the device and back); the kernels run on CuPy's current stream. Status: compiled
and name-checked by NVRTC without a GPU (tests/test_cupy_backend.py); not yet run on a GPU.
"""
import numpy as np

from .. import _gpu_host as host
from .. import config
from .._device import host_io, kind
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
        import cupy

        return cupy.asarray(a)

    @staticmethod
    def flat(a):
        return a.reshape(a.size)

    @staticmethod
    def launch(name, dtype, tiles, grid, threads, like, *args, ksize=None):
        kernel = _loader.module().get_function(
            _loader.name(name, np.dtype(dtype).name, tiles, config.CUDA_BIAS_THREADS, ksize))
        # the kernels take every integer as long long; bools and Python ints become int64
        args = tuple(np.int64(a) if isinstance(a, (bool, int, np.bool_)) else a for a in args)
        grid = tuple(grid) if isinstance(grid, tuple) else (grid,)
        kernel(grid, (threads,), args)


DEV = _CupyDevice()


def _to_device(a):
    import cupy

    return cupy.asarray(a)


def _cupy_only(fn):
    """NumPy arrays are copied in and out; Numba device arrays are refused (use CuPy)."""
    wrapped = host_io(_to_device, lambda d: d.get(), lambda d, out: d.get(out=out))(fn)

    def checked(*args, **kwargs):
        if any(kind(a) == "numba" for a in args + (kwargs.get("out"),)):
            raise TypeError("the cupy backend takes CuPy or NumPy arrays, not Numba device "
                            "arrays (wrap them with cupy.asarray, or use backend='numba-cuda')")
        return wrapped(*args, **kwargs)
    checked.__name__, checked.__doc__ = fn.__name__, fn.__doc__
    return checked


@_cupy_only
def conv2d(x, weight, bias, g):
    return host.forward(DEV, x, weight, bias, g, (1, 1))


@_cupy_only
def conv2d_input_grad(dy, weight, g):
    return host.input_grad(DEV, dy, weight, g, (1, 1))


@_cupy_only
def conv2d_weight_grad(dy, x, g, out=None, deterministic=False):
    return host.weight_grad(DEV, dy, x, g, (1, 1), g.w_shape, out, deterministic)


@_cupy_only
def conv2d_bias_grad(dy, out=None):
    return host.bias_grad(DEV, dy, (1, 1), (dy.shape[1],), out)


@_cupy_only
def tiled_conv2d(x, weight, bias, g):
    return host.forward(DEV, x, weight, bias, g, weight.shape[:2])


@_cupy_only
def tiled_conv2d_input_grad(dy, weight, g):
    return host.input_grad(DEV, dy, weight, g, weight.shape[:2])


@_cupy_only
def tiled_conv2d_weight_grad(dy, x, g, tile, out=None, deterministic=False):
    return host.weight_grad(DEV, dy, x, g, tuple(tile), tuple(tile) + g.w_shape, out,
                            deterministic)


@_cupy_only
def tiled_conv2d_bias_grad(dy, tile, out=None):
    return host.bias_grad(DEV, dy, tuple(tile), tuple(tile) + (dy.shape[1],), out)


@_cupy_only
def local2d(x, weight, bias, g):
    return host.forward(DEV, x, weight, bias, g, (g.P, g.Q))


@_cupy_only
def local2d_input_grad(dy, weight, g):
    return host.input_grad(DEV, dy, weight, g, (g.P, g.Q))


@_cupy_only
def local2d_weight_grad(dy, x, g, out=None, deterministic=False):
    return host.weight_grad(DEV, dy, x, g, (g.P, g.Q), (g.P, g.Q) + g.w_shape, out,
                            deterministic)


@_cupy_only
def local2d_bias_grad(dy, out=None):
    return host.bias_grad(DEV, dy, dy.shape[2:], dy.shape[2:] + (dy.shape[1],), out)
