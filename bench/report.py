"""`python -m bench`: time ours vs PyTorch on the suite and print a table.

For each suite shape and pass (forward, backward = input + weight + bias gradients) it reports
the median time, GFLOP/s, GB/s (the pass's minimum bytes), the fraction of this machine's sgemm
rate, the PyTorch peer's time and GFLOP/s, and the ratio torch time / our time (> 1: we are
faster). Before the table it measures the machine's limits (numpy sgemm, a large copy); after
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


def copy_gbps(mbytes=256, repeat=3):
    """Bandwidth ceiling: np.copyto of a float32 array of `mbytes` MB; read + write counted."""
    n = mbytes * 2**20 // 4
    src = np.ones(n, dtype=np.float32)
    dst = np.zeros(n, dtype=np.float32)
    t = best_of(lambda: np.copyto(dst, src), repeat)
    return 2 * src.nbytes / t / 1e9


# -------------------------------------------------------------------------- the suite
def bench_shape(name, shape, repeat, min_time, limits, progress):
    """Measurements (dicts) for one shape: ours and torch, forward and backward."""
    g = geometry(shape)
    x, weight, bias, grad_out = make_inputs(shape)
    ref = ops.reference(shape, x, weight, bias, grad_out)
    launchers = {("forward", "ours"): ops.ours_forward(shape, x, weight, bias),
                 ("backward", "ours"): ops.ours_backward(shape, x, weight, grad_out)}
    if ops.torch is not None:
        launchers[("forward", "torch")] = ops.torch_forward(shape, x, weight, bias)
        launchers[("backward", "torch")] = ops.torch_backward(shape, x, weight, grad_out)
    results = []
    for pass_, impl in [("forward", "ours"), ("forward", "torch"),
                        ("backward", "ours"), ("backward", "torch")]:
        run = launchers.get((pass_, impl))
        if run is None:
            continue
        out = run()  # warm-up: JIT compile / oneDNN kernel choice, never timed
        err = None
        if impl == "ours":
            outs = (out,) if pass_ == "forward" else tuple(out)
            refs = ref[:1] if pass_ == "forward" else ref[1:]
            err = max(rel_error(o, r) for o, r in zip(outs, refs))
            if err >= TOL:
                log(f"WARNING: {name} {pass_} ours: relative error {err:.2e} >= {TOL:.0e}")
        samples = measure(run, repeat, min_time)
        median = float(np.median(samples))
        flops, nbytes = g.flops(pass_), g.min_bytes(pass_)
        gflops = flops / median / 1e9
        results.append({
            "shape": name, "dims": shape._asdict(), "pass": pass_, "impl": impl,
            "samples_s": samples, "median_s": median, "gflops": gflops,
            "gbps": nbytes / median / 1e9, "pct_sgemm": 100 * gflops / limits["sgemm_gflops"],
            "rel_err": err})
        progress(f"{name} {pass_} {impl}: {median * 1e3:.2f} ms, {gflops:.1f} GFLOP/s "
                 f"({len(samples)} samples)")
    return results


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


COLUMNS = ["shape", "pass", "ours ms", "ours GFLOP/s", "ours GB/s", "% peak",
           "PyTorch ms", "PyTorch GFLOP/s", "ratio"]


def table_rows(results):
    """One row per (shape, pass); '-' where PyTorch was not measured."""
    by_key = {(r["shape"], r["pass"], r["impl"]): r for r in results}
    rows = []
    for r in results:
        if r["impl"] != "ours":
            continue
        peer = by_key.get((r["shape"], r["pass"], "torch"))
        rows.append([
            r["shape"], r["pass"], f"{r['median_s'] * 1e3:.2f}", f"{r['gflops']:.1f}",
            f"{r['gbps']:.2f}", f"{r['pct_sgemm']:.0f}%",
            f"{peer['median_s'] * 1e3:.2f}" if peer else "-",
            f"{peer['gflops']:.1f}" if peer else "-",
            f"{peer['median_s'] / r['median_s']:.2f}" if peer else "-",
        ])
    return rows


def format_table(rows, markdown=False):
    numeric = [False, False] + [True] * (len(COLUMNS) - 2)
    if markdown:
        lines = ["| " + " | ".join(COLUMNS) + " |",
                 "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(COLUMNS)]

    def fmt(cells):
        return "  ".join(c.rjust(w) if n else c.ljust(w) for c, w, n in zip(cells, widths, numeric))

    return "\n".join([fmt(COLUMNS), fmt(["-" * w for w in widths])] + [fmt(row) for row in rows])


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
        f"{lim['sgemm_gflops']:.1f} GFLOP/s (the '% peak' reference)",
        f"{bullet}copy (np.copyto {lim['copy_mb']} MB float32, read + write, best of 3): "
        f"{lim['copy_gbps']:.1f} GB/s",
    ]
    if m.get("load_average_at_start", 0.0) > 0.5:
        out.append(f"{bullet}WARNING: load average {m['load_average_at_start']:.2f} at start: "
                   "other processes shared the cores; timings are noisy")
    out += [
        "",
        format_table(table_rows(report["results"]), markdown),
        "",
        f"float32; median of >= {report['config']['repeat']} runs and >= "
        f"{report['config']['min_time_s']} s per measurement, after a warm-up call.",
        "backward = input + weight + bias gradients (2x the forward FLOPs). GB/s = minimum bytes "
        "moved / time.",
        "% peak = ours GFLOP/s / sgemm GFLOP/s. ratio = PyTorch time / ours (> 1: ours faster).",
        "",
    ]
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
    p.add_argument("--json", metavar="PATH", help="write machine info and raw samples here")
    p.add_argument("--markdown", action="store_true", help="print the table as GitHub markdown")
    args = p.parse_args(argv)
    args.shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
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
                  copy_mb=256, copy_gbps=copy_gbps(256))
    log(f"sgemm {limits['sgemm_gflops']:.1f} GFLOP/s, copy {limits['copy_gbps']:.1f} GB/s")
    if ops.torch is None:
        log("PyTorch is not installed: peer columns will be '-'")

    total = len(shapes) * (4 if ops.torch else 2)
    done = [0]

    def progress(msg):
        done[0] += 1
        log(f"[{done[0]}/{total}] {msg}")

    results = []
    for name, shape in shapes.items():
        log(f"{name}: x {shape.describe()}")
        results += bench_shape(name, shape, args.repeat, min_time, limits, progress)

    first = args.shapes[0]
    log(f"startup: first call after import in a subprocess ({first}), cache cold then warm ...")
    try:
        st = dict(shape=first, dims=shapes[first].describe(), **startup(shapes[first]))
    except subprocess.CalledProcessError as exc:
        log(f"startup measurement failed:\n{exc.stderr}")
        st = None

    report = dict(machine=dict(machine_info(), load_average_at_start=load), limits=limits,
                  config=dict(quick=args.quick, repeat=args.repeat, min_time_s=min_time,
                              shapes=args.shapes),
                  shapes={n: s.describe() for n, s in shapes.items()},
                  results=results, startup=st)
    print(format_report(report, args.markdown))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
        log(f"wrote {args.json}")
    return 0
