"""The dtype table: per storage dtype, the dtype kernels accumulate in and the error bound.

Storage and accumulation are separate fields (docs/design.md, Precision) wherever kernels are chosen
and compiled: the CPU and GPU kernel caches are keyed on both, and the CUDA C instances are named
from `ctype`. `tol` is the norm-relative error against the float64 oracle that every check uses
(tests, `sharenet-fast verify`, the benchmark's output check).

Reduced-precision storage (bfloat16, float16) accumulates in float32. Numba has no bfloat16 and
no CPU float16 arithmetic, so its kernels see those arrays through `view`, a 16-bit integer dtype
that also says which format the bits are: uint16 holds bfloat16 (widened by a 16-bit shift),
int16 holds float16 (widened by a half -> float conversion). Their `tol` is the final rounding
(unit roundoff 2^-8 for bfloat16, 2^-11 for float16) plus float32 accumulation (1e-5); the
oracle runs on the same rounded inputs. `out_tol` is the bound when the result is asked for in
float32 (out_dtype=np.float32): accumulation alone.
"""
from __future__ import annotations

from types import MappingProxyType
from typing import NamedTuple

import ml_dtypes
import numpy as np


class DType(NamedTuple):
    name: str            # "float32": the spelling in JSON, CLI and kernel caches
    storage: np.dtype    # what arrays hold
    accum: np.dtype      # what kernels sum in
    ctype: str           # the CUDA C storage type
    accum_ctype: str     # the CUDA C accumulation type
    tol: float           # ||out - oracle|| / ||oracle|| bound
    view: np.dtype = None  # reduced storage: the 16-bit integer view kernels read (else None)

    @property
    def reduced(self):
        """Reduced-precision storage: accumulates in a wider dtype than it stores."""
        return self.view is not None

    @property
    def out_tol(self):
        """The bound for a result returned in the accumulation dtype (out_dtype=)."""
        return DTYPES[self.accum.name].tol


BFLOAT16 = np.dtype(ml_dtypes.bfloat16)

DTYPES = MappingProxyType({
    "float32": DType("float32", np.dtype(np.float32), np.dtype(np.float32), "float", "float", 1e-5),
    "float64": DType("float64", np.dtype(np.float64), np.dtype(np.float64), "double", "double",
                     1e-12),
    "bfloat16": DType("bfloat16", BFLOAT16, np.dtype(np.float32), "__nv_bfloat16", "float",
                      2.0**-8 + 1e-5, np.dtype(np.uint16)),
    "float16": DType("float16", np.dtype(np.float16), np.dtype(np.float32), "__half", "float",
                     2.0**-11 + 1e-5, np.dtype(np.int16)),
})
NAMES = tuple(DTYPES)
FULL = tuple(n for n, row in DTYPES.items() if not row.reduced)     # float32, float64
REDUCED = tuple(n for n, row in DTYPES.items() if row.reduced)      # bfloat16, float16


def words(names=NAMES):
    """"float32, float64, bfloat16 or float16", for messages."""
    return ", ".join(names[:-1]) + " or " + names[-1]


WORDS = words()


_BY_DTYPE = {row.storage: row for row in DTYPES.values()}


def lookup(dtype):
    """The DType row of a storage dtype, or None if no kernel takes it."""
    row = _BY_DTYPE.get(dtype) if isinstance(dtype, np.dtype) else None
    if row is not None:            # the common case, without building a name (every call)
        return row
    if isinstance(dtype, str) and dtype in DTYPES:
        return DTYPES[dtype]
    try:
        return DTYPES.get(np.dtype(dtype).name)
    except TypeError:
        return None


def tol(dtype):
    return lookup(dtype).tol


def kernel_view(a):
    """`a` as kernels read it: reduced storage as its 16-bit integer view (a must be
    contiguous in its last axis), anything else as it is."""
    row = lookup(a.dtype)
    return a if row is None or row.view is None else a.view(row.view)


def rel_err(out, expected):
    """||out - expected|| / ||expected||, in float64 (inf if `out` has a non-finite element
    that `expected` has not, so an unwritten NaN-poisoned output never passes)."""
    out = np.asarray(out, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    if out.shape != expected.shape:
        raise ValueError(f"shape {out.shape} != expected {expected.shape}")
    if not np.all(np.isfinite(out)):
        return float("inf")
    denom = np.linalg.norm(expected)
    diff = np.linalg.norm(out - expected)
    return float(diff / denom) if denom > 0 else (0.0 if diff == 0 else float("inf"))
