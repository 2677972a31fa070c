"""`python -m bench`: this machine's limits, then ours against every PyTorch peer on the suite.

    python -m bench                     quick run: the suite at batch 2 with outputs cut to at
                                        most 32 x 32, CPU, float32 (~83 s on 2 cores cold, ~40 s
                                        with the kernels in Numba's cache: bench/precompile.py;
                                        --dtypes float32,bfloat16: ~115 s / ~70 s)
    python -m bench --full              the docs/design.md suite at its own batch, float32 and
                                        bfloat16, plus the local2d peak memory, the
                                        first-call-after-import cost and the sharing ops'
                                        tables (bench/sharing.py)
    python -m bench --gpu [--full]      the same on the GPU (batch 8, --full: batch 64) with every
                                        available GPU backend, cuDNN with TF32 off as the peer
    python -m bench --isa avx2 [...]    the CPU run again in a child process compiled for AVX2
                                        only (bench/isa.py: our kernels, oneDNN, MKL, OpenBLAS,
                                        XLA); saved files get an _avx2 suffix
    options: --backend B[,B] --shapes S[,S] --layers L[,L] --batch N --dtypes float32[,bfloat16]
             --repeat N --min-time S
             --json PATH --plot STEM --markdown --save --isa native|avx2
             (--layers: op names conv2d, tiled_conv2d, local2d; shared, tiled, local also work)

It measures the machine's limits first (CPU: NumPy sgemm, a large copy and a large read-only
sum; GPU: CuPy sgemm and a device copy, which is also its read bandwidth), then, for each suite
shape x layer kind of the op table (conv2d, tiled_conv2d 2x2, local2d) x pass (forward;
backward = input + weight + bias gradients; on the GPU also conv2d's weight gradient alone,
atomic and deterministic; local2d's backward into a grad_weight= buffer and its soft-sharing
penalty), times each of our backends and each installed peer (torch conv2d for conv2d; unfold +
einsum for all three; on the CPU with --full, tf-keras LocallyConnected2D and JAX
conv_general_dilated_local for local2d) in alternation, after a warm-up call (JIT compilation
and library autotuning are never timed), checks every output against a reference
(bench/harness.py), and prints one table per shape: median ms, the floor (the least time the
pass's bytes and FLOPs allow under the measured read bandwidth and sgemm rate) and the % of it
reached, GFLOP/s and its % of the sgemm rate, the bytes the pass must move per second and its %
of the copy bandwidth, the time ratio to ours, parameters and weight bytes. Then the targets of
bench/report/targets.py with the measured figure and met / NOT met.

JSON (--json, --save): machine, versions, limits, config and every timing's raw samples; checked
against bench/report/schema.py before it is written. `python -m bench.report.compare A.json
B.json` diffs two runs; `python -m bench.report.plots A.json` (or --plot here) draws
time-per-layer and roofline PNGs.
"""
from __future__ import annotations

import argparse
import json
import os
from importlib import metadata
import platform
import subprocess
import sys
import time

import numpy as np

import sharenet_fast as sf
from bench import harness, isa, ops, precompile
from bench.report import schema, targets
from bench.cpu import REPO, CpuTarget, log, peak_memory, slug, startup
from bench.sharing import sharing_ops, sharing_steps, sharing_tables
from bench.shapes import SUITE, geometry

RESULTS = os.path.join(REPO, "bench", "results")
CPU_BACKENDS = ("cpu",)
GPU_BACKENDS = ("numba-cuda", "cupy")
# per mode and target: batch (None: the suite's own), minimum samples, minimum seconds per timing
# and, quick only, the largest output grid: the input is cut so P, Q <= grid (a local layer's
# weights grow with P*Q: alexnet_conv1's 55 x 55 are 422 MB, its 32 x 32 cut 143 MB)
# and the storage dtypes timed (the quick CPU run float32 only: bfloat16 doubles its time)
MODES = {("quick", "cpu"): dict(batch=2, repeat=3, min_time=0.1, grid=32, dtypes="float32"),
         ("full", "cpu"): dict(batch=None, repeat=5, min_time=1.0, grid=None,
                               dtypes="float32,bfloat16"),
         ("quick", "gpu"): dict(batch=8, repeat=10, min_time=0.05, grid=None,
                                dtypes="float32,bfloat16"),
         ("full", "gpu"): dict(batch=64, repeat=20, min_time=0.2, grid=None,
                               dtypes="float32,bfloat16")}


