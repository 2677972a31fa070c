"""The GPU kernels, declared once: per kernel tag, its function name, its CUDA C source, its
template parameters and its ordered arguments (name, type).

Both GPU backends run the same kernels (numba_cuda/ in Numba, kernels/*.cu in CUDA C) through
one host side (_gpu_host.py). Everything that must agree on a kernel's arguments is derived
from KERNELS below, so nothing can drift:

    _gpu_host     builds each launch's argument tuple from named values (pack: every name
                  given, each value checked or converted by its declared type)
    numba_cuda    the Numba signatures (numba_cuda/_launch.signature) that compile_ptx uses;
                  the kernels' Python parameters carry these names (tests/test_numba_cuda.py)
    cupy_backend  the instance names (_loader.name: the template groups filled in)
    tests         the g++ emulator converts each argument by its declared type
                  (tests/_cuda_emu.py); tests/test_cupy_backend.py parses every __global__
                  prototype of kernels/*.cu and checks template, names, order and types here

Tags follow the op table's pass kernel tags (optable.PASSES: fwd, dgrad, wgrad, bgrad), plus
wgrad_reduce, penalty, penalty_reduce, neighbour_l2, neighbour_dots, neighbour_cosine, average,
and fill (Numba only: device_zeros for Numba arrays,
which have no device-side memset under the simulator).

Argument types, spelt as in CUDA C (a pointer is a flat C-contiguous device array):

    T, A            a scalar of the storage / accumulation dtype (dtypes.DType .storage,
                    .accum; CUDA C .ctype, .accum_ctype)
    O               the result's dtype, written or added into: T, or A for reduced storage
                    (bfloat16/half) asked for a float32 result (out_dtype=) or adding into
                    float32 master gradients. Not passed: read off the launch's O* arrays
                    (out_of), which must agree.
    i64             a 64-bit integer (flags too: 0 or 1)
    double          a float64 scalar
    E*, const E*    an array of E, E one of T, A, i64, double (const: only read)

Template parameter groups, in a kernel's template order: T and A (typename: the DType's ctype
and accum_ctype), O (typename: the result's, T's or A's ctype), tile (int BM, BN, BK, TM, TN: an entry of config.CUDA_TILE_MENU), ksize (int
KR, KS: the kernel size if specialised, 0, 0 generic), NB (bias-gradient block size), NT
(penalty block size). The Numba kernels take the same groups as Python closure constants
(numba_cuda/conv2d.kernels(dt, out, tiles, bias_threads), sharing.kernels(dt, out, nt)) but
never ksize.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from . import dtypes

BASES = ("T", "A", "O", "i64", "double")
TEMPLATE = MappingProxyType({
    "T": ("typename T",),
    "A": ("typename A",),
    "O": ("typename O",),
    "tile": ("int BM", "int BN", "int BK", "int TM", "int TN"),
    "ksize": ("int KR", "int KS"),
    "NB": ("int NB",),
    "NT": ("int NT",),
})


@dataclass(frozen=True)
class Kernel:
    tag: str
    name: str            # the function's name, in CUDA C and in Numba
    source: str | None   # kernels/<source> holding the CUDA C kernel; None: Numba only
    template: tuple      # template parameter groups (TEMPLATE), in order
    args: tuple          # ((name, type), ...) in launch order

    @property
    def names(self):
        return tuple(n for n, _ in self.args)

    def index(self, name):
        """The position of argument `name` in the launch tuple."""
        return self.names.index(name)

    def template_params(self):
        """The CUDA C template parameter list, e.g. ("typename T", "typename A", "int NB")."""
        return tuple(p for group in self.template for p in TEMPLATE[group])


def split(ty):
    """("const T*" ->) (base "T", pointer True, const True)."""
    t = ty.strip()
    const = t.startswith("const ")
    if const:
        t = t[len("const "):].strip()
    pointer = t.endswith("*")
    base = t.rstrip("*").strip()
    if base not in BASES or (const and not pointer) or t.count("*") > 1:
        raise ValueError(f"unknown kernel argument type {ty!r}")
    return base, pointer, const


def element(base, dt, out=None):
    """The NumPy dtype of a base type for the DType row dt (O: `out`, default the storage)."""
    return {"T": dt.storage, "A": dt.accum, "O": dt.storage if out is None else np.dtype(out),
            "i64": np.dtype(np.int64), "double": np.dtype(np.float64)}[base]


_VIEWS = {row.view: row for row in dtypes.DTYPES.values() if row.reduced}


def row(dtype):
    """The dtypes.DType row of a DType, a dtype name or a NumPy dtype; TypeError if none. The
    16-bit integer view of a reduced dtype (dtypes.DType.view: how Numba holds bfloat16) names
    that dtype's row."""
    if isinstance(dtype, dtypes.DType):
        return dtype
    dt = dtypes.lookup(dtype)
    if dt is None and isinstance(dtype, np.dtype):
        dt = _VIEWS.get(dtype)
    if dt is None:
        raise TypeError(f"no GPU kernel takes dtype {dtype!r}; kernels take {dtypes.WORDS}")
    return dt


