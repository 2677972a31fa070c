"""Storage, accumulation and result conversions of the Numba CUDA kernels: the twins of cvt<> in
kernels/common.cuh.

Numba holds float32, float64 and float16 arrays as they are (float16 <-> float32 casts are
PTX cvt instructions, round to nearest even); it has no bfloat16, so bfloat16 arrays are held as
their 16-bit integer view (dtypes.DType.view, uint16: `held`) and converted here with integer
arithmetic: widening is a 16-bit shift, narrowing rounds to nearest even (NaN stays NaN, made
quiet, sign kept: as ml_dtypes and the CPU kernels do). Only the reinterpretation of a float32's
bits differs between a GPU (libdevice) and the simulator (NumPy); the rounding arithmetic is
the same code on both, so the simulator tests it.
"""
import functools

import numpy as np
from numba import cuda, uint16  # cuda: a module global the simulator swaps inside kernels

from .. import config, dtypes
from .._gpu_kernels import row


def held(dtype):
    """The dtype a Numba array holds for arrays of `dtype`: itself, or the 16-bit integer view
    of bfloat16 (the view itself maps to itself)."""
    dtype = np.dtype(dtype)
    return np.dtype(np.uint16) if dtype == dtypes.BFLOAT16 else dtype


if config.CUDASIM:
    @cuda.jit(device=True, inline=True)
    def _bits(f):
        """A float32's bits as a non-negative integer (< 2**32)."""
        return int(np.float32(f).view(np.uint32))

    @cuda.jit(device=True, inline=True)
    def _float(u):
        """The float32 with bits u (0 <= u < 2**32)."""
        return np.uint32(u).view(np.float32)
else:
    from numba import float32, int32, int64
    from numba.cuda import libdevice

    @cuda.jit(device=True, inline=True)
    def _bits(f):
        return int64(libdevice.float_as_int(float32(f))) & 0xFFFFFFFF

    @cuda.jit(device=True, inline=True)
    def _float(u):
        return libdevice.int_as_float(int32(u))


@cuda.jit(device=True, inline=True)
def bf16_widen(v):
    """bfloat16 bits (uint16) -> float32: the bits shifted into the upper half."""
    return _float(int(v) << 16)


@cuda.jit(device=True, inline=True)
def bf16_narrow(f):
    """float32 -> bfloat16 bits (uint16), rounded to nearest even."""
    u = _bits(f)
    if (u & 0x7FFFFFFF) > 0x7F800000:          # NaN: quiet it, keep the sign
        return uint16((u >> 16) | 0x40)
    return uint16((u + 0x7FFF + ((u >> 16) & 1)) >> 16)


@functools.lru_cache(maxsize=None)
def converters(dt, out):
    """(widen, widen_out, narrow_out) device functions for DType row `dt` and result dtype
    `out` (dt.storage or dt.accum): a T element to A, an O element to A, an A value to O."""
    from numba import from_dtype

    dt, out = row(dt), np.dtype(out)
    at = from_dtype(dt.accum)

    def convert(d):
        if d == dtypes.BFLOAT16:
            return bf16_widen, bf16_narrow
        # a cast is the Numba type itself: callable in a kernel and on the simulator, where
        # a device function call costs several times more (a module swap per call)
        return at, from_dtype(d)

    widen, _ = convert(dt.storage)
    widen_out, narrow_out = convert(out)
    return widen, widen_out, narrow_out
