"""The GPU half of `python -m bench --gpu`: CUDA-event timing, the device's limits, peers on CUDA.

    python -m bench --gpu [--full] [--backend numba-cuda,cupy] [--save]

The suite and its checks are bench/harness.py's, the tables and JSON bench/report/build.py's, the
targets bench/report/targets.py's; this module supplies the GpuTarget (it imports none of those):
timings are CUDA events around each call on the legacy default stream (which CuPy, PyTorch and
our launches use by default), median of the samples; the limits are a 1 GiB device-to-device
copy (bytes read + written) and an 8192^3 SGEMM through CuPy; peers are PyTorch on CUDA tensors
with TF32 off (cuDNN for conv2d, cuBLAS for unfold+einsum) and cudnn.benchmark on (its algorithm
search happens in the warm-up call). Inputs are CuPy arrays when CuPy sees a GPU, else Numba
device arrays (which is how the simulator smoke test, bench/bench_gpu.py, runs it).
"""
from __future__ import annotations

import platform
import statistics
import time

import numpy as np

# --------------------------------------------------------------------------------- plumbing
def _xp():
    try:
        import cupy

        cupy.cuda.runtime.getDeviceCount()
        return cupy
    except Exception:
        return None


def to_device(a):
    xp = _xp()
    if xp is not None:
        return xp.asarray(a)
    from numba import cuda

    return cuda.to_device(a)


def to_host(a):
    if isinstance(a, (np.ndarray, np.generic)):
        return np.asarray(a)
    if hasattr(a, "get"):                  # CuPy
        return a.get()
    if hasattr(a, "copy_to_host"):         # Numba
        return a.copy_to_host()
    from bench.ops import from_torch       # torch

    return from_torch(a.cpu())


def synchronize():
    from numba import cuda

    cuda.synchronize()
    t = _torch_cuda()
    if t is not None:
        t.cuda.synchronize()


def time_events(fn, reps):
    """Samples (ms) of fn() between CUDA events (fn has been called once already)."""
    return [s * 1e3 for s in GpuTarget().time({0: fn}, reps, 0.0)[0]]


def _torch_cuda():
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    # the peer runs in full float32, like ours: no TF32 in cuDNN or in einsum's matmuls
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.benchmark = True      # cuDNN picks its fastest algorithm (in warm-up)
    return torch


def device_name():
    from numba import cuda

    from sharenet_fast import config

    if config.CUDASIM:
        return "Numba CUDA simulator"
    try:
        name = cuda.get_current_device().name
        return name.decode() if isinstance(name, bytes) else str(name)
    except Exception as exc:  # pragma: no cover
        return f"unknown ({exc})"


# ---------------------------------------------------------------------------------- limits
def _rate(amount, ms):
    """amount per ms / 1e6 (bytes -> GB/s, FLOPs -> GFLOP/s); NaN when no time was measured
    (the simulator's events carry none)."""
    return amount / ms / 1e6 if ms > 0 else float("nan")


def _median_ms(fn, reps):
    fn()                                     # warm-up: allocation, cuBLAS handle and plan
    return statistics.median(time_events(fn, reps))


def machine_limits(reps=10):
    """{'copy_gbps': device-to-device copy (read + write bytes), 'sgemm_gflops': float32 GEMM}."""
    xp = _xp()
    torch = _torch_cuda()
    limits = {}
    if xp is not None:
        n = 256 * 2**20                      # 1 GiB of float32
        a = xp.ones(n, dtype=xp.float32)
        b = xp.empty_like(a)
        limits["copy_gbps"] = _rate(2 * a.nbytes, _median_ms(lambda: b.__setitem__(Ellipsis, a),
                                                             reps))
        del a, b
        m = 8192
        a = xp.random.standard_normal((m, m), dtype=xp.float32)
        c = xp.empty_like(a)
        limits["sgemm_gflops"] = _rate(2 * m**3, _median_ms(lambda: xp.matmul(a, a, out=c),
                                                            reps))
    elif torch is not None:  # pragma: no cover - CuPy is the normal route
        a = torch.ones(256 * 2**20, device="cuda")
        b = torch.empty_like(a)
        limits["copy_gbps"] = _rate(2 * a.numel() * 4, _median_ms(lambda: b.copy_(a), reps))
    return limits


class GpuTarget:
    name = "gpu"
    torch_device = "cuda"

    def __init__(self):
        self.torch = _torch_cuda()
        self.peers_ok = self.torch is not None

    def limits(self, small=False):
        lim = machine_limits(reps=5 if small else 10)
        parts = []
        if "copy_gbps" in lim:
            lim["read_gbps"] = lim["copy_gbps"]      # the floor's bandwidth (bench/harness.py)
            parts.append(f"copy: 1 GiB device to device, read + write, median: "
                         f"{lim['copy_gbps']:.0f} GB/s (also the floor's read bandwidth)")
        if "sgemm_gflops" in lim:
            parts.append(f"sgemm: CuPy float32 8192^3, median: {lim['sgemm_gflops']:.0f} GFLOP/s")
        lim["describe"] = "; ".join(parts) or "not measured (no CuPy on a GPU)"
        return lim

    def to_device(self, a):
        return to_device(a)

    def to_host(self, a):
        return to_host(a)

    def time(self, fns, repeat, min_time):
        """{name: seconds per call}: CUDA events around each call, the functions interleaved,
        each to >= repeat samples and >= min_time seconds of wall time."""
        from numba import cuda

        from sharenet_fast import config

        sim = config.CUDASIM
        samples = {name: [] for name in fns}
        spent = {name: 0.0 for name in fns}
        synchronize()
        while not all(len(samples[n]) >= repeat and spent[n] >= min_time for n in fns):
            for name, fn in fns.items():
                if len(samples[name]) >= repeat and spent[name] >= min_time:
                    continue
                t0 = time.perf_counter()
                start, end = cuda.event(), cuda.event()
                start.record()
                fn()
                end.record()
                end.synchronize()
                wall = time.perf_counter() - t0
                # the simulator's events carry no time (-1 ms): its "device" time is the wall
                samples[name].append(wall if sim else float(start.elapsed_time(end)) / 1e3)
                spent[name] += wall
        return samples

    def device(self):
        return device_name()

    def machine(self):
        info = dict(device=device_name(), processor=platform.processor() or platform.machine(),
                    platform=platform.platform())
        if self.torch is not None:
            info["cudnn"] = self.torch.backends.cudnn.version()
        return info

