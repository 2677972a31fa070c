"""`python -m bench`: time ours vs PyTorch on the suite and print a table.

For each suite shape, layer kind (shared, tiled 2x2, local) and pass (forward, backward = input
+ weight + bias gradients) it reports parameters and weight bytes, the median time, GFLOP/s and
its fraction of this machine's sgemm rate, the weight stream in GB/s and its fraction of the
measured copy bandwidth, the peer's time (PyTorch conv2d for shared, PyTorch unfold + einsum for
tiled and local) and the ratio peer time / our time (> 1: we are faster), then the issue-3
targets with their measured figures, and the peak memory of local2d forward vs unfold + einsum. Before the table it measures the machine's limits (numpy sgemm, a large copy); after
it, the first call after import with a warm kernel cache (SHARENET_FAST_CACHE=1), in a
subprocess. JIT compilation is never inside a timing: every op is called once first.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

from bench import ops
from bench.shapes import SUITE, geometry, make_inputs, rel_error

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOL = 1e-4


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------ timing
def measure(fn, repeat, min_time):
    """Seconds per call: at least `repeat` samples and at least `min_time` seconds in all.

    The caller has already called fn once (JIT compile, allocator and library warm-up).
    """
    samples = []
    while len(samples) < repeat or sum(samples) < min_time:
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return samples


def measure_interleaved(fns, repeat, min_time):
    """{name: seconds per call} for several functions timed in alternation (a, b, a, b, ...),
    each to at least `repeat` samples and `min_time` seconds. On a shared machine the load
    drifts over seconds; alternating lets ours and the peer see the same drift, so their ratio
    is steadier than two back-to-back runs give. Each fn has been called once already."""
    samples = {name: [] for name in fns}

    def done(v):
        return len(v) >= repeat and sum(v) >= min_time

    while not all(done(v) for v in samples.values()):
        for name, fn in fns.items():
            if not done(samples[name]):
                t0 = time.perf_counter()
                fn()
                samples[name].append(time.perf_counter() - t0)
    return samples


def best_of(fn, repeat=3):
    fn()
    return min(measure(fn, repeat, 0.0))


# ---------------------------------------------------------------------- machine limits
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


def _parallel_copy(dst, src, chunks):
    from numba import njit, prange

    global _parallel_copy_kernel
    if _parallel_copy_kernel is None:
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


_parallel_copy_kernel = None


# -------------------------------------------------------------------------- the suite
def weight_stream_bytes(pass_, weight):
    """Bytes of weights a pass must stream: forward reads W; backward reads W (input gradient)
    and writes dW (weight gradient)."""
    return weight.nbytes * (1 if pass_ == "forward" else 2)


def bench_shape(name, shape, repeat, min_time, limits, progress, layers=ops.LAYERS):
    """Measurements (dicts) for one shape: each layer kind, ours and the peer, both passes."""
    g = geometry(shape)
    x, weight0, bias0, grad_out = make_inputs(shape)
    results = []
    for layer in layers:
        weight, bias = ops.layer_params(layer, weight0, bias0, g)
        launchers = {("forward", "ours"): ops.ours_forward(shape, layer, x, weight, bias),
                     ("backward", "ours"): ops.ours_backward(shape, layer, x, weight, grad_out)}
        if ops.torch is not None:
            launchers[("forward", "torch")] = ops.torch_forward(shape, layer, x, weight, bias)
            launchers[("backward", "torch")] = ops.torch_backward(shape, layer, x, weight,
                                                                  grad_out, bias)
        # correctness of the timed call: float64 oracle for shared, the peer's float32 result
        # for tiled/local (their float64 oracle at full size would take minutes)
        outs, checks = {}, {}
        for pass_ in ("forward", "backward"):
            for impl in ("ours", "torch"):
                run = launchers.get((pass_, impl))
                if run is None:
                    continue
                out = run()  # warm-up: JIT compile / oneDNN kernel choice, never timed
                outs[(pass_, impl)] = ((out,) if pass_ == "forward" else tuple(out))
        if layer == "shared":
            ref = ops.reference(shape, layer, x, weight, bias, grad_out)
            refs = {"forward": ref[:1], "backward": ref[1:]}
        elif ops.torch is not None:
            refs = {p: tuple(t.detach().numpy() for t in outs[(p, "torch")])
                    for p in ("forward", "backward")}
        else:
            refs = {}
        for pass_ in ("forward", "backward"):
            if pass_ in refs:
                checks[pass_] = max(rel_error(o, r) for o, r in zip(outs[(pass_, "ours")],
                                                                     refs[pass_]))
                if checks[pass_] >= TOL:
                    log(f"WARNING: {name} {layer} {pass_} ours: relative error "
                        f"{checks[pass_]:.2e} >= {TOL:.0e}")
        del outs
        wbytes = weight.nbytes
        for pass_ in ("forward", "backward"):
            timed = measure_interleaved({impl: launchers[(pass_, impl)] for impl in
                                         ("ours", "torch") if (pass_, impl) in launchers},
                                        repeat, min_time)
            for impl, samples in timed.items():
                median = float(np.median(samples))
                flops = g.flops(pass_)
                gflops = flops / median / 1e9
                wgbps = weight_stream_bytes(pass_, weight) / median / 1e9
                results.append({
                    "shape": name, "dims": shape._asdict(), "layer": layer,
                    "tile": list(ops.grid(layer, g)), "pass": pass_, "impl": impl,
                    "peer": ops.PEER[layer] if impl == "torch" else "sharenet_fast cpu",
                    "params": int(weight.size + bias.size), "weight_bytes": int(wbytes),
                    "samples_s": samples, "median_s": median, "gflops": gflops,
                    "gbps": g.min_bytes(pass_, sharing=layer, tile=ops.TILE) / median / 1e9,
                    "weight_gbps": wgbps,
                    "pct_copy": 100 * wgbps / limits["copy_gbps"],
                    "pct_sgemm": 100 * gflops / limits["sgemm_gflops"],
                    "rel_err": checks.get(pass_) if impl == "ours" else None})
                progress(f"{name} {layer} {pass_} {impl}: {median * 1e3:.2f} ms, "
                         f"{gflops:.1f} GFLOP/s, weights {wgbps:.1f} GB/s ({len(samples)} samples)")
        del launchers, weight, bias
    return results


# ------------------------------------------------------------------------- peak memory
PEAK_SCRIPT = r"""
import json, sys, tracemalloc
import numpy as np
from bench import ops
from bench.shapes import SUITE, geometry, make_inputs
shape = SUITE[sys.argv[1]]
impl = sys.argv[2]
g = geometry(shape)
x, w0, b0, _ = make_inputs(shape)
w, b = ops.layer_params("local", w0, b0, g)
launch = ops.ours_forward if impl == "ours" else ops.torch_forward
# compile / warm up on one image: the measured call then allocates its own output and scratch
# at full size instead of reusing what a same-size call left with the allocator
launch(shape._replace(N=1), "local", x[:1], w, b)()
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
y = launch(shape, "local", x, w, b)()
_, traced = tracemalloc.get_traced_memory()
tracemalloc.stop()
print(json.dumps(dict(weight_bytes=int(w.nbytes), input_bytes=int(x.nbytes),
                      output_bytes=int(np.asarray(y).nbytes), hwm_reset=reset,
                      rss_growth=status("VmHWM") - rss_before, traced_peak=traced)))
