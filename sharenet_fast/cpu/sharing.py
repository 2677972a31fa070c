"""Soft sharing on the CPU: penalty = strength/2 * sum((a - b)**2), its gradients added into
grad_a (+ strength*(a - b)) and grad_b (- strength*(a - b)), in one pass over the four streams.

Bandwidth-bound (6 bytes moved per FLOP): each thread walks whole chunks of config.PENALTY_CHUNK
elements, reading a and b once and updating the gradients in the same loop; a chunk's sum of
squares is accumulated in float64 and the per-chunk partials are summed in chunk order, so the
result has the same bits whatever the thread count.

bfloat16/float16 banks (their 16-bit views, dtypes.py) are widened in registers and the
difference taken in float32; gradients in the storage dtype are rounded once per element,
float32 ones (master weights) are added into as they are. Half the bytes of float32 a and b.
"""
import numpy as np
from numba import njit, prange

from .. import config, dtypes
from ._simd import narrow, widen
from ._workspace import launch_lock


@njit(**config.njit_options(parallel=True))
def soft_sharing_penalty_kernel(a, b, strength, grad_a, grad_b, has_a, has_b, chunk):
    n = a.size
    nchunks = (n + chunk - 1) // chunk
    partial = np.zeros(nchunks, np.float64)
    for c in prange(nchunks):
        lo = c * chunk
        hi = min(n, lo + chunk)
        # chunk views indexed from 0: LLVM vectorises these loops, not ones indexed lo..hi
        # (3x slower here); four loops instead of one with two ifs: each a straight stream
        x, y, ga, gb = a[lo:hi], b[lo:hi], grad_a[lo:hi], grad_b[lo:hi]
        m = hi - lo
        s = 0.0
        if has_a and has_b:
            for i in range(m):
                d = widen(x[i]) - widen(y[i])
                s += np.float64(d) * d
                ga[i] = narrow(widen(ga[i]) + strength * d, ga)
                gb[i] = narrow(widen(gb[i]) - strength * d, gb)
        elif has_a:
            for i in range(m):
                d = widen(x[i]) - widen(y[i])
                s += np.float64(d) * d
                ga[i] = narrow(widen(ga[i]) + strength * d, ga)
        elif has_b:
            for i in range(m):
                d = widen(x[i]) - widen(y[i])
                s += np.float64(d) * d
                gb[i] = narrow(widen(gb[i]) - strength * d, gb)
        else:
            for i in range(m):
                d = np.float64(widen(x[i]) - widen(y[i]))
                s += d * d
        partial[c] = s
    total = 0.0
    for c in range(nchunks):        # chunk order: deterministic
        total += partial[c]
    return total


def soft_sharing_penalty(a, b, strength, grad_a=None, grad_b=None):
    """The penalty (a float) for flat C-contiguous a, b of one dtype; grad_a / grad_b (same
    shape and dtype, float32 for reduced a and b, or None) are added into in place."""
    row = dtypes.lookup(a.dtype)
    s = row.accum.type(strength)
    a, b = dtypes.kernel_view(a), dtypes.kernel_view(b)
    ga = np.empty(0, a.dtype) if grad_a is None else dtypes.kernel_view(grad_a)
    gb = np.empty(0, a.dtype) if grad_b is None else dtypes.kernel_view(grad_b)
    with launch_lock:
        total = soft_sharing_penalty_kernel(a, b, s, ga, gb, grad_a is not None,
                                            grad_b is not None, config.PENALTY_CHUNK)
    return 0.5 * float(strength) * total
