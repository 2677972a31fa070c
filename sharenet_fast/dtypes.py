"""The dtype table: per storage dtype, the dtype kernels accumulate in and the error bound.

Storage and accumulation are separate fields (DESIGN.md, Precision) wherever kernels are chosen
and compiled: the CPU and GPU kernel caches are keyed on both, and the CUDA C instances are named
from `ctype`. Reduced-precision storage (bfloat16, float16: float32 accumulation) is one more row
here. `tol` is the norm-relative error against the float64 oracle that every check uses (tests,
`sharenet-fast verify`, the benchmark's output check).
"""
from __future__ import annotations

from types import MappingProxyType
from typing import NamedTuple

import numpy as np


class DType(NamedTuple):
    name: str            # "float32": the spelling in JSON, CLI and kernel caches
    storage: np.dtype    # what arrays hold
    accum: np.dtype      # what kernels sum in
    ctype: str           # the CUDA C storage type
    accum_ctype: str     # the CUDA C accumulation type
    tol: float           # ||out - oracle|| / ||oracle|| bound


DTYPES = MappingProxyType({
    "float32": DType("float32", np.dtype(np.float32), np.dtype(np.float32), "float", "float", 1e-5),
    "float64": DType("float64", np.dtype(np.float64), np.dtype(np.float64), "double", "double",
                     1e-12),
})
NAMES = tuple(DTYPES)
WORDS = ", ".join(NAMES[:-1]) + " or " + NAMES[-1]     # "float32 or float64", for messages


_BY_DTYPE = {row.storage: row for row in DTYPES.values()}


def lookup(dtype):
    """The DType row of a storage dtype, or None if no kernel takes it."""
    row = _BY_DTYPE.get(dtype) if isinstance(dtype, np.dtype) else None
    if row is not None:            # the common case, without building a name (every call)
        return row
    try:
        return DTYPES.get(np.dtype(dtype).name)
    except TypeError:
        return None


def tol(dtype):
    return DTYPES[np.dtype(dtype).name].tol


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