"""


def peak_memory(name):
    """Peak memory of local2d forward beyond the inputs, ours vs unfold+einsum, in a fresh
    process each: peak RSS after the call minus the RSS before it (an upper bound on what the
    call allocated: the weights and inputs are already resident), and NumPy's traced peak (our host buffers; the kernels' own buffers are
    one patch per task)."""
    env = dict(os.environ,
               PYTHONPATH=os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p))
    out = {}
    for impl in ("ours", "torch") if ops.torch is not None else ("ours",):
        proc = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, name, impl], env=env, cwd=REPO,
                              capture_output=True, text=True)
        if proc.returncode != 0:
            log(f"peak memory ({impl}) failed:\n{proc.stderr}")
            continue
        out[impl] = json.loads(proc.stdout.strip().splitlines()[-1])
        r = out[impl]
        log(f"peak memory, local forward {name} {impl}: RSS grew {r['rss_growth'] / 1e6:.1f} MB "
            f"(weights {r['weight_bytes'] / 1e6:.0f} MB, input {r['input_bytes'] / 1e6:.1f} MB)")
    return out


# -------------------------------------------------------------- first call after import
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


def startup(shape):
    """First conv2d call in a fresh process: cache cold (compile + save) then cache warm."""
    with tempfile.TemporaryDirectory(prefix="sharenet_fast_cache_") as cache:
        env = dict(os.environ, SHARENET_FAST_CACHE="1", NUMBA_CACHE_DIR=cache,
                   PYTHONPATH=os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p))
        runs = {}
        for which in ("cold_cache", "warm_cache"):
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, "-c", STARTUP_SCRIPT, json.dumps(list(shape))],
                                  env=env, cwd=REPO, capture_output=True, text=True, check=True)
            wall = time.perf_counter() - t0
            runs[which] = json.loads(proc.stdout.strip().splitlines()[-1])
            runs[which]["process_wall_s"] = wall
            log(f"startup ({which.replace('_', ' ')}): first conv2d call "
                f"{runs[which]['first_call_s'] * 1e3:.0f} ms, process {wall:.1f} s")
    return runs


# ----------------------------------------------------------------------------- output
def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info():
    import numba

    info = dict(platform=platform.platform(), processor=cpu_model(),
                python=platform.python_version(), cpu_count=os.cpu_count(),
                numpy=np.__version__, numba=numba.__version__,
                numba_threads=numba.get_num_threads(),
                torch=ops.torch.__version__ if ops.torch else None,
                torch_threads=ops.torch.get_num_threads() if ops.torch else None)
    if hasattr(os, "sched_getaffinity"):
        info["cpu_affinity"] = len(os.sched_getaffinity(0))
    try:
        info["numba_threading_layer"] = numba.threading_layer()  # set once a parallel kernel ran
    except ValueError:
        info["numba_threading_layer"] = None
    try:
        info["git_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                                            capture_output=True, text=True).stdout.strip() or None
    except OSError:
        info["git_commit"] = None
    return info


COLUMNS = ["shape", "layer", "pass", "params", "weight MB", "ours ms", "GFLOP/s", "% sgemm",
           "weight GB/s", "% copy", "peer", "peer ms", "ratio"]
NUMERIC = [False, False, False, True, True, True, True, True, True, True, False, True, True]


def table_rows(results):
    """One row per (shape, layer, pass); '-' where the peer was not measured."""
    by_key = {(r["shape"], r.get("layer", "shared"), r["pass"], r["impl"]): r for r in results}
    rows = []
    for r in results:
        if r["impl"] != "ours":
            continue
        layer = r.get("layer", "shared")
        peer = by_key.get((r["shape"], layer, r["pass"], "torch"))
        tile = r.get("tile", [1, 1])
        rows.append([
            r["shape"], layer if layer != "tiled" else f"tiled {tile[0]}x{tile[1]}", r["pass"],
            f"{r['params']:,}", f"{r['weight_bytes'] / 1e6:.2f}",
            f"{r['median_s'] * 1e3:.2f}", f"{r['gflops']:.1f}", f"{r['pct_sgemm']:.0f}%",
            f"{r['weight_gbps']:.2f}", f"{r['pct_copy']:.0f}%",
            ops.PEER[layer] if peer else "-",
            f"{peer['median_s'] * 1e3:.2f}" if peer else "-",
            f"{peer['median_s'] / r['median_s']:.2f}" if peer else "-",
        ])
    return rows


def format_table(rows, markdown=False):
    if markdown:
        lines = ["| " + " | ".join(COLUMNS) + " |",
                 "|" + "|".join("---:" if n else "---" for n in NUMERIC) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(COLUMNS)]

    def fmt(cells):
        return "  ".join(c.rjust(w) if n else c.ljust(w) for c, w, n in zip(cells, widths, NUMERIC))

    return "\n".join([fmt(COLUMNS), fmt(["-" * w for w in widths])] + [fmt(row) for row in rows])


TARGET_SHAPES = ("alexnet_conv1", "deepface_l4")


def target_lines(results, peak, bullet):
    """The issue-3 targets, each with its measured figure and met / NOT met."""
    by = {(r["shape"], r["layer"], r["pass"], r["impl"]): r for r in results if "layer" in r}
    out = []

    def verdict(ok):
        return "met" if ok else "NOT met"

    for name in dict.fromkeys(r["shape"] for r in results):
        # the targets are stated for alexnet_conv1 and deepface_l4 at their suite batch (8);
        # other shapes and batches are reported without a verdict
        rated = name in TARGET_SHAPES
        for pass_ in ("forward", "backward"):
            lo, pe = by.get((name, "local", pass_, "ours")), by.get((name, "local", pass_, "torch"))
            if lo:
                n = lo["dims"]["N"]
                rated_bw = rated and n == SUITE[name].N

                def tag(ok, target, rated_here):
                    return f" (target {target}: {verdict(ok)})" if rated_here else ""
            if lo and pe:
                ratio = pe["median_s"] / lo["median_s"]
                out.append(f"{bullet}local2d {pass_} {name} (batch {n}): {ratio:.1f}x faster "
                           f"than PyTorch unfold+einsum{tag(ratio >= 5, '>= 5x', rated)}")
            if lo:
                out.append(f"{bullet}local2d {pass_} {name} (batch {n}): weight stream "
                           f"{lo['weight_gbps']:.1f} GB/s = {lo['pct_copy']:.0f}% of the measured "
                           f"copy bandwidth{tag(lo['pct_copy'] >= 50, '>= 50%', rated_bw)}")
            ti, sh = by.get((name, "tiled", pass_, "ours")), by.get((name, "shared", pass_, "ours"))
            if ti and sh:
                ratio = ti["median_s"] / sh["median_s"]
                out.append(f"{bullet}tiled_conv2d 2x2 {pass_} {name}: {ratio:.2f}x our conv2d "
                           f"time (target <= 1.5x: {verdict(ratio <= 1.5)})")
    for impl, r in (peak or {}).items():
        what = "local2d" if impl == "ours" else "PyTorch unfold+einsum"
        growth = r["rss_growth"]
        line = (f"{bullet}peak memory of {what} forward ({r['shape']}, batch 8): "
                f"{growth / 1e6:.1f} MB beyond the resident inputs (weights "
                f"{r['weight_bytes'] / 1e6:.0f} MB, input {r['input_bytes'] / 1e6:.1f} MB, "
                f"output {r['output_bytes'] / 1e6:.1f} MB)")
        if impl == "ours":
            line += f" (target: no buffer larger than the weights: {verdict(growth < r['weight_bytes'])})"
        out.append(line)
    return out


def format_report(report, markdown=False):
    m, lim = report["machine"], report["limits"]
    bullet = "- " if markdown else ""
    peer = (f"PyTorch {m['torch']} ({m['torch_threads']} threads)" if m["torch"]
            else "PyTorch: not installed")
    out = [
        f"{bullet}machine: {m['processor']}, {m['cpu_count']} CPUs, {m['platform']}",
        f"{bullet}software: numpy {m['numpy']}, numba {m['numba']} ({m['numba_threads']} threads, "
        f"layer {m['numba_threading_layer']}), {peer}",
        f"{bullet}sgemm (numpy float32 {lim['sgemm_n']}^3, best of 3): "
        f"{lim['sgemm_gflops']:.1f} GFLOP/s (the '% sgemm' reference)",
        f"{bullet}copy ({lim['copy_mb']} MB float32, read + write, best of 10): "
        f"{lim['copy_gbps']:.1f} GB/s (the '% copy' reference: the larger of np.copyto on one "
        f"thread, {lim.get('copy_gbps_1thread', float('nan')):.1f} GB/s, and a Numba copy on "
        f"all cores, {lim.get('copy_gbps_parallel', float('nan')):.1f} GB/s)",
    ]
    if m.get("load_average_at_start", 0.0) > 0.5:
        out.append(f"{bullet}WARNING: load average {m['load_average_at_start']:.2f} at start: "
                   "other processes shared the cores; timings are noisy")
    out += [
        "",
        format_table(table_rows(report["results"]), markdown),
        "",
        f"float32; median of >= {report['config']['repeat']} runs and >= "
        f"{report['config']['min_time_s']} s per measurement, after a warm-up call; ours and the "
        "peer timed in alternation.",
        "backward = input + weight + bias gradients (2x the forward FLOPs). "
        "% sgemm = GFLOP/s / the sgemm rate above.",
        "weight GB/s = weight bytes streamed / time (forward reads W; backward reads W and "
        "writes dW: 2x); % copy = that / the copy bandwidth above.",
        "peer: PyTorch conv2d (oneDNN) for shared; PyTorch unfold + einsum for tiled and local "
        "(backward: autograd on a graph built outside the timing). ratio = peer time / ours "
        "(> 1: ours faster).",
        "",
    ]
    targets = target_lines(report["results"], report.get("peak_memory"), bullet)
    if targets:
        out += ["Targets (issue 3):"] + targets + [""]
    for name in report["config"]["shapes"]:
        out.append(f"{bullet}{name}: x {report['shapes'][name]}")
    st = report.get("startup")
    if st:
        out += ["", f"First conv2d call after import, SHARENET_FAST_CACHE=1 ({st['shape']}, "
                    f"x {st['dims']}, float32):"]
        for which in ("cold_cache", "warm_cache"):
            r = st[which]
            out.append(f"{bullet}{which.replace('_', ' ')}: first call "
                       f"{r['first_call_s'] * 1e3:.0f} ms, second call "
                       f"{r['second_call_s'] * 1e3:.1f} ms, import {r['import_s'] * 1e3:.0f} ms, "
                       f"whole process {r['process_wall_s']:.1f} s")
    return "\n".join(out)


# ------------------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   help="batch N=2 for every shape and fewer repeats (a smoke-sized run)")
    p.add_argument("--shapes", default=",".join(SUITE),
                   help=f"comma-separated suite shapes (default: all of {', '.join(SUITE)})")
    p.add_argument("--repeat", type=int, default=None,
                   help="minimum samples per measurement (default 5, --quick 3)")
    p.add_argument("--layers", default=",".join(ops.LAYERS),
                   help=f"comma-separated layer kinds (default: {','.join(ops.LAYERS)})")
    p.add_argument("--no-memory", action="store_true",
                   help="skip the local2d peak-memory measurement (two subprocesses)")
    p.add_argument("--json", metavar="PATH", help="write machine info and raw samples here")
    p.add_argument("--markdown", action="store_true", help="print the table as GitHub markdown")
    args = p.parse_args(argv)
    args.shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    args.layers = tuple(s.strip() for s in args.layers.split(",") if s.strip())
    bad = [s for s in args.layers if s not in ops.LAYERS]
    if bad or not args.layers:
        p.error(f"--layers: unknown {bad}; choose from {', '.join(ops.LAYERS)}")
    unknown = [s for s in args.shapes if s not in SUITE]
    if unknown or not args.shapes:
        p.error(f"--shapes: unknown {unknown}; choose from {', '.join(SUITE)}")
    if args.repeat is None:
        args.repeat = 3 if args.quick else 5
    if args.repeat < 1:
        p.error("--repeat must be >= 1")
    return args


def main(argv=None):
    args = parse_args(argv)
    min_time = 0.2 if args.quick else 1.0
    shapes = {n: SUITE[n].with_batch(2) if args.quick else SUITE[n] for n in args.shapes}

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if load > 0.5:
        log(f"WARNING: load average {load:.2f} before starting: other processes share the cores, "
            "so parallel kernels get descheduled and timings are noisy")
    log("measuring machine limits (sgemm, copy) ...")
    limits = dict(sgemm_n=2048, sgemm_gflops=sgemm_gflops(2048),
                  copy_mb=256)
    limits["copy_gbps_1thread"], limits["copy_gbps_parallel"] = copy_gbps(256)
    limits["copy_gbps"] = max(limits["copy_gbps_1thread"], limits["copy_gbps_parallel"])
    log(f"sgemm {limits['sgemm_gflops']:.1f} GFLOP/s, copy {limits['copy_gbps']:.1f} GB/s")
    if ops.torch is None:
        log("PyTorch is not installed: peer columns will be '-'")

    layers = args.layers
    total = len(shapes) * len(layers) * (4 if ops.torch else 2)
    done = [0]

    def progress(msg):
        done[0] += 1
        log(f"[{done[0]}/{total}] {msg}")

    results = []
    for name, shape in shapes.items():
        log(f"{name}: x {shape.describe()}")
        results += bench_shape(name, shape, args.repeat, min_time, limits, progress, layers)

    peak = None
    if "local" in layers and not args.no_memory:
        mem_shape = "alexnet_conv1" if "alexnet_conv1" in args.shapes else args.shapes[0]
        log(f"peak memory: local2d forward in a subprocess ({mem_shape}), ours then the peer ...")
        peak = {impl: dict(r, shape=mem_shape) for impl, r in peak_memory(mem_shape).items()}

    first = args.shapes[0]
    log(f"startup: first call after import in a subprocess ({first}), cache cold then warm ...")
    try:
        st = dict(shape=first, dims=shapes[first].describe(), **startup(shapes[first]))
    except subprocess.CalledProcessError as exc:
        log(f"startup measurement failed:\n{exc.stderr}")
        st = None

    report = dict(machine=dict(machine_info(), load_average_at_start=load), limits=limits,
                  config=dict(quick=args.quick, repeat=args.repeat, min_time_s=min_time,
                              shapes=args.shapes, layers=list(layers), tile=list(ops.TILE)),
                  shapes={n: s.describe() for n, s in shapes.items()},
                  results=results, startup=st, peak_memory=peak)
    print(format_report(report, args.markdown))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
        log(f"wrote {args.json}")
    return 0
