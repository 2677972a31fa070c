"""The CUDA C kernels of kernels/ run on the CPU: compiled by g++ against tests/cuda_emu/cuda_emu.h
(blocks in sequence, each block's threads as OS threads meeting at a std::barrier) and driven by
the same host side as on a GPU (sharenet_fast/_gpu_host.py) on NumPy arrays.

This is how the cupy backend's kernels are checked against the oracle without a GPU; NVRTC
compilation (test_cupy_backend.py) checks that the same sources build for the device. Each
argument is handed over as its declared type (sharenet_fast/_gpu_kernels.KERNELS), as
cuLaunchKernel would read it.
"""
import ctypes
import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile

import numpy as np
import pytest

import sharenet_fast as sf
from sharenet_fast import _device, _gpu_host, config, dtypes
from sharenet_fast import _gpu_kernels as decl
from sharenet_fast.cupy_backend import _loader

HERE = os.path.dirname(os.path.abspath(__file__))
EMU_DIR = os.path.join(HERE, "cuda_emu")
BIAS_THREADS = 128
PENALTY_THREADS = config.CUDA_PENALTY_THREADS_GPU
CXX = shutil.which("g++") or shutil.which("c++")


def build(menu=config.CUDA_TILE_MENU_GPU, workdir=None, rows=None):
    """(ctypes library, {instance name: its entry point}) for every instance of `menu` and the
    dtype rows `rows` (default: every dtypes.DTYPES row)."""
    if CXX is None:
        raise RuntimeError("no C++ compiler (g++) found")
    names = _loader.name_expressions(menu, BIAS_THREADS, PENALTY_THREADS, rows)
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
    with open(lib + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)       # one build per library, the other workers wait
        if not os.path.exists(lib):
            src = lib[:-3] + ".cpp"
            with open(src, "w") as f:
                f.write(code)
            tmp = lib + f".{os.getpid()}.tmp"
            proc = subprocess.run([CXX, "-std=c++20", "-O1", "-shared", "-fPIC",
                                   "-Wno-unknown-pragmas", f"-I{EMU_DIR}", f"-I{kdir}", src,
                                   "-o", tmp], capture_output=True, text=True)
            if proc.returncode:
                raise RuntimeError(f"g++ failed:\n{proc.stderr[-5000:]}")
            os.replace(tmp, lib)
    return ctypes.CDLL(lib), {n: f"emu_{i}" for i, n in enumerate(names)}


_C = {np.dtype(np.float32): ctypes.c_float, np.dtype(np.float64): ctypes.c_double,
      np.dtype(np.int64): ctypes.c_longlong}


def _floating(dtype):
    """Guarded with NaN (float32/64, bfloat16, float16), not an integer sentinel."""
    return dtypes.lookup(dtype) is not None


GUARD = 64   # elements of guard band on each side of every array a kernel gets


