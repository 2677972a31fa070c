"""Where an array lives, and moving arrays to a GPU backend and back.

Three kinds of array reach the API: NumPy (host), CuPy and Numba CUDA device arrays (the
latter also under NUMBA_ENABLE_CUDASIM=1, where they are host arrays in disguise). The kind is
read from the type's module, so this file imports neither CuPy nor numba.cuda: importing the
package never needs a GPU.
"""
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


def is_c_contiguous(a, k=None):
    """Whether `a` (of kind `k`, read from `a` when not given) is C-contiguous."""
    if (k or kind(a)) == "numba":
        return a.is_c_contiguous()
    return a.flags.c_contiguous


def contiguous(a, k=None):
    """`a` (of kind `k`, read from `a` when not given) itself if C-contiguous, else a
    contiguous copy of the same kind."""
    k = k or kind(a)
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
