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


def flat(a):
    """1-D view of a C-contiguous array of any kind."""
    return a.reshape(a.size)


def _byte_range(a):
    """[lo, hi) of the bytes an array can touch (from its pointer, shape and strides)."""
    iface = getattr(a, "__cuda_array_interface__", None) or a.__array_interface__
    lo = hi = iface["data"][0]
    for n, st in zip(a.shape, a.strides):
        if n == 0:
            return lo, lo
        (lo, hi) = (lo + (n - 1) * st, hi) if st < 0 else (lo, hi + (n - 1) * st)
    return lo, hi + a.itemsize


def overlaps(x, y):
    """Whether two arrays of one kind share memory: exactly for NumPy, by byte range on a GPU
    (interleaved views of one buffer count as overlapping there)."""
    if kind(x) == HOST:
        return bool(np.shares_memory(x, y))
    (a0, a1), (b0, b1) = _byte_range(x), _byte_range(y)
    return a0 < b1 and b0 < a1


def scalar(r, k):
    """A backend's scalar result as the API returns it: numpy.float64, or 0-d CuPy on CuPy."""
    if k == "cupy":
        return r.reshape(())
    if kind(r) == "numba":
        r = r.copy_to_host()
    return np.float64(np.asarray(r).reshape(-1)[0])


def zero_scalar(k):
    if k == "cupy":
        import cupy

        return cupy.zeros((), np.float64)
    return np.float64(0.0)


def device_id(a):
    k = kind(a)
    if k == "cupy":
        return a.device.id
    return None


def host_io(to_device, to_host, copy_into):
    """A decorator letting a GPU backend's host function take NumPy arrays: copy them in, run,
    copy back. `to_device(a)`, `to_host(d)` and `copy_into(d, out)` are the backend's transfers.

    Device arrays pass through untouched. With NumPy arrays every positional array is copied to
    the device and results come back as NumPy. Array keyword arguments are accumulators (`out=`,
    `grad_a=`, `grad_b=`): each is copied in, added into on the device and copied back into the
    caller's array; a result that is one of them is returned as the caller's array.
    """
    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            accs = {k: v for k, v in kwargs.items() if kind(v) is not None}
            if not any(kind(a) == HOST for a in args + tuple(accs.values())):
                return fn(*args, **kwargs)
            dargs = tuple(to_device(a) if kind(a) == HOST else a for a in args)
            dacc = {k: to_device(v) if kind(v) == HOST else v for k, v in accs.items()}
            result = fn(*dargs, **{**kwargs, **dacc})
            for k, v in accs.items():
                if kind(v) == HOST:
                    copy_into(dacc[k], v)

            def back(r):
                if r is None:
                    return None
                for k, d in dacc.items():
                    if r is d:
                        return accs[k]
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
