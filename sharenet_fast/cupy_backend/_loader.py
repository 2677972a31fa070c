"""Finding, compiling and naming the CUDA C kernels of kernels/ (cupyx style: .cu sources shipped
with the package, compiled at run time by NVRTC through cupy.RawModule, template instances
requested by name_expressions).

Sources: the wheel carries kernels/ as sharenet_fast/_kernels (pyproject force-include); an
editable install or a checkout reads <repo>/kernels. Instances: every kernel of
_gpu_kernels.KERNELS that has a source, for a dtypes.DTYPES row (storage and accumulation
type: its ctype and accum_ctype; result type O: each of _gpu_kernels.outputs), every tile of
config.CUDA_TILE_MENU and every specialised kernel size, which is also what the host side can
ask for. One program per dtype row, compiled on first use (a float32 caller never waits for
the bfloat16 instances; the float32/float64 programs need no CUDA headers, the reduced ones
include cuda_bf16.h / cuda_fp16.h from the CUDA toolkit: include_dir). Names are filled in from
each kernel's declared template groups: no kernel or dtype is named here.
"""
import functools
import os
import re

from .. import config, dtypes
from .._gpu_kernels import KERNELS, TEMPLATE, outputs, row

SOURCES = tuple(dict.fromkeys(k.source for k in KERNELS.values() if k.source))
HEADERS = ("common.cuh",)
OPTIONS = ("-std=c++17",)
TILED = tuple(t for t, k in KERNELS.items() if k.source and "tile" in k.template)
SIZED = tuple(t for t, k in KERNELS.items() if k.source and "ksize" in k.template)


