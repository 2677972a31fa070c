"""Reduced-precision storage (bfloat16, float16) on the CPU: conversions and the pass adapter.

docs/design.md, Precision: reduced storage accumulates in float32 and returns the storage dtype (or
float32 with out_dtype=np.float32); a float32 `out=` buffer for a reduced weight (master
weights) is added into in float32. Kernels see reduced arrays as their 16-bit integer views
(dtypes.py) and widen them in registers (_simd.widen / narrow).

Where the weights are the traffic (local2d, the penalty) the kernels read the 16-bit values
themselves. The shared and tiled conv go through `adapted` below (cpu/__init__.py): where the
target has AVX512_BF16 the shared conv's bfloat16 passes run kernels of their own
(conv2d.py's pairs kernels, vdpbf16ps: twice the multiply-adds of an FMA); elsewhere it
widens the inputs to float32 in one parallel pass, runs the float32 kernels, and rounds the
result back (their weights are small and reused N*P*Q times, so the extra pass over the
activations is a few percent of the time).
The conversions are parallel kernels: launched under launch_lock, like every kernel here.
"""
import inspect
from functools import wraps

import numpy as np
from numba import njit, prange

from .. import dtypes
from ..config import njit_options
from ._simd import narrow, widen
from ._workspace import launch_lock


@njit(**njit_options(parallel=True))
def widen_kernel(src, dst):
    """dst[i] = src[i] widened (16-bit storage view -> float32); flat, contiguous."""
    for i in prange(src.size):
        dst[i] = widen(src[i])


@njit(**njit_options(parallel=True))
def narrow_kernel(src, dst):
    """dst[i] = src[i] rounded to nearest even into dst's storage."""
    for i in prange(src.size):
        dst[i] = narrow(src[i], dst)


@njit(**njit_options(parallel=True))
def add_narrow_kernel(acc, src):
    """acc[i] = round(widen(acc[i]) + src[i]): one float32 sum, one rounding."""
    for i in prange(src.size):
        acc[i] = narrow(widen(acc[i]) + src[i], acc)


def row(a):
    return None if a is None else dtypes.lookup(a.dtype)


def reduced(a):
    """True for a bfloat16 / float16 array."""
    r = row(a)
    return r is not None and r.reduced


def widened(a):
    """A reduced array as a fresh float32 array of its shape (None and other dtypes pass)."""
    if not reduced(a):
        return a
    a = np.ascontiguousarray(a)
    out = np.empty(a.shape, np.float32)
    with launch_lock:
        widen_kernel(dtypes.kernel_view(a).reshape(-1), out.reshape(-1))
    return out


def narrowed(a, storage):
    """Float32 array `a` rounded into a fresh array of `storage` dtype (a itself if storage is
    float32, its own dtype)."""
    storage = np.dtype(storage)
    if a.dtype == storage:
        return a
    out = np.empty(a.shape, storage)
    with launch_lock:
        narrow_kernel(np.ascontiguousarray(a).reshape(-1), dtypes.kernel_view(out).reshape(-1))
    return out


def add_into(out, r):
    """out += r (r float32, C-contiguous, out's shape): summed in float32 and rounded once into a
    reduced out; plain addition into a float32 out."""
    if reduced(out):
        with launch_lock:
            add_narrow_kernel(dtypes.kernel_view(out).reshape(-1), r.reshape(-1))
    else:
        out += r
    return out


def result_dtype(storage, out_dtype):
    """What a pass returns: `out_dtype` when given (float32), else the storage dtype."""
    return np.dtype(storage) if out_dtype is None else np.dtype(out_dtype)


def adapted(fn, native=None):
    """Host function `fn` (float32/float64 kernels) for every storage dtype: float32/float64
    calls go straight through; reduced ones through float32 copies of the arrays, with the
    result rounded back (or kept float32: out_dtype=). An out= buffer is added into: a float32
    one (master weights) by the kernel itself, a reduced one by one rounding of the sum.
    Where native(*args) says so, fn runs on the reduced arrays themselves (conv2d's bfloat16
    pairs kernels): a forward or input gradient takes out_dtype= and rounds in its kernel, a
    gradient returns float32 and goes on as above."""
    grads = fn.__name__.endswith(("_weight_grad", "_bias_grad"))   # take out=, added into
    both = fn.__name__.endswith("_input_weight_grad")    # returns (dx, dw)

    @wraps(fn)
    def call(*args, out_dtype=None, **kw):
        storage = next(a.dtype for a in args if isinstance(a, np.ndarray))
        if not dtypes.lookup(storage).reduced:
            return fn(*args, **kw)
        rdt = result_dtype(storage, out_dtype)
        if native is not None and native(*args, **kw):
            if not grads:     # rounded into rdt by the kernels
                return fn(*args, out_dtype=rdt, **kw)
            wide = args       # the kernels read the storage and return float32
        else:
            wide = tuple(widened(a) if isinstance(a, np.ndarray) else a for a in args)
        if not grads:                                          # forward, input gradient
            return narrowed(fn(*wide, **kw), rdt)
        out = kw.pop("out", None)
        direct = out if out is not None and not reduced(out) else None
        r = fn(*wide, out=direct, **kw)
        dx, r = r if both else (None, r)
        if direct is None:
            r = narrowed(r, rdt) if out is None else add_into(out, r)
        return (narrowed(dx, rdt), r) if both else r

    # the op table's signature plus out_dtype=, as every pass of a backend with 16-bit storage
    sig = inspect.signature(fn)
    params = [p for name, p in sig.parameters.items() if name != "out_dtype"]
    call.__signature__ = sig.replace(parameters=[*params, inspect.Parameter(
        "out_dtype", inspect.Parameter.KEYWORD_ONLY, default=None)])
    return call
