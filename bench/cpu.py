"""The CPU half of `python -m bench`: perf_counter timing, the machine's limits, and the
--full extras (local2d peak memory, first call after import), each in a fresh process.

The suite and its checks are bench/harness.py's, the tables and JSON bench/report/build.py's, the
targets bench/report/targets.py's; bench/gpu.py is the GPU twin of the CpuTarget below.
"""
from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time

import numpy as np

from bench import ops

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def slug(text):
    """A file-name-safe lower-case form of `text` (results files are named by machine)."""
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def results_stem(kind):
    """bench/results/<kind>_<this CPU's model>_<n>core (no extension)."""
    return os.path.join(REPO, "bench", "results",
                        f"{kind}_" + slug(f"{cpu_model()} {os.cpu_count()}core"))


def ms_range(samples, digits=2):
    """'min-max' of timing samples (seconds) in milliseconds, for the tables' range columns."""
    return f"{min(samples) * 1e3:.{digits}f}-{max(samples) * 1e3:.{digits}f}"


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def write_results(kind, rep, text, json_path=None, save=False):
    """A standalone benchmark's outputs: `rep` as JSON to json_path, and with `save` to
    results_stem(kind).json beside the markdown `text` in results_stem(kind).md."""
    paths = [json_path] if json_path else []
    if save:
        stem = results_stem(kind)
        paths.append(stem + ".json")
        with open(stem + ".md", "w") as f:
            f.write(text.rstrip("\n") + "\n")
        log(f"wrote {stem}.md")
    for path in paths:
        with open(path, "w") as f:
            json.dump(rep, f, indent=1)
        log(f"wrote {path}")