# ---------------------------------------------------------------------------- progress
class Progress:
    """A progress bar on stderr: redrawn in place on a terminal, one line per step otherwise
    (CI logs). log() prints a message above the bar."""

    def __init__(self, total, stream=None, width=24):
        self.total, self.done, self.width = max(total, 1), 0, width
        self.stream = stream if stream is not None else sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.t0 = time.perf_counter()
        self.label = ""

    def _line(self):
        el = time.perf_counter() - self.t0
        frac = self.done / self.total
        bar = "#" * int(self.width * frac) + "." * (self.width - int(self.width * frac))
        # no estimate over the first tenth: those steps carry the JIT compilation
        left = (f", ~{_clock(el / self.done * (self.total - self.done))} left"
                if self.done >= self.total / 10 else "")
        return f"[{bar}] {self.done}/{self.total} {_clock(el)}{left}  {self.label}"

    def step(self, label):
        self.done += 1
        self.label = label
        if self.tty:
            self.stream.write("\r\033[K" + self._line())
        else:
            self.stream.write(self._line() + "\n")
        self.stream.flush()

    def log(self, msg):
        if self.tty and self.done:
            self.stream.write("\r\033[K" + msg + "\n" + self._line())
        else:
            self.stream.write(msg + "\n")
        self.stream.flush()

    def close(self):
        if self.tty and self.done:
            self.stream.write("\n")
            self.stream.flush()


def _clock(s):
    return f"{int(s) // 60}:{int(s) % 60:02d}"


# ----------------------------------------------------------------------------- output
COLUMNS = ["layer", "params", "weight MB", "pass", "impl", "ms", "floor ms", "% floor",
           "GFLOP/s", "% sgemm", "GB/s", "% copy", "ratio", "rel err"]
NUMERIC = [False, True, True, False, False, True, True, True, True, True, True, True, True, True]


def _pct(v):
    return "-" if v is None or v != v else f"{v:.0f}%"


def shape_rows(results, shape):
    """Table rows of one shape: per layer and pass, ours then the peers; ratio = this row's
    time / the first of ours (> 1: ours faster)."""
    rows, last_layer = [], None
    rs = [r for r in results if r["shape"] == shape]
    for r in rs:
        label = schema.label(r)
        first = next(o for o in rs if o["layer"] == r["layer"] and schema.label(o) == label)
        layer = r["layer"]
        if ops.SPECS[layer].sharing == "tiled":
            layer += f" {r['grid'][0]}x{r['grid'][1]}"
        new = r["layer"] != last_layer
        last_layer = r["layer"]
        ratio = (r["median_s"] / first["median_s"]
                 if r is not first and first["median_s"] > 0 else None)
        rows.append([
            layer if new else "", f"{r['params']:,}" if new else "",
            f"{r['weight_bytes'] / 1e6:.2f}" if new else "", label, r["label"],
            f"{r['median_s'] * 1e3:.3f}",
            f"{r['floor_s'] * 1e3:.3f}" if r["floor_s"] is not None else "-",
            _pct(r["pct_floor"]), f"{r['gflops']:.1f}", _pct(r["pct_sgemm"]),
            f"{r['gbps']:.1f}", _pct(r["pct_copy"]),
            f"{ratio:.2f}" if ratio is not None else "-",
            f"{r['rel_err']:.1e}" if r["rel_err"] is not None else "-"])
    return rows


def format_table(rows, markdown=False):
    if markdown:
        lines = ["| " + " | ".join(COLUMNS) + " |",
                 "|" + "|".join("---:" if n else "---" for n in NUMERIC) + "|"]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(COLUMNS)]

    def fmt(cells):
        return "  ".join(c.rjust(w) if n else c.ljust(w)
                         for c, w, n in zip(cells, widths, NUMERIC)).rstrip()

    return "\n".join([fmt(COLUMNS), fmt(["-" * w for w in widths])] + [fmt(row) for row in rows])