def kernel_dir():
    """The folder holding the .cu/.cuh sources (package data first, then the repository)."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for d in (os.path.join(here, "_kernels"), os.path.join(os.path.dirname(here), "kernels")):
        if all(os.path.isfile(os.path.join(d, f)) for f in SOURCES + HEADERS):
            return d
    raise FileNotFoundError(f"CUDA sources {SOURCES + HEADERS} not found in "
                            f"{os.path.join(here, '_kernels')} or the repository's kernels/")


def specialised(ksize):
    """(KR, KS) template arguments for a kernel size: itself if compiled in, else (0, 0)."""
    ksize = tuple(ksize) if ksize is not None else None
    return ksize if ksize in map(tuple, config.CUDA_KERNEL_SIZES) else (0, 0)


def name(kernel, dtype, tiles=None, bias_threads=None, ksize=None, penalty_threads=None,
         out=None):
    """The C++ name of one instance of kernel tag `kernel` for a dtypes.DType row (or a dtype
    name) and result dtype `out` (default: the storage dtype), e.g.
    conv2d_fwd_kernel<float,float,float,64,64,8,4,4,3,3>."""
    k = KERNELS.get(kernel)
    if k is None or k.source is None:
        raise ValueError(f"unknown kernel {kernel!r}: the CUDA C kernels are "
                         f"{[t for t, d in KERNELS.items() if d.source]}")
    dt = row(dtype)
    pt = config.CUDA_PENALTY_THREADS if penalty_threads is None else penalty_threads
    o = dtypes.lookup(dt.storage if out is None else out)
    if o is None or o.storage not in outputs(dt):
        raise ValueError(f"{k.name}: no result type {out!r} for T = {dt.name} "
                         f"(kernels write {[str(d) for d in outputs(dt)]})")
    values = {"T": (dt.ctype,), "A": (dt.accum_ctype,), "O": (o.ctype,), "tile": tiles,
              "ksize": specialised(ksize), "NB": (bias_threads,), "NT": (pt,)}
    args = []
    for group in k.template:
        v = values[group]
        if v is None or None in v or len(v) != len(TEMPLATE[group]):
            raise ValueError(f"{k.name}: template group {group} "
                             f"({', '.join(TEMPLATE[group])}) not given (got {v!r})")
        args += map(str, v)
    return f"{k.name}<{','.join(args)}>"


def template_args(instance):
    """{template parameter: its value (a str)} of an instance name, e.g. {"T": "float",
    "BM": "64", ...}; the inverse of name()."""
    m = re.fullmatch(r"(\w+)<(.*)>", instance)
    k = m and next((d for d in KERNELS.values() if d.source and d.name == m.group(1)), None)
    if not k:
        raise ValueError(f"not an instance of a declared kernel: {instance!r}")
    params = [p.split()[-1] for p in k.template_params()]
    values = m.group(2).split(",")
    if len(values) != len(params):
        raise ValueError(f"{instance!r}: {len(values)} template arguments for {params}")
    return dict(zip(params, values))


def name_expressions(menu=None, bias_threads=None, penalty_threads=None, rows=None):
    """Every instance the host side may launch: for every dtypes row of `rows` (default:
    all), every result type, every menu tile, every specialised kernel size and the generic
    one; each name once."""
    menu = config.CUDA_TILE_MENU if menu is None else menu
    nb = config.CUDA_BIAS_THREADS if bias_threads is None else bias_threads
    rows = list(dtypes.DTYPES.values()) if rows is None else rows
    sizes = [(0, 0)] + [tuple(z) for z in config.CUDA_KERNEL_SIZES]
    names = []
    for dt in rows:
        dt = row(dt)
        for tag, k in KERNELS.items():
            if k.source is None:
                continue
            for out in (outputs(dt) if "O" in k.template else [None]):
                for tiles in (map(tuple, menu) if "tile" in k.template else [None]):
                    for ksize in (sizes if "ksize" in k.template else [None]):
                        names.append(name(tag, dt, tiles, nb, ksize, penalty_threads, out))
    return list(dict.fromkeys(names))


def reduced(names):
    """Whether any of these instances is of a reduced dtype (needs the CUDA fp16/bf16
    headers and SHARENET_REDUCED)."""
    ctypes = {dt.ctype for dt in dtypes.DTYPES.values() if dt.reduced}
    return any(c in re.split(r"[<>,]", n) for n in names for c in ctypes)


@functools.lru_cache(maxsize=None)
def include_dir():
    """The CUDA toolkit's include folder (cuda_bf16.h, cuda_fp16.h): the pip wheel's
    (cuda.pathfinder), else $CUDA_PATH/include or /usr/local/cuda/include; None if none."""
    try:
        from cuda.pathfinder import find_nvidia_header_directory

        d = find_nvidia_header_directory("cudart")
        if d and os.path.isfile(os.path.join(d, "cuda_bf16.h")):
            return d
    except Exception:           # an older cuda-pathfinder, or none: try the usual places
        pass
    for root in (os.environ.get("CUDA_PATH"), os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if root and os.path.isfile(os.path.join(root, "include", "cuda_bf16.h")):
            return os.path.join(root, "include")
    return None


def options(names):
    """NVRTC options for a program holding `names`: the reduced types' headers and define
    only where needed."""
    if not reduced(names):
        return OPTIONS
    inc = include_dir()
    if inc is None:
        raise RuntimeError("the bfloat16/float16 CUDA C kernels need the CUDA headers "
                           "cuda_bf16.h and cuda_fp16.h: pip install nvidia-cuda-runtime "
                           "(or set CUDA_PATH to a CUDA toolkit)")
    return OPTIONS + ("-DSHARENET_REDUCED", f"-I{inc}")


def source():
    """Every source in one program (each includes common.cuh, which is #pragma once)."""
    parts = []
    for src in SOURCES:
        with open(os.path.join(kernel_dir(), src)) as f:
            parts.append(f.read())
    return "\n".join(parts)


@functools.lru_cache(maxsize=None)
def _module(menu, bias_threads, penalty_threads, dtype):
    import cupy

    names = name_expressions(menu, bias_threads, penalty_threads, [dtype])
    return cupy.RawModule(code=source(), options=options(names) + (f"-I{kernel_dir()}",),
                          name_expressions=names)


def module(dtype):
    """The compiled RawModule of one dtypes row for the current configuration (compiled once
    per dtype, tile menu and block sizes, on first use)."""
    return _module(tuple(map(tuple, config.CUDA_TILE_MENU)), config.CUDA_BIAS_THREADS,
                   config.CUDA_PENALTY_THREADS, row(dtype).name)


def compile_ptx(arch="compute_90", names=None):
    """({name: lowered name}, ptx, log): NVRTC on the sources for `arch`, no GPU needed."""
    from cupy.cuda import nvrtc

    d = kernel_dir()
    headers = []
    for h in HEADERS:
        with open(os.path.join(d, h)) as f:
            headers.append(f.read())
    prog = nvrtc.createProgram(source(), "sharenet_fast.cu", [h.encode() for h in headers],
                               [h.encode() for h in HEADERS])
    try:
        names = name_expressions() if names is None else names
        for n in names:
            nvrtc.addNameExpression(prog, n)
        try:
            nvrtc.compileProgram(prog, [f"--gpu-architecture={arch}", *options(names)])
        except nvrtc.NVRTCError as exc:
            raise RuntimeError(f"NVRTC failed for {arch}:\n{nvrtc.getProgramLog(prog)}") from exc
        lowered = {n: nvrtc.getLoweredName(prog, n) for n in names}
        return lowered, nvrtc.getPTX(prog), nvrtc.getProgramLog(prog)
    finally:
        nvrtc.destroyProgram(prog)


def ptx_entries(ptx, lowered):
    """{name: that entry's PTX text}: the compiled program split at its kernel entries."""
    text = ptx.decode() if isinstance(ptx, bytes) else ptx
    by_lowered = {v: k for k, v in lowered.items()}
    out = {}
    for part in re.split(r"(?=\.(?:visible|weak) \.entry )", text)[1:]:
        entry = re.match(r"\.(?:visible|weak) \.entry (\S+?)\(", part).group(1)
        if entry in by_lowered:
            out[by_lowered[entry]] = part
    return out
