"""Finding, compiling and naming the CUDA C kernels of kernels/ (cupyx style: .cu sources shipped
with the package, compiled at run time by NVRTC through cupy.RawModule, template instances
requested by name_expressions).

Sources: the wheel carries kernels/ as sharenet_fast/_kernels (pyproject force-include); an
editable install or a checkout reads <repo>/kernels. Instances: every kernel for float and
double at every tile of config.CUDA_TILE_MENU, which is also what the host side can ask for.
"""
import functools
import os

from .. import config

SOURCES = ("conv2d.cu", "sharing.cu")
HEADERS = ("common.cuh",)
OPTIONS = ("-std=c++17",)
CTYPES = {"float32": "float", "float64": "double"}
TILED = ("fwd", "wgrad", "dgrad")         # templated on the block tile
SIZED = ("fwd", "wgrad")                  # ... and on the kernel size (0, 0: generic)


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
    """The C++ name of one instance, e.g. conv2d_fwd_kernel<float,64,64,8,4,4,3,3>."""
    ct = CTYPES[dtype]
    if kernel in SIZED:
        args = tuple(tiles) + specialised(ksize)
        return f"conv2d_{kernel}_kernel<{ct},{','.join(map(str, args))}>"
    if kernel in TILED:
        return f"conv2d_{kernel}_kernel<{ct},{','.join(map(str, tiles))}>"
    if kernel == "bgrad":
        return f"conv2d_bgrad_kernel<{ct},{bias_threads}>"
    if kernel == "wgrad_reduce":
        return f"conv2d_wgrad_reduce_kernel<{ct}>"
    if kernel == "fill":
        return f"fill_kernel<{ct}>"
    pt = config.CUDA_PENALTY_THREADS if penalty_threads is None else penalty_threads
    if kernel == "penalty":
        return f"soft_sharing_penalty_kernel<{ct},{pt}>"
    if kernel == "penalty_reduce":
        return f"soft_sharing_reduce_kernel<{pt}>"
    raise ValueError(f"unknown kernel {kernel!r}")


def name_expressions(menu=None, bias_threads=None, penalty_threads=None):
    """Every instance the host side may launch (both dtypes, every menu tile, every
    specialised kernel size and the generic one)."""
    menu = config.CUDA_TILE_MENU if menu is None else menu
    nb = config.CUDA_BIAS_THREADS if bias_threads is None else bias_threads
    names = []
    sizes = [(0, 0)] + [tuple(k) for k in config.CUDA_KERNEL_SIZES]
    for dtype in CTYPES:
        names += [name(k, dtype, tuple(t), ksize=z) for t in menu for k in SIZED for z in sizes]
        names += [name("dgrad", dtype, tuple(t)) for t in menu]
        names += [name(k, dtype, bias_threads=nb) for k in ("bgrad", "wgrad_reduce", "fill")]
        names.append(name("penalty", dtype, penalty_threads=penalty_threads))
    names.append(name("penalty_reduce", "float64", penalty_threads=penalty_threads))
    return names


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
    import re

    text = ptx.decode() if isinstance(ptx, bytes) else ptx
    by_lowered = {v: k for k, v in lowered.items()}
    out = {}
    for part in re.split(r"(?=\.(?:visible|weak) \.entry )", text)[1:]:
        entry = re.match(r"\.(?:visible|weak) \.entry (\S+?)\(", part).group(1)
        if entry in by_lowered:
            out[by_lowered[entry]] = part
    return out