def format_report(report, markdown=False):
    m, lim, cfg = report["machine"], report["limits"], report["config"]
    v = report["versions"]
    bullet = "- " if markdown else ""
    out = [f"{bullet}machine: {m['device']}, {m.get('platform', '')}"
           + (f", compiled for {m['isa']}" if cfg["target"] == "cpu" else ""),
           f"{bullet}software: " + ", ".join(f"{k} {val}" for k, val in v.items() if val),
           f"{bullet}limits: {lim.get('describe', 'not measured')}",
           *([f"{bullet}{onednn_line(m['onednn'])}"] if m.get("onednn") else []),
           f"{bullet}run: {cfg['mode']} ({cfg['target']}), backends {', '.join(cfg['backends'])},"
           f" median of >= {cfg['repeat']} samples and >= {cfg['min_time_s']} s per timing, "
           "ours and the peers timed in alternation after a warm-up call, each call on quiet "
           "cores"]
    if m.get("load_average_at_start", 0.0) > 0.5:
        out.append(f"{bullet}WARNING: load average {m['load_average_at_start']:.2f} at start: "
                   "other processes shared the cores; timings are noisy")
    for name in cfg["shapes"]:
        rows = shape_rows(report["results"], name)
        if not rows:
            continue
        d = report["shapes"][name]
        out += ["", f"{'### ' if markdown else ''}{name}: x {d['describe']} -> "
                    f"{d['P']}x{d['Q']} outputs, {d['gflop_forward']:.2f} GFLOP forward", "",
                format_table(rows, markdown)]
    out += [
        "",
        "ms: median; backward = input + weight + bias gradients (2x the forward FLOPs); "
        "weight / weight (deterministic): conv2d's weight gradient alone, atomic and "
        "deterministic reduction; soft_sharing_penalty: local2d's banks toward their mean bank "
        "with both gradients (a, b read, grad_a, grad_b read and written: 6 streams).",
        "backward (grad_weight=): local2d's backward adding dW into a buffer (hard sharing's "
        "path; the buffer is read too).",
        "floor ms = max(the bytes the pass must move / the read bandwidth, its FLOPs / the "
        "sgemm rate): the least time this machine allows; % floor = floor / ms (100%: at the "
        "roof).",
        "% sgemm = GFLOP/s / the sgemm rate; GB/s = the bytes the pass must move (each tensor "
        "read or written once) per second; % copy = that / the copy bandwidth.",
        "ratio = this row's time / the first 'ours' row's (> 1: ours faster); rel err = "
        "||out - ref|| / ||ref|| against the float64 oracle (conv2d, CPU) or the first peer "
        "(its outputs in our layouts).",
    ]
    out += sharing_tables(report.get("sharing"), markdown)
    title, lines = targets.section(report)
    if lines:
        out += ["", title + ":"] + [bullet + line for line in lines]
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


def onednn_line(info):
    """One line naming what oneDNN (the PyTorch conv2d peer's library) ran, per dtype."""
    def impls(d):
        if not d:
            return "not oneDNN (PyTorch's own kernel)"
        names = sorted(set(d.values()))
        return (names[0] if len(names) == 1
                else ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in d.items()))
    return (f"oneDNN (PyTorch's conv2d): {info['isa']}; float32 convs {impls(info['float32'])}, "
            f"bfloat16 convs {impls(info['bfloat16'])}")


