"""Scratch buffers reused across calls.

A fresh multi-megabyte NumPy array costs page faults on first touch (and, where transparent
huge pages are on 'madvise', NumPy asks for them and the kernel may compact memory inside the
fault): measured 1-5 ms per call on a 5 MB weight-gradient workspace, up to half the time of
the op. Kernels' private scratch (never returned to the caller) therefore comes from here.

Only use under launch_lock, and never let a scratch array escape the call: the next call gets
the same memory. Buffers above WORKSPACE_CACHE_BYTES are not kept.

Results the caller keeps can't be scratch; large ones come from result(): a pool of buffers,
each lent out behind a small owner object that every NumPy view of the result holds as its
base, so the buffer returns to the pool only when the caller's last view is gone (a training
loop's weight gradient of one step is freed before the next step asks for another).
"""
import threading
import weakref

import numpy as np

from ..config import RESULT_POOL_BYTES, RESULT_POOL_MIN_BYTES, WORKSPACE_CACHE_BYTES

# Every parallel CPU kernel launches under this lock. Numba's "workqueue" threading layer (the
# fallback where no OpenMP/TBB exists) aborts the process when two Python threads enter parallel
# kernels at once; a kernel already uses every core, so serialising callers costs nothing and
# leaves the user's choice of threading layer alone. It also guards the scratch buffers below.
launch_lock = threading.RLock()

_cache = {}


def scratch(name, shape, dtype, tail=0):
    """An uninitialised C-contiguous array of `shape`, reused by the next call with this name;
    `tail` more elements exist past its end (a kernel's whole-vector reads of a row's end stay
    inside the buffer)."""
    dtype = np.dtype(dtype)
    n = 1
    for s in shape:
        n *= int(s)
    if n * dtype.itemsize > WORKSPACE_CACHE_BYTES:
        return np.empty(n + tail, dtype=dtype)[:n].reshape(shape)
    buf = _cache.get((name, dtype))
    if buf is None or buf.size < n + tail:
        buf = np.empty(max(n + tail, 1), dtype=dtype)
        _cache[(name, dtype)] = buf
    return buf[:n].reshape(shape)


def clear():
    """Drop every cached buffer (the memory goes back to the allocator)."""
    _cache.clear()


# ------------------------------------------------------------------------------ result pool
_pool_lock = threading.Lock()
ALIGN = 64            # every result's first byte: a multiple of this (a cache line)
_pool = []            # free uint8 buffers, oldest first
_pool_bytes = [0]


class _Lease:
    """The owner of a pooled buffer while it is lent out: the result array and all its views
    have it as their base (NumPy collapses a view's base to the first object that is not a
    view), so it dies with the last of them, and its finalizer returns the buffer."""
    __slots__ = ("__array_interface__", "buf", "__weakref__")


def _give_back(buf):
    """Keep the buffer, dropping the least recently returned ones beyond RESULT_POOL_BYTES (a
    run that moves on to another layer size must not find the pool full of the last size's).
    The pool counts the results' bytes (each buffer is ALIGN bytes longer)."""
    if buf.nbytes - ALIGN > RESULT_POOL_BYTES:
        return
    with _pool_lock:
        _pool.append(buf)
        _pool_bytes[0] += buf.nbytes - ALIGN
        while _pool_bytes[0] > RESULT_POOL_BYTES:
            _pool_bytes[0] -= _pool.pop(0).nbytes - ALIGN


def result(shape, dtype):
    """An uninitialised C-contiguous array for a result the caller keeps, starting on an ALIGN
    boundary: from the pool where it is large enough to be worth it (the kernel must write
    every element)."""
    dtype = np.dtype(dtype)
    shape = tuple(int(s) for s in shape)
    nbytes = dtype.itemsize * int(np.prod(shape, dtype=np.int64))
    if nbytes < RESULT_POOL_MIN_BYTES or RESULT_POOL_BYTES <= 0:
        raw = np.empty(nbytes + ALIGN, np.uint8)         # not pooled, aligned all the same
        off = -raw.ctypes.data % ALIGN
        return raw[off:off + nbytes].view(dtype).reshape(shape)
    # ALIGN bytes more: the result starts on a 64-byte boundary (malloc's large blocks start
    # 16 bytes past a page), so a kernel can stream whole aligned vectors into it
    size = nbytes + ALIGN
    with _pool_lock:
        hit = next((i for i in range(len(_pool) - 1, -1, -1) if _pool[i].nbytes == size),
                   None)
        buf = _pool.pop(hit) if hit is not None else None
        if buf is not None:
            _pool_bytes[0] -= nbytes
    if buf is None:
        buf = np.empty(size, np.uint8)
    lease = _Lease()
    lease.buf = buf
    # the interface as bytes, then viewed: a typestr cannot name every dtype (ml_dtypes'
    # bfloat16 is "<V2" there, a void)
    lease.__array_interface__ = dict(shape=(nbytes,), typestr="|u1", version=3,
                                     data=(buf.ctypes.data + (-buf.ctypes.data) % ALIGN, False))
    weakref.finalize(lease, _give_back, buf)
    return np.asarray(lease).view(dtype).reshape(shape)


def pool_bytes():
    """Bytes of free buffers the result pool holds."""
    return _pool_bytes[0]


def clear_pool():
    with _pool_lock:
        _pool.clear()
        _pool_bytes[0] = 0