def same(a, b, dt):
    """Whether array dtype `a` is `b`, counting a reduced dtype's 16-bit view as the dtype."""
    if a is None or b is None:
        return False
    a, b = np.dtype(a), np.dtype(b)
    return a == b or (dt.reduced and {a, b} == {dt.storage, dt.view})


def outputs(dt):
    """The result dtypes (O) kernels of row dt are built for: the storage dtype, and for
    reduced storage also the accumulation dtype."""
    return tuple(dict.fromkeys((dt.storage, dt.accum)))


def out_of(tag, dt, args):
    """The O dtype of a launch tuple of kernel `tag`: that of its O* arrays (the storage dtype
    if it has none); TypeError if they disagree or are neither T nor A. A reduced dtype's
    16-bit view counts as the dtype."""
    found = {row(a.dtype).storage if a.dtype == dt.view else np.dtype(a.dtype)
             for (_, ty), a in zip(KERNELS[tag].args, args) if split(ty)[0] == "O"}
    if not found:
        return dt.storage
    if len(found) > 1 or next(iter(found)) not in outputs(dt):
        raise TypeError(f"{KERNELS[tag].name}: result arrays (O*) of dtypes {sorted(map(str, found))}"
                        f" for T = {dt.name}: they must all be one of {list(map(str, outputs(dt)))}")
    return next(iter(found))


def _i64(*names):
    return tuple((n, "i64") for n in names)


DIMS = ("N", "C", "H", "W", "K", "P", "Q", "R", "S", "G")  # the layer's geometry, G groups
CONV = ("sh", "sw", "ph", "pw", "dh", "dw")                # stride, padding, dilation