def versions():
    import numba

    v = dict(sharenet_fast=sf.__version__, python=platform.python_version(),
             numpy=np.__version__, numba=numba.__version__,
             torch=ops.torch.__version__ if ops.torch else None)
    for mod in ("numba_cuda", "cupy"):
        try:
            v[mod.replace("_", "-")] = __import__(mod).__version__
        except Exception:
            v[mod.replace("_", "-")] = None
    for dist in ("tensorflow", "tf-keras", "jax", "jaxlib"):   # peers: not imported for this
        try:
            v[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            v[dist] = None
    try:
        v["git"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                                  capture_output=True, text=True).stdout.strip() or None
    except OSError:
        v["git"] = None
    return v


# ------------------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[2:9]))
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", dest="mode", action="store_const", const="quick",
                      help="the suite at batch 2, outputs cut to <= 32 x 32 (GPU: batch 8, "
                           "whole layers), short timings (the default)")
    mode.add_argument("--full", dest="mode", action="store_const", const="full",
                      help="the suite at its own batch (GPU: 64), longer timings, plus peak "
                           "memory and first-call cost on the CPU")
    p.add_argument("--gpu", action="store_true",
                   help="benchmark the GPU backends (default: every available one)")
    p.add_argument("--backend", help="comma-separated backends of ours to time (CPU: cpu; "
                                     "GPU: numba-cuda, cupy); a GPU backend implies --gpu")
    p.add_argument("--shapes", default=",".join(SUITE),
                   help=f"comma-separated suite shapes (default: all of {', '.join(SUITE)})")
    p.add_argument("--layers", default=",".join(ops.LAYERS),
                   help=f"comma-separated layer kinds: op names (default: "
                        f"{','.join(ops.LAYERS)}; the sharing words shared, tiled, local work too)")
    p.add_argument("--batch", type=int, help="batch size for every shape (overrides the mode)")
    p.add_argument("--dtypes", help="comma-separated storage dtypes to time: float32, bfloat16 "
                                    "(default: both with --full and on the GPU, float32 in the "
                                    "quick CPU run)")
    p.add_argument("--repeat", type=int, help="minimum samples per timing")
    p.add_argument("--min-time", type=float, help="minimum seconds per timing")
    p.add_argument("--json", metavar="PATH", help="write machine, limits and raw samples here")
    p.add_argument("--plot", metavar="STEM",
                   help="write STEM_times.png and STEM_roofline.png (needs matplotlib)")
    p.add_argument("--markdown", action="store_true", help="print the tables as markdown")
    p.add_argument("--save", action="store_true",
                   help="write bench/results/<cpu|gpu>_<machine>[_avx2].{json,md} and both "
                        "plots")
    p.add_argument("--isa", choices=isa.ISAS, default=isa.NATIVE,
                   help="CPU run: compile for the host (native, the default) or for AVX2 only, "
                        "with oneDNN, MKL, OpenBLAS and XLA limited to AVX2 too (bench/isa.py; "
                        "a child process)")
    args = p.parse_args(argv)
    args.mode = args.mode or "quick"
    args.shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    words = [s.strip() for s in args.layers.split(",") if s.strip()]
    bad = []
    for w in words:
        try:
            ops.layer_name(w)
        except ValueError:
            bad.append(w)
    if bad or not words:
        p.error(f"--layers: unknown {bad}; choose from {', '.join(ops.LAYERS)}")
    args.layers = tuple(dict.fromkeys(ops.layer_name(w) for w in words))
    unknown = [s for s in args.shapes if s not in SUITE]
    if unknown or not args.shapes:
        p.error(f"--shapes: unknown {unknown}; choose from {', '.join(SUITE)}")
    known = CPU_BACKENDS + GPU_BACKENDS
    if args.backend:
        args.backend = [b.strip() for b in args.backend.split(",") if b.strip()]
        bad = [b for b in args.backend if b not in known]
        if bad or not args.backend:
            p.error(f"--backend: unknown {bad}; choose from {', '.join(known)}")
        gpu = [b in GPU_BACKENDS for b in args.backend]
        if any(gpu) and not all(gpu):
            p.error("--backend: CPU and GPU backends run in separate reports (--gpu or not)")
        if args.gpu and not any(gpu):
            p.error("--backend cpu with --gpu: name a GPU backend (numba-cuda, cupy)")
        args.gpu = args.gpu or any(gpu)
    args.target = "gpu" if args.gpu else "cpu"
    if args.gpu and args.isa != isa.NATIVE:
        p.error("--isa: the CPU run's (the GPU kernels do not depend on it)")
    defaults = MODES[(args.mode, args.target)]
    for key in ("batch", "repeat"):
        if getattr(args, key) is not None and getattr(args, key) < 1:
            p.error(f"--{key} must be >= 1")
    if args.min_time is not None and args.min_time < 0:
        p.error("--min-time must be >= 0")
    args.dtypes = tuple(d.strip() for d in (args.dtypes or defaults["dtypes"]).split(",")
                        if d.strip())
    bad = [d for d in args.dtypes if d not in ("float32", harness.REDUCED)]
    if bad or "float32" not in args.dtypes:
        p.error(f"--dtypes: float32, optionally with {harness.REDUCED}; got {bad or args.dtypes}")
    args.batch = args.batch or defaults["batch"]
    args.repeat = args.repeat or defaults["repeat"]
    args.min_time = defaults["min_time"] if args.min_time is None else args.min_time
    args.grid = defaults["grid"]
    return args


