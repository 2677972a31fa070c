"""Finding, compiling and naming the CUDA C kernels of kernels/ (cupyx style: .cu sources shipped
with the package, compiled at run time by NVRTC through cupy.RawModule, template instances
requested by name_expressions).

Sources: the wheel carries kernels/ as sharenet_fast/_kernels (pyproject force-include); an
editable install or a checkout reads <repo>/kernels. Instances: every kernel of
_gpu_kernels.KERNELS that has a source, for every dtypes.DTYPES row (storage and accumulation
type: its ctype and accum_ctype), every tile of config.CUDA_TILE_MENU and every specialised
kernel size, which is also what the host side can ask for. Names are filled in from each
kernel's declared template groups: no kernel or dtype is named here.
"""
import functools
import os
import re

from .. import config, dtypes
from .._gpu_kernels import KERNELS, TEMPLATE, row

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


def name(kernel, dtype, tiles=None, bias_threads=None, ksize=None, penalty_threads=None):
    """The C++ name of one instance of kernel tag `kernel` for a dtypes.DType row (or a dtype
    name), e.g. conv2d_fwd_kernel<float,float,64,64,8,4,4,3,3>."""
    k = KERNELS.get(kernel)
    if k is None or k.source is None:
        raise ValueError(f"unknown kernel {kernel!r}: the CUDA C kernels are "
                         f"{[t for t, d in KERNELS.items() if d.source]}")
    dt = row(dtype)
    pt = config.CUDA_PENALTY_THREADS if penalty_threads is None else penalty_threads
    values = {"T": (dt.ctype,), "A": (dt.accum_ctype,), "tile": tiles,
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
    """Every instance the host side may launch: every dtypes row (or `rows`), every menu
    tile, every specialised kernel size and the generic one; each name once."""
    menu = config.CUDA_TILE_MENU if menu is None else menu
    nb = config.CUDA_BIAS_THREADS if bias_threads is None else bias_threads
    rows = [dtypes.DTYPES[n] for n in dtypes.FULL] if rows is None else rows
    sizes = [(0, 0)] + [tuple(z) for z in config.CUDA_KERNEL_SIZES]
    names = []
    for dt in rows:
        for tag, k in KERNELS.items():
            if k.source is None:
                continue
            for tiles in (map(tuple, menu) if "tile" in k.template else [None]):
                for ksize in (sizes if "ksize" in k.template else [None]):
                    names.append(name(tag, dt, tiles, nb, ksize, penalty_threads))
    return list(dict.fromkeys(names))


def source():
    """Every source in one program (each includes common.cuh, which is #pragma once)."""
    parts = []
    for src in SOURCES:
        with open(os.path.join(kernel_dir(), src)) as f:
            parts.append(f.read())
    return "\n".join(parts)


@functools.lru_cache(maxsize=None)
def _module(menu, bias_threads, penalty_threads):
    import cupy

    return cupy.RawModule(code=source(), options=OPTIONS + (f"-I{kernel_dir()}",),
                          name_expressions=name_expressions(menu, bias_threads,
                                                            penalty_threads))


def module():
    """The compiled RawModule for the current configuration (compiled once per tile menu and
    block sizes, on first use)."""
    return _module(tuple(map(tuple, config.CUDA_TILE_MENU)), config.CUDA_BIAS_THREADS,
                   config.CUDA_PENALTY_THREADS)


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
            nvrtc.compileProgram(prog, [f"--gpu-architecture={arch}", *OPTIONS])
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