KERNELS = MappingProxyType({k.tag: k for k in (
    Kernel("fwd", "conv2d_fwd_kernel", "conv2d.cu", ("T", "A", "O", "tile", "ksize"),
           (("x", "const T*"), ("w", "const T*"), ("bias", "const T*"), ("y", "O*"))
           + _i64(*DIMS, "TP", "TQ", *CONV, "colblocks", "has_bias")),
    Kernel("wgrad", "conv2d_wgrad_kernel", "conv2d.cu", ("T", "A", "O", "tile", "ksize"),
           (("dy", "const T*"), ("x", "const T*"), ("out", "O*"), ("ws", "A*"))
           + _i64(*DIMS, "TP", "TQ", *CONV, "nchunks", "chunk", "redblocks", "mode")),
    Kernel("dgrad", "conv2d_dgrad_kernel", "conv2d.cu", ("T", "A", "O", "tile"),
           (("dy", "const T*"), ("w", "const T*"), ("dx", "O*"), ("rtab", "const i64*"),
            ("stab", "const i64*"), ("rcnt", "const i64*"), ("scnt", "const i64*"))
           + _i64(*DIMS, "TP", "TQ", "LH", "LW", "ncw", "colblocks")),
    Kernel("wgrad_reduce", "conv2d_wgrad_reduce_kernel", "conv2d.cu", ("T", "A", "O"),
           (("ws", "const A*"), ("out", "O*")) + _i64("nchunks", "size")),
    Kernel("bgrad", "conv2d_bgrad_kernel", "conv2d.cu", ("T", "A", "O", "NB"),
           (("dy", "const T*"), ("out", "O*")) + _i64("N", "K", "P", "Q", "TP", "TQ")),
    Kernel("penalty", "soft_sharing_penalty_kernel", "sharing.cu", ("T", "A", "O", "NT"),
           (("a", "const T*"), ("b", "const T*"), ("strength", "A"), ("grad_a", "O*"),
            ("grad_b", "O*")) + _i64("has_a", "has_b", "n") + (("partials", "double*"),)),
    Kernel("penalty_reduce", "soft_sharing_reduce_kernel", "sharing.cu", ("NT",),
           (("partials", "const double*"), ("nparts", "i64"), ("scale", "double"),
            ("out", "double*"))),
    Kernel("neighbour_l2", "neighbour_l2_kernel", "sharing.cu", ("T", "A", "O", "NT"),
           (("w", "const T*"), ("grad", "O*"), ("strength", "A"))
           + _i64("TP", "TQ", "KF", "eight", "wrap", "has_grad") + (("partials", "double*"),)),
    Kernel("neighbour_dots", "neighbour_dots_kernel", "sharing.cu", ("T", "A", "NT"),
           (("w", "const T*"), ("norms", "double*"), ("dots", "double*"))
           + _i64("TP", "TQ", "K", "F", "eight", "wrap")),
    Kernel("neighbour_cosine", "neighbour_cosine_kernel", "sharing.cu", ("T", "A", "O", "NT"),
           (("w", "const T*"), ("grad", "O*"), ("norms", "const double*"),
            ("dots", "const double*"), ("scale", "double"))
           + _i64("TP", "TQ", "K", "F", "eight", "wrap", "has_grad")
           + (("partials", "double*"),)),
    Kernel("average", "average_banks_kernel", "sharing.cu", ("T", "A"),
           (("w", "const T*"), ("out", "T*")) + _i64("TP", "TQ", "F", "gp", "gq")),
    Kernel("fill", "fill_kernel", None, ("T",),
           (("a", "T*"), ("value", "T"), ("size", "i64"))),
)})


def pack(tag, dt, values):
    """The launch tuple of kernel `tag` from {argument name: value}, in declared order: arrays
    checked (1-D, the declared element dtype), scalars converted to NumPy scalars of their
    declared type (np.int64, the storage or accumulation dtype, np.float64). TypeError on a
    missing or unknown name or a wrong array. A reduced dtype's arrays may be its 16-bit view."""
    k = KERNELS[tag]
    if values.keys() != set(k.names):
        missing = [n for n in k.names if n not in values]
        extra = sorted(set(values) - set(k.names))
        raise TypeError(f"{k.name}: arguments missing {missing}, unknown {extra}")
    o = out_of(tag, dt, [values[n] for n in k.names])
    out = []
    for name, ty in k.args:
        base, pointer, _ = split(ty)
        want = element(base, dt, o)
        v = values[name]
        if pointer:
            if not same(getattr(v, "dtype", None), want, dt) or len(v.shape) != 1:
                raise TypeError(f"{k.name} argument {name} ({ty}, T = {dt.name}) must be a 1-D "
                                f"{want} array, got {type(v).__name__} "
                                f"{getattr(v, 'dtype', '')} {getattr(v, 'shape', '')}")
            out.append(v)
        else:
            out.append(want.type(v))
    return tuple(out)
