"""The CUDA C kernels of kernels/ run on the CPU: compiled by g++ against tests/cuda_emu/cuda_emu.h
(blocks in sequence, each block's threads as OS threads meeting at a std::barrier) and driven by
the same host side as on a GPU (sharenet_fast/_gpu_host.py) on NumPy arrays.

This is how the cupy backend's kernels are checked against the oracle without a GPU; NVRTC
compilation (test_cupy_backend.py) checks that the same sources build for the device.
"""
import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile

import numpy as np

from sharenet_fast import _device, config
from sharenet_fast.cupy_backend import _loader

HERE = os.path.dirname(os.path.abspath(__file__))
EMU_DIR = os.path.join(HERE, "cuda_emu")
BIAS_THREADS = 128
PENALTY_THREADS = config.CUDA_PENALTY_THREADS_GPU
CXX = shutil.which("g++") or shutil.which("c++")


def build(menu=config.CUDA_TILE_MENU_GPU, workdir=None):
    """(ctypes library, {instance name: its entry point}) for every instance of `menu`."""
    if CXX is None:
        raise RuntimeError("no C++ compiler (g++) found")
    names = _loader.name_expressions(menu, BIAS_THREADS, PENALTY_THREADS)
    lines = ['#include "cuda_emu.h"'] + [f'#include "{src}"' for src in _loader.SOURCES]
    lines += [f'extern "C" void emu_{i}(unsigned gx, unsigned gy, unsigned t, void** a) '
              f'{{ emu_launch(&{n}, gx, gy, t, a); }}' for i, n in enumerate(names)]
    code = "\n".join(lines) + "\n"
    kdir = _loader.kernel_dir()
    digest = hashlib.sha1(code.encode())
    for d in (kdir, EMU_DIR):
        for f in sorted(os.listdir(d)):
            with open(os.path.join(d, f), "rb") as fh:
                digest.update(fh.read())
    workdir = workdir or os.path.join(tempfile.gettempdir(), "sharenet_cuda_emu")
    os.makedirs(workdir, exist_ok=True)
    lib = os.path.join(workdir, f"emu_{digest.hexdigest()[:16]}.so")
    if not os.path.exists(lib):
        src = lib[:-3] + ".cpp"
        with open(src, "w") as f:
            f.write(code)
        tmp = lib + f".{os.getpid()}.tmp"
        proc = subprocess.run([CXX, "-std=c++20", "-O1", "-pthread", "-shared", "-fPIC",
                               "-Wno-unknown-pragmas", f"-I{EMU_DIR}", f"-I{kdir}", src, "-o",
                               tmp], capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(f"g++ failed:\n{proc.stderr[-5000:]}")
        os.replace(tmp, lib)
    return ctypes.CDLL(lib), {n: f"emu_{i}" for i, n in enumerate(names)}


_C = {np.dtype(np.float32): ctypes.c_float, np.dtype(np.float64): ctypes.c_double}


GUARD = 64   # elements of guard band on each side of every array a kernel gets


class EmuDevice:
    """The `dev` of _gpu_host on NumPy arrays, launching the g++-built kernels.

    Every array argument is handed to the kernel inside guard bands (NaN for floating point,
    a sentinel for integers): a read past either end feeds NaN into a sum and shows in the
    result, a write past either end changes a guard, which launch() checks afterwards."""

    def __init__(self, lib, entries):
        self.lib, self.entries = lib, entries
        self.launched = []

    empty = staticmethod(lambda like, shape, dtype: np.full(shape, np.nan, dtype))  # poisoned
    zeros = staticmethod(lambda like, shape, dtype: np.zeros(shape, dtype))
    to_device_like = staticmethod(lambda like, a: np.ascontiguousarray(a))
    flat = staticmethod(_device.flat)

    def launch(self, name, dtype, tiles, grid, threads, like, *args, ksize=None):
        inst = _loader.name(name, np.dtype(dtype).name, tiles, BIAS_THREADS, ksize,
                            PENALTY_THREADS)
        self.launched.append(inst)
        values, guarded = [], []
        for a in args:
            if isinstance(a, np.ndarray):
                assert a.flags.c_contiguous
                fill = np.nan if a.dtype.kind == "f" else -(2**40)
                buf = np.full(a.size + 2 * GUARD, fill, a.dtype)
                buf[GUARD:GUARD + a.size] = a.reshape(-1)
                guarded.append((a, buf, buf[GUARD:GUARD + a.size].copy()))
                values.append(ctypes.c_void_p(buf.ctypes.data + GUARD * a.itemsize))
            elif isinstance(a, (bool, int, np.bool_, np.integer)):
                values.append(ctypes.c_longlong(int(a)))
            elif isinstance(a, np.floating):
                values.append(_C[a.dtype](a))
            else:
                raise TypeError(f"kernel argument of type {type(a).__name__}")
        argv = (ctypes.c_void_p * len(values))(
            *[ctypes.cast(ctypes.pointer(v), ctypes.c_void_p) for v in values])
        gx, gy = grid if isinstance(grid, tuple) else (grid, 1)
        getattr(self.lib, self.entries[inst])(ctypes.c_uint(gx), ctypes.c_uint(gy),
                                              ctypes.c_uint(threads), argv)
        for a, buf, before in guarded:
            for band in (buf[:GUARD], buf[GUARD + a.size:]):
                if a.dtype.kind == "f":
                    assert np.isnan(band).all(), f"{inst} wrote outside an array"
                else:
                    assert (band == -(2**40)).all(), f"{inst} wrote outside an array"
            inner = buf[GUARD:GUARD + a.size]
            # copy back what the kernel changed (an unchanged argument may alias a changed
            # one, as the wgrad workspace placeholder aliases the output)
            if not np.array_equal(inner, before, equal_nan=True):
                a.reshape(-1)[...] = inner
