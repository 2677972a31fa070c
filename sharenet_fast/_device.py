"""Where an array lives, and moving arrays to a GPU backend and back.

Three kinds of array reach the API: NumPy (host), CuPy and Numba CUDA device arrays (the
latter also under NUMBA_ENABLE_CUDASIM=1, where they are host arrays in disguise). The kind is
read from the type's module, so this file imports neither CuPy nor numba.cuda: importing the
package never needs a GPU.
"""
import functools

import numpy as np

HOST = "numpy"


def kind(a):
    """"numpy", "cupy", "numba" or None (not an array we take)."""
    if isinstance(a, np.ndarray):
        return HOST
    module = type(a).__module__ or ""
    if module.split(".")[0] == "cupy":
        return "cupy"
    if module.startswith(("numba.cuda", "numba_cuda")) and hasattr(a, "copy_to_host"):
        return "numba"
    return None


def is_c_contiguous(a):
    if kind(a) == "numba":
        return a.is_c_contiguous()
    return a.flags.c_contiguous


def contiguous(a):
    """`a` itself if C-contiguous, else a contiguous copy of the same kind."""
    k = kind(a)
    if k == HOST:
        return np.ascontiguousarray(a)
    if k == "cupy":
        import cupy

        return cupy.ascontiguousarray(a)
    if not a.is_c_contiguous():  # Numba device arrays have no device-side reshuffle: the API
        raise ValueError(       # refuses them up front (api._array), this is a last guard
            f"a Numba device array must be C-contiguous, got strides {a.strides}")
    return a


def device_id(a):
    k = kind(a)
    if k == "cupy":
        return a.device.id
    return None


def host_io(to_device, to_host, copy_into):
    """A decorator letting a GPU backend's host function take NumPy arrays: copy them in, run,
    copy back. `to_device(a)`, `to_host(d)` and `copy_into(d, out)` are the backend's transfers.

    Device arrays pass through untouched. With NumPy arrays every array argument is copied to
    the device; results come back as NumPy; an `out=` accumulator is copied in, added into on
    the device and copied back into the caller's array, which is returned.
    """
    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(*args, out=None, **kwargs):
            if not any(kind(a) == HOST for a in args + (out,)):
                if out is not None:
                    kwargs["out"] = out
                return fn(*args, **kwargs)
            dargs = tuple(to_device(a) if kind(a) == HOST else a for a in args)
            dout = None if out is None else to_device(out)
            if dout is not None:
                kwargs["out"] = dout
            result = fn(*dargs, **kwargs)

            def back(r):
                if r is None:
                    return None
                if dout is not None and r is dout:
                    copy_into(dout, out)
                    return out
                return to_host(r)
            if isinstance(result, tuple):
                return tuple(back(r) for r in result)
            return back(result)
        return wrapper
    return decorate


def _numba_to_device(a):
    from numba import cuda

    return cuda.to_device(a)


# The Numba CUDA backend's transfers (also the simulator's).
on_device = host_io(_numba_to_device, lambda d: d.copy_to_host(),
                    lambda d, out: d.copy_to_host(out))