class EmuDevice:
    """The `dev` of _gpu_host (a _gpu_host.Device) on NumPy arrays, launching the g++-built
    kernels.

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

    def launch(self, tag, dt, tiles, grid, threads, like, args, ksize=None):
        inst = _loader.name(tag, dt, tiles, BIAS_THREADS, ksize, PENALTY_THREADS,
                            decl.out_of(tag, dt, args))
        out = decl.out_of(tag, dt, args)
        self.launched.append(inst)
        declared = decl.KERNELS[tag].args
        assert len(args) == len(declared), (inst, len(args), len(declared))
        values, guarded = [], []
        for (argname, ty), a in zip(declared, args):
            base, pointer, _ = decl.split(ty)
            want = decl.element(base, dt, out)
            if pointer:
                assert isinstance(a, np.ndarray) and a.dtype == want and a.ndim == 1, \
                    f"{inst} argument {argname} ({ty}): got {type(a).__name__} " \
                    f"{getattr(a, 'dtype', '')}"
                assert a.flags.c_contiguous
                fill = np.nan if _floating(a.dtype) else -(2**40)
                buf = np.full(a.size + 2 * GUARD, fill, a.dtype)
                buf[GUARD:GUARD + a.size] = a
                guarded.append((a, buf, buf[GUARD:GUARD + a.size].copy()))
                values.append(ctypes.c_void_p(buf.ctypes.data + GUARD * a.itemsize))
            else:
                assert not isinstance(a, np.ndarray), f"{inst} argument {argname} ({ty})"
                values.append(_C[want](a))
        argv = (ctypes.c_void_p * len(values))(
            *[ctypes.cast(ctypes.pointer(v), ctypes.c_void_p) for v in values])
        gx, gy = grid if isinstance(grid, tuple) else (grid, 1)
        getattr(self.lib, self.entries[inst])(ctypes.c_uint(gx), ctypes.c_uint(gy),
                                              ctypes.c_uint(threads), argv)
        for a, buf, before in guarded:
            for band in (buf[:GUARD], buf[GUARD + a.size:]):
                if _floating(a.dtype):
                    assert np.isnan(band.astype(np.float64)).all(), \
                        f"{inst} wrote outside an array"
                else:
                    assert (band == -(2**40)).all(), f"{inst} wrote outside an array"
            inner = buf[GUARD:GUARD + a.size]
            # copy back what the kernel changed (an unchanged argument may alias a changed
            # one, as the wgrad workspace placeholder aliases the output)
            if not np.array_equal(inner.view(np.uint8), before.view(np.uint8)):
                a.reshape(-1)[...] = inner


# ------------------------------------------------------------- storage and accumulation dtypes
# A row that stores float32 and accumulates in float64: not a row of dtypes.DTYPES, but what a
# bfloat16 row (float32 accumulation) will be to the GPU kernels: the same host side and kernel
# templates with a different (ctype, accum_ctype). The probe below tells the two apart.
F32_ACC64 = dtypes.DType("float32", np.dtype(np.float32), np.dtype(np.float64), "float",
                         "double", 1e-5)
BIG, ONES = 2.0**24, 16
EXACT = {"forward": BIG + ONES, "input": BIG + ONES, "weight_owner": BIG + ONES,
         "weight_partials": BIG + ONES, "bias": BIG + ONES}


def accumulation_probe(dev, dt, put=lambda a: a, get=np.asarray):
    """Every pass of a 1 x 1 conv2d on float32 data whose reduction is 2**24 followed by 16
    ones, run on `dev` with the host side told the DType row is `dt`: {pass: the result}. In
    float32 every 2**24 + 1 rounds back to 2**24; accumulated in float64 the sum, 2**24 + 16,
    is exact and representable in float32. put / get move arrays to the device and back."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_gpu_host, "row", lambda dtype: dt)
        out = _probe(dev, mp, put, get)
    return {k: float(np.asarray(a).reshape(-1)[0]) for k, a in out.items()}


def _probe(dev, monkeypatch, put, get):
    n = ONES + 1
    v = np.ones(n, np.float32)
    v[0] = BIG
    ones = np.ones(n, np.float32)

    def geometry(N, C, K):
        return sf.ConvGeometry.make(N, C, 1, 1, K, 1, 1, 1, 0, 1)

    out = {}
    g = geometry(1, n, 1)                           # y = sum over c of x[c] * w[c]
    out["forward"] = get(_gpu_host.forward(dev, put(v.reshape(1, n, 1, 1)),
                                           put(ones.reshape(1, n, 1, 1)), None, g, (1, 1)))
    g = geometry(1, 1, n)                           # dx = sum over k of w[k] * dy[k]
    out["input"] = get(_gpu_host.input_grad(dev, put(v.reshape(1, n, 1, 1)),
                                            put(ones.reshape(n, 1, 1, 1)), g, (1, 1)))
    g = geometry(n, 1, 1)                           # dw = sum over n of dy[n] * x[n]
    x, dy = put(v.reshape(n, 1, 1, 1)), put(ones.reshape(n, 1, 1, 1))
    monkeypatch.setattr(config, "CUDA_WGRAD_CHUNK", 10**6)          # one chunk: plain add
    out["weight_owner"] = get(_gpu_host.weight_grad(dev, dy, x, g, (1, 1), (1, 1, 1, 1)))
    monkeypatch.setattr(config, "CUDA_WGRAD_CHUNK", 8)              # partials, reduced
    out["weight_partials"] = get(_gpu_host.weight_grad(dev, dy, x, g, (1, 1), (1, 1, 1, 1),
                                                       None, True))
    out["bias"] = get(_gpu_host.bias_grad(dev, put(v.reshape(n, 1, 1, 1)), (1, 1), (1,)))
    return out
