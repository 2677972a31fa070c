"""Scratch buffers reused across calls.

A fresh multi-megabyte NumPy array costs page faults on first touch (and, where transparent
huge pages are on 'madvise', NumPy asks for them and the kernel may compact memory inside the
fault): measured 1-5 ms per call on a 5 MB weight-gradient workspace, up to half the time of
the op. Kernels' private scratch (never returned to the caller) therefore comes from here.

Only use under launch_lock, and never let a scratch array escape the call: the next call gets
the same memory. Buffers above WORKSPACE_CACHE_BYTES are not kept.
"""
import threading

import numpy as np

from ..config import WORKSPACE_CACHE_BYTES

# Every parallel CPU kernel launches under this lock. Numba's "workqueue" threading layer (the
# fallback where no OpenMP/TBB exists) aborts the process when two Python threads enter parallel
# kernels at once; a kernel already uses every core, so serialising callers costs nothing and
# leaves the user's choice of threading layer alone. It also guards the scratch buffers below.
launch_lock = threading.RLock()

_cache = {}


def scratch(name, shape, dtype):
    """An uninitialised C-contiguous array of `shape`, reused by the next call with this name."""
    dtype = np.dtype(dtype)
    n = 1
    for s in shape:
        n *= int(s)
    if n * dtype.itemsize > WORKSPACE_CACHE_BYTES:
        return np.empty(shape, dtype=dtype)
    buf = _cache.get((name, dtype))
    if buf is None or buf.size < n:
        buf = np.empty(max(n, 1), dtype=dtype)
        _cache[(name, dtype)] = buf
    return buf[:n].reshape(shape)


def clear():
    """Drop every cached buffer (the memory goes back to the allocator)."""
    _cache.clear()