# ------------------------------------------------------------------- several processes
def free_port():
    """A TCP port free on loopback now (for a process group's rendezvous)."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(cmd_of_rank, world, timeout, **popen):
    """Start `world` processes (cmd_of_rank(rank): argv), wait for all, each bounded by
    `timeout` seconds; any left running (one failed, a hang) are killed. [(returncode, log)]:
    stdout and stderr together."""
    procs = [subprocess.Popen(cmd_of_rank(rank), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, **popen)
             for rank in range(world)]
    try:
        logs = [p.communicate(timeout=timeout)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return [(p.returncode, text) for p, text in zip(procs, logs)]


# ------------------------------------------------------------------------------ timing
def measure(fn, repeat, min_time):
    """Seconds per call: at least `repeat` samples and at least `min_time` seconds in all."""
    return measure_interleaved({0: fn}, repeat, min_time)[0]


SETTLE_SKIP_S = 1e-3        # settle() after a call shorter than this: none (quick-run calls)
SETTLE_LIMIT_S = 2.0


def settle(after_s, busy=0.25, quiet=2, limit=SETTLE_LIMIT_S):
    """Wait until this process's other threads are idle after a call that took `after_s`
    seconds: `quiet` windows in a row in which its CPU time (all its threads) grew by at most
    `busy` of the window, the window a tenth of that call (1-10 ms); none after a call under
    SETTLE_SKIP_S; at most `limit` seconds. Returns the seconds waited.
    Why: a library's threads can stay busy after its call has returned. XLA's ran for another
    70-80 ms after jax's alexnet_conv1 local backward (block_until_ready), and the call timed
    next, ours, took 96-148 ms instead of 50-60 (30 involuntary context switches in it vs 1-4).
    One quiet 1 ms window was not enough (XLA's work comes in bursts: ours then took 71-102 ms).
    Every timed call now starts on quiet cores, ours and the peers' alike."""
    if after_s < SETTLE_SKIP_S:
        return 0.0
    window = min(10e-3, max(1e-3, after_s / 10))
    t0 = time.perf_counter()
    run = 0
    while run < quiet and time.perf_counter() - t0 < limit:
        c0 = time.process_time()      # every thread of this process, ns resolution
        time.sleep(window)
        run = run + 1 if time.process_time() - c0 <= busy * window else 0
    return time.perf_counter() - t0


def measure_interleaved(fns, repeat, min_time):
    """{name: seconds per call} for several functions timed in alternation (a, b, a, b, ...),
    each to at least `repeat` samples and `min_time` seconds. On a shared machine the load
    drifts over seconds; alternating lets ours and the peers see the same drift, so their
    ratios are steadier than back-to-back runs give. Each fn has been called once already.
    Each call waits for the cores to settle() first (what the previous call left running is
    not charged to this one)."""
    samples = {name: [] for name in fns}

    def done(v):
        return len(v) >= repeat and sum(v) >= min_time

    last = 1.0      # the callers' warm-up calls came just before
    while not all(done(v) for v in samples.values()):
        for name, fn in fns.items():
            if not done(samples[name]):
                settle(last)
                t0 = time.perf_counter()
                fn()
                last = time.perf_counter() - t0
                samples[name].append(last)
    return samples


def best_of(fn, repeat=3):
    fn()
    return min(measure(fn, repeat, 0.0))


def sgemm_gflops(n=2048, repeat=3):
    """FLOP/s ceiling: numpy float32 n x n @ n x n (the BLAS numpy links), best of `repeat`."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    c = np.empty((n, n), dtype=np.float32)
    t = best_of(lambda: np.matmul(a, b, out=c), repeat)
    return 2 * n**3 / t / 1e9


def copy_gbps(mbytes=256, repeat=10):
    """Bandwidth ceiling: a copy of a float32 array of `mbytes` MB, read + write counted, best of
    `repeat`, done twice: np.copyto (one thread) and a Numba prange copy on every core. Returns
    (one thread, all cores); the report's ceiling is the larger (our kernels use every core)."""
    n = mbytes * 2**20 // 4
    src = np.ones(n, dtype=np.float32)
    dst = np.zeros(n, dtype=np.float32)
    one = best_of(lambda: np.copyto(dst, src), repeat)
    par = best_of(lambda: _parallel_copy(dst, src, 64), repeat)
    return 2 * src.nbytes / one / 1e9, 2 * src.nbytes / par / 1e9


def read_gbps(mbytes=512, repeat=10):
    """Read bandwidth: a read-only sum over a float32 array of `mbytes` MB (twice this VM's
    260 MB L3), a Numba prange over chunks on every core, bytes read counted, best of `repeat`.
    The floor of a pass (bench/harness.py) is its bytes over this: a pass mostly reads, and a
    copy's figure counts a write (and its write-allocate read) that reading does not pay."""
    src = np.ones(mbytes * 2**20 // 4, dtype=np.float32)
    t = best_of(lambda: _parallel_sum(src, 64), repeat)
    return src.nbytes / t / 1e9


_parallel_copy_kernel = _parallel_sum_kernel = None


def _parallel_sum(src, chunks):
    global _parallel_sum_kernel
    if _parallel_sum_kernel is None:
        from numba import njit, prange

        @njit(fastmath=True)      # reassoc: a vectorised sum with several accumulators (inside
        def chunk_sum(a):         # the prange body itself LLVM kept one: half the bandwidth)
            t = np.float32(0.0)
            for i in range(a.shape[0]):
                t += a[i]
            return t

        @njit(parallel=True)
        def kernel(src, chunks):
            n = src.shape[0]
            part = np.zeros(chunks, dtype=np.float32)
            for c in prange(chunks):
                part[c] = chunk_sum(src[c * n // chunks:(c + 1) * n // chunks])
            return part.sum()
        _parallel_sum_kernel = kernel
    return _parallel_sum_kernel(src, chunks)


def _parallel_copy(dst, src, chunks):
    global _parallel_copy_kernel
    if _parallel_copy_kernel is None:
        from numba import njit, prange

        @njit(parallel=True)
        def kernel(dst, src, chunks):
            n = src.shape[0]
            for c in prange(chunks):
                a, b = c * n // chunks, (c + 1) * n // chunks
                d, s = dst[a:b], src[a:b]
                for i in range(b - a):
                    d[i] = s[i]
        _parallel_copy_kernel = kernel
    _parallel_copy_kernel(dst, src, chunks)


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


READ_MB = 512                   # the read bandwidth's array: past any L3 (this VM's is 260 MB)


class CpuTarget:
    """Timing on the host: perf_counter around each call, ours and the peers interleaved."""
    name = "cpu"
    torch_device = "cpu"
    peers_ok = True

    def limits(self, small=False):
        # a copy of 256 MB is well past any L3, even in a quick run; sgemm needs less to peak
        n, mb = (1024, 256) if small else (2048, 256)
        lim = dict(sgemm_n=n, sgemm_gflops=sgemm_gflops(n), copy_mb=mb)
        lim["copy_gbps_1thread"], lim["copy_gbps_parallel"] = copy_gbps(mb)
        lim["copy_gbps"] = max(lim["copy_gbps_1thread"], lim["copy_gbps_parallel"])
        reps = 5 if small else 10
        lim["read_mb"] = READ_MB
        lim["read_gbps"] = read_gbps(READ_MB, reps)
        lim["describe"] = (
            f"sgemm: numpy float32 {n}^3, best of 3: {lim['sgemm_gflops']:.1f} GFLOP/s; "
            f"copy: {mb} MB float32, read + write, best of 10: {lim['copy_gbps']:.1f} GB/s (the "
            f"larger of np.copyto on one thread, {lim['copy_gbps_1thread']:.1f} GB/s, and a "
            f"Numba copy on all cores, {lim['copy_gbps_parallel']:.1f} GB/s); read: a Numba sum "
            f"over {READ_MB} MB float32 on all cores, best of {reps}: {lim['read_gbps']:.1f} GB/s")
        return lim

    def to_device(self, a):
        return a

    def to_host(self, a):
        if hasattr(a, "detach"):             # a PyTorch peer's tensor
            from bench.ops import from_torch

            return from_torch(a)
        return np.asarray(a)

    def time(self, fns, repeat, min_time):
        return measure_interleaved(fns, repeat, min_time)

    def device(self):
        return f"{cpu_model()}, {os.cpu_count()} CPUs"

    def machine(self):
        import llvmlite.binding as ll
        import numba

        info = dict(device=self.device(), processor=cpu_model(), cpu_count=os.cpu_count(),
                    platform=platform.platform(), numba_threads=numba.get_num_threads(),
                    torch_threads=ops.torch.get_num_threads() if ops.torch else None,
                    # what Numba compiles for (bench/isa.py): a CPU name, and its features
                    # ("host": the host's own; "": the name's own)
                    numba_cpu_name=numba.config.CPU_NAME or ll.get_host_cpu_name(),
                    numba_cpu_features=("host" if numba.config.CPU_FEATURES is None
                                        else numba.config.CPU_FEATURES))
        if hasattr(os, "sched_getaffinity"):
            info["cpu_affinity"] = len(os.sched_getaffinity(0))
        try:
            info["numba_threading_layer"] = numba.threading_layer()  # once a kernel ran
        except ValueError:
            info["numba_threading_layer"] = None
        if ops.torch:
            info["onednn"] = onednn_convs()
        return info


ONEDNN_SCRIPT = r"""
import torch
for dt in (torch.float32, torch.bfloat16):
    x = torch.randn(4, 16, 12, 12, dtype=dt, requires_grad=True)
    w = torch.randn(32, 16, 3, 3, dtype=dt, requires_grad=True)
    torch.nn.functional.conv2d(x, w, padding=1).sum().backward()
"""


def onednn_convs():
    """What oneDNN (PyTorch's CPU convolution, the conv2d peer) runs on this machine, in this
    environment (ONEDNN_MAX_CPU_ISA of --isa avx2 included): {"isa": its info line,
    "float32" / "bfloat16": {direction: implementation}}, e.g. bfloat16 forward_training
    "jit_bf16:avx512_core_bf16" (AVX512_BF16) or "brg_conv_fwd:avx512_core_amx" (AMX tiles).
    From ONEDNN_VERBOSE=1 in a fresh process (the variable is read once, at oneDNN's start),
    for a small 3 x 3 conv (oneDNN picks per shape: others may differ); None where that fails.
    An empty dtype: oneDNN ran no convolution in it (PyTorch's own kernel did)."""
    env = dict(os.environ, ONEDNN_VERBOSE="1")
    try:
        out = subprocess.run([sys.executable, "-c", ONEDNN_SCRIPT], env=env, timeout=120,
                             capture_output=True, text=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_onednn_verbose(out)


def parse_onednn_verbose(text):
    """onednn_convs' dict from ONEDNN_VERBOSE=1 output (None without oneDNN's isa line)."""
    info = {"isa": None, "float32": {}, "bfloat16": {}}
    for line in text.splitlines():
        f = line.split(",")
        if "info" in f and any(x.startswith("isa:") for x in f):
            info["isa"] = next(x for x in f if x.startswith("isa:"))[4:]
        elif "exec" in f and "convolution" in f:
            i = f.index("convolution")
            impl, direction, mds = f[i + 1], f[i + 2], f[i + 3]
            dt = "bfloat16" if "src:bf16" in mds else "float32"
            info[dt].setdefault(direction, impl)
    return info if info["isa"] else None


# ------------------------------------------------------------------ CPU extras (--full)
PEAK_SCRIPT = r"""
import json, sys, tracemalloc
import numpy as np
from bench import ops
from bench.shapes import ConvShape, geometry, make_inputs
shape = ConvShape(*json.loads(sys.argv[1]))
impl, layer = sys.argv[2], sys.argv[3]
g = geometry(shape)
x, w0, b0, _ = make_inputs(shape)
w, b = ops.layer_params(layer, w0, b0, g)
launch = ops.ours_forward if impl == "ours" else ops.torch_forward
# compile / warm up on one image: the measured call then allocates its own output and scratch
# at full size instead of reusing what a same-size call left with the allocator
launch(shape._replace(N=1), layer, x[:1], w, b)()
def status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
rss_before = status("VmRSS")
try:  # reset this process's high-water mark to the current RSS (Linux >= 4.0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    reset = True
except OSError:
    reset = False
tracemalloc.start()
y = launch(shape, layer, x, w, b)()
_, traced = tracemalloc.get_traced_memory()
tracemalloc.stop()
print(json.dumps(dict(weight_bytes=int(w.nbytes), input_bytes=int(x.nbytes),
                      output_bytes=int(np.asarray(y).nbytes), hwm_reset=reset,
                      rss_growth=status("VmHWM") - rss_before, traced_peak=traced)))
"""


def _env(**extra):
    return dict(os.environ, **extra,
                PYTHONPATH=os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p))


def peak_memory(name, shape, layer="local2d"):
    """Peak memory of a layer's forward (local2d) beyond the inputs, ours vs unfold+einsum, in a
    fresh process each: peak RSS after the call minus the RSS before it (an upper bound on what the
    call allocated: the weights and inputs are already resident)."""
    out = {}
    for impl in ("ours", "torch") if ops.torch is not None else ("ours",):
        proc = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, json.dumps(list(shape)), impl,
                               layer],
                              env=_env(), cwd=REPO, capture_output=True, text=True)
        if proc.returncode != 0:
            log(f"peak memory ({impl}) failed:\n{proc.stderr}")
            continue
        out[impl] = dict(json.loads(proc.stdout.strip().splitlines()[-1]), shape=name,
                         batch=shape.N)
    return out


STARTUP_SCRIPT = r"""
import json, sys, time
t0 = time.perf_counter()
import sharenet_fast as sf
from bench.shapes import ConvShape, make_inputs
t1 = time.perf_counter()
shape = ConvShape(*json.loads(sys.argv[1]))
x, weight, bias, _ = make_inputs(shape)
t2 = time.perf_counter()
sf.conv2d(x, weight, bias, stride=shape.stride, padding=shape.padding, backend="cpu")
t3 = time.perf_counter()
sf.conv2d(x, weight, bias, stride=shape.stride, padding=shape.padding, backend="cpu")
t4 = time.perf_counter()
print(json.dumps(dict(import_s=t1 - t0, first_call_s=t3 - t2, second_call_s=t4 - t3)))
"""


def startup(name, shape):
    """First conv2d call in a fresh process: cache cold (compile + save) then cache warm."""
    runs = dict(shape=name, dims=shape.describe())
    with tempfile.TemporaryDirectory(prefix="sharenet_fast_cache_") as cache:
        env = _env(SHARENET_FAST_CACHE="1", NUMBA_CACHE_DIR=cache)
        for which in ("cold_cache", "warm_cache"):
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, "-c", STARTUP_SCRIPT, json.dumps(list(shape))],
                                  env=env, cwd=REPO, capture_output=True, text=True)
            if proc.returncode != 0:
                log(f"startup measurement failed:\n{proc.stderr}")
                return None
            runs[which] = dict(json.loads(proc.stdout.strip().splitlines()[-1]),
                               process_wall_s=time.perf_counter() - t0)
    return runs