def make_target(args):
    """(target, backends) or (None, reason) when the asked-for backends cannot run here."""
    avail = sf.backends()
    if args.target == "cpu":
        backends = args.backend or list(CPU_BACKENDS)
    else:
        backends = args.backend or [b for b in GPU_BACKENDS if avail[b] == "available"]
        if not backends:
            return None, "no GPU backend is available: " + "; ".join(
                f"{b}: {avail[b]}" for b in GPU_BACKENDS)
    missing = [f"{b}: {avail[b]}" for b in backends if avail[b] != "available"]
    if missing:
        return None, "not available here: " + "; ".join(missing)
    if args.target == "cpu":
        return CpuTarget(), backends
    from bench.gpu import GpuTarget

    return GpuTarget(), backends


def run(args, progress_stream=None, shapes=None):
    """The whole report as a dict (bench/report/schema.py). `shapes` ({name: ConvShape}) replaces
    the
    suite (tests run tiny layers)."""
    target, backends = make_target(args)
    if target is None:
        raise SystemExit(backends)
    suite = shapes is None
    if suite:
        shapes = {n: SUITE[n].with_batch(args.batch) if args.batch else SUITE[n]
                  for n in args.shapes}
        if args.grid:
            shapes = {n: s.shrunk(s.N, args.grid) for n, s in shapes.items()}
    args.shapes = list(shapes)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if load > 0.5:
        log(f"WARNING: load average {load:.2f} before starting: other processes share the "
            "cores, so timings are noisy")
    if suite and args.target == "cpu" and "cpu" in backends and sf.config.CACHE:
        log(f"compiling our CPU kernels into Numba's cache, {os.cpu_count()} processes ...")
        wall, errors = precompile.run(shapes, args.layers, args.mode, dtypes=args.dtypes)
        log(f"compiled in {wall:.0f} s" + "".join(f"; a worker failed: {e}" for e in errors))
    log(f"{target.device()}: measuring the machine's limits ...")
    limits = target.limits(small=args.mode == "quick")
    log(limits.get("describe", "no limits measured"))
    full = args.mode == "full"
    if not target.peers_ok:
        log("PyTorch has no CUDA here: no GPU peers")
    else:
        for impl, why in ops.missing_peers(args.layers, target.torch_device).items():
            log(f"peer {impl} ({ops.peer_label(impl, target.torch_device)}): {why}")
        slow = {n for layer in args.layers for n in ops.peer_names(layer, target.torch_device)
                if not full and ops.PEERS[n].full_only}
        if slow:
            log(f"peers {', '.join(sorted(slow))}: timed by --full only (seconds per backward "
                "call: they would make the quick run several minutes)")
    steps = harness.plan(target, args.layers, backends, full=full, dtypes=args.dtypes)
    extras = (args.target == "cpu" and args.mode == "full"
              and any(ops.SPECS[layer].sharing == "local" for layer in args.layers))
    # a --full CPU run of the whole suite also times the sharing ops (grouped layers, the
    # neighbour penalty, bank averaging) at their own shapes: bench/groups.py, bench/neighbour.py
    with_sharing = extras and suite and set(args.layers) == set(ops.LAYERS)
    progress = Progress(len(steps) * len(shapes) + (3 if extras else 0)
                        + (sharing_steps() if with_sharing else 0), progress_stream)
    results = []
    for name, shape in shapes.items():
        progress.log(f"{name}: x {shape.describe()}")
        results += harness.bench_shape(target, name, shape, args.layers, backends,
                                       args.repeat, args.min_time, limits, progress, full,
                                       args.dtypes)
    peak = st = None
    if extras:
        mem = "alexnet_conv1" if "alexnet_conv1" in shapes else args.shapes[0]
        local = next(n for n in args.layers if ops.SPECS[n].sharing == "local")
        peak = peak_memory(mem, shapes[mem], local)
        progress.step(f"peak memory of {local} forward ({mem}), ours and the peer")
        st = startup(args.shapes[0], shapes[args.shapes[0]])
        progress.step("first call after import, cache cold")
        progress.step("first call after import, cache warm")
    sharing = sharing_ops(limits, args.repeat, progress.step) if with_sharing else None
    progress.close()
    report = dict(
        schema=schema.VERSION,
        machine=dict(target.machine(), load_average_at_start=load, isa=args.isa,
                     isa_env=isa.VARS[args.isa], date=time.strftime("%Y-%m-%d %H:%M:%S")),
        versions=versions(), limits=limits,
        config=dict(mode=args.mode, target=args.target, backends=backends, repeat=args.repeat,
                    min_time_s=args.min_time, batch=args.batch, max_grid=args.grid,
                    dtypes=list(args.dtypes),
                    shapes=args.shapes, layers=list(args.layers), tile=list(ops.TILE),
                    peers=sorted({r["impl"] for r in results if r["role"] == "peer"})),
        shapes={n: dict(s._asdict(), describe=s.describe(), P=geometry(s).P, Q=geometry(s).Q,
                        # the same for every layer kind: one bank or many, one MAC per tap
                        gflop_forward=ops.SPECS[ops.LAYERS[0]].flops(geometry(s), "forward")
                        / 1e9)
                for n, s in shapes.items()},
        results=results, startup=st, peak_memory=peak, sharing=sharing)
    problems = schema.validate(report)
    if problems:  # a bug in this file: say so rather than write a file compare.py can't read
        raise RuntimeError("report does not match bench/report/schema.py: "
                           + "; ".join(problems[:5]))
    return report


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    env = isa.env(args.isa)
    if args.target == "cpu":             # see bench/precompile.py; SHARENET_FAST_CACHE=0 opts out
        env.setdefault("SHARENET_FAST_CACHE", "1")
    if env != dict(os.environ):          # the libraries read these when they load: a child
        changed = [f"{k}={v}" for k, v in env.items() if os.environ.get(k) != v]
        unset = [k for k in os.environ if k not in env]
        log("running the benchmark in a child process with "
            + " ".join(changed + [f"{k} unset" for k in unset]))
        return subprocess.call([sys.executable, "-m", "bench", *argv], env=env, cwd=REPO)
    try:
        report = run(args)
    except SystemExit as exc:
        if isinstance(exc.code, str):
            log(f"python -m bench: {exc.code}")
            return 2
        raise
    text = format_report(report, args.markdown)
    print(text)
    outputs = []
    if args.save:
        m = report["machine"]
        stem = os.path.join(RESULTS, f"{args.target}_" + slug(
            m["device"] if args.target == "gpu" else f"{m['processor']} {m['cpu_count']}core"))
        stem += "" if args.isa == isa.NATIVE else f"_{args.isa}"
        os.makedirs(RESULTS, exist_ok=True)
        with open(stem + ".md", "w") as f:
            f.write(format_report(report, markdown=True) + "\n")
        outputs.append(stem + ".md")
        args.json = args.json or stem + ".json"
        args.plot = args.plot or stem
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
        outputs.append(args.json)
    if args.plot:
        from bench.report import plots

        try:
            outputs += plots.plot_all(report, args.plot)
        except ImportError:
            log("--plot needs matplotlib (pip install matplotlib): no plots written")
    for path in outputs:
        log(f"wrote {path}")
    return 0
