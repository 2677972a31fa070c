"""`python -m bench`: this machine's limits, then ours against every PyTorch peer on the suite.

    python -m bench                     quick run: the suite at batch 2 with outputs cut to at
                                        most 32 x 32, CPU (< 1 minute on 2 cores)
    python -m bench --full              the DESIGN.md suite at its own batch, plus the local2d peak
                                        memory and the first-call-after-import cost
    python -m bench --gpu [--full]      the same on the GPU (batch 8, --full: batch 64) with every
                                        available GPU backend, cuDNN with TF32 off as the peer
    options: --backend B[,B] --shapes S[,S] --layers L[,L] --batch N --repeat N --min-time S
             --json PATH --plot STEM --markdown --save

It measures the machine's limits first (CPU: NumPy sgemm and a large copy; GPU: CuPy sgemm and a
device copy), then, for each suite shape x layer kind (shared, tiled 2x2, local) x pass (forward;
backward = input + weight + bias gradients; on the GPU also the shared weight gradient alone,
atomic and deterministic), times each of our backends and each PyTorch peer (conv2d for shared;
unfold + einsum for all three kinds) in alternation, after a warm-up call (JIT compilation and
library autotuning are never timed), checks ours against a reference, and prints one table per
shape: median ms, GFLOP/s and its % of the sgemm rate, the bytes the pass must move per second
and its % of the copy bandwidth, the time ratio to ours, parameters and weight bytes. Then the
issues' targets with the measured figure and met / NOT met.

JSON (--json, --save): machine, versions, limits, config and every timing's raw samples; checked
against bench/schema.py before it is written. `python -m bench.compare A.json B.json` diffs two
runs; `python -m bench.plots A.json` (or --plot here) draws time-per-layer and roofline PNGs.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time

import numpy as np

import sharenet_fast as sf
from bench import ops, schema
from bench.cpu import REPO, CpuTarget, log, peak_memory, startup
from bench.shapes import SUITE, geometry, make_inputs, rel_error

RESULTS = os.path.join(REPO, "bench", "results")
TOL = 1e-4
CPU_BACKENDS = ("cpu",)
GPU_BACKENDS = ("numba-cuda", "cupy")
# per mode and target: batch (None: the suite's own), minimum samples, minimum seconds per timing
# and, quick only, the largest output grid: the input is cut so P, Q <= grid (a local layer's
# weights grow with P*Q: alexnet_conv1's 55 x 55 are 422 MB, its 32 x 32 cut 143 MB)
MODES = {("quick", "cpu"): dict(batch=2, repeat=3, min_time=0.1, grid=32),
         ("full", "cpu"): dict(batch=None, repeat=5, min_time=1.0, grid=None),
         ("quick", "gpu"): dict(batch=8, repeat=10, min_time=0.05, grid=None),
         ("full", "gpu"): dict(batch=64, repeat=20, min_time=0.2, grid=None)}


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


# ---------------------------------------------------------------------------- the suite
PASSES = ("forward", "backward")
# GPU only: the shared weight gradient alone, both reductions (issue 4's deterministic target)
WGRAD_PASSES = {"weight (atomic)": False, "weight (deterministic)": True}


def _flop_pass(pass_):
    return "weight" if pass_ in WGRAD_PASSES else pass_


def weight_stream_bytes(pass_, weight):
    """Bytes of weights a pass must stream: forward reads W; backward reads W (input gradient)
    and writes dW (weight gradient); the weight gradient alone writes dW."""
    return weight.nbytes * (2 if pass_ == "backward" else 1)


def plan(target, layers, backends):
    """[(layer, pass, impl)] in timing order for one shape: ours first, then the peers."""
    out = []
    for layer in layers:
        peers = ops.peer_names(layer) if ops.torch is not None and target.peers_ok else ()
        for pass_ in PASSES:
            out += [(layer, pass_, impl) for impl in (*backends, *peers)]
        if layer == "shared" and target.name == "gpu":
            out += [(layer, p, b) for p in WGRAD_PASSES for b in backends]
        if layer == "local":        # soft sharing: the local banks pulled toward their mean
            out += [(layer, "penalty", impl) for impl in (*backends, *(
                ("torch-eager",) if peers else ()))]
    return out


def _host_tuple(target, out):
    out = out if isinstance(out, (tuple, list)) else (out,)
    return tuple(np.asarray(target.to_host(o)) for o in out if o is not None)


def bench_shape(target, name, shape, layers, backends, repeat, min_time, limits, progress):
    """Result records (bench/schema.py) for one shape: every layer x pass x impl."""
    g = geometry(shape)
    x, weight0, bias0, grad_out = make_inputs(shape)
    steps = plan(target, layers, backends)
    results = []
    for layer in layers:
        weight, bias = ops.layer_params(layer, weight0, bias0, g)
        dev = [target.to_device(a) for a in (x, weight, bias, grad_out)]
        mine = [s for s in steps if s[0] == layer]
        pen = None
        calls = {}
        for b in backends:
            calls[("forward", b)] = ops.ours_forward(shape, layer, *dev[:3], backend=b)
            calls[("backward", b)] = ops.ours_backward(shape, layer, dev[0], dev[1], dev[3],
                                                       backend=b)
            for p, det in WGRAD_PASSES.items():
                if (layer, p, b) in mine:
                    calls[(p, b)] = ops.ours_backward(shape, layer, dev[0], dev[1], dev[3],
                                                      backend=b, needs=("weight",),
                                                      deterministic=det)
        if any(impl.startswith("torch") for _, _, impl in mine):
            for impl, (f, bw) in ops.peers(shape, layer, x, weight, bias, grad_out,
                                           target.torch_device).items():
                calls[("forward", impl)], calls[("backward", impl)] = f, bw
        if any(p == "penalty" for _, p, _ in mine):
            pen = ops.penalty_inputs(weight)
            dpen = [target.to_device(a) for a in pen]
            for b in backends:
                calls[("penalty", b)] = ops.ours_penalty(*dpen, backend=b)
            if ("penalty", "torch-eager") in {(p, i) for _, p, i in mine}:
                calls[("penalty", "torch-eager")] = ops.torch_penalty(*pen,
                                                                      target.torch_device)
        # warm-up: JIT compilation, oneDNN / cuDNN algorithm choice; the outputs are checked
        outs = {(p, impl): _host_tuple(target, calls[(p, impl)]()) for _, p, impl in mine}
        refs = _references(target, shape, layer, x, weight, bias, grad_out, outs, pen)
        for pass_ in dict.fromkeys(p for _, p, _ in mine):
            impls = [impl for _, p, impl in mine if p == pass_]
            samples = target.time({i: calls[(pass_, i)] for i in impls}, repeat, min_time)
            for impl in impls:
                ref = refs.get(_flop_pass(pass_))
                err = None
                if ref is not None and ref[0] != impl:
                    got = outs[(pass_, impl)]
                    want = ref[1][1:2] if pass_ in WGRAD_PASSES else ref[1]
                    err = max(rel_error(o, r) for o, r in zip(got, want))
                    if err >= TOL and impl in backends:
                        progress.log(f"WARNING: {name} {layer} {pass_} {impl}: relative error "
                                     f"{err:.2e} >= {TOL:.0e} against {ref[0]}")
                rec = record(target, name, shape, g, layer, pass_, impl, weight, bias,
                             samples[impl], limits, err, ref[0] if err is not None else None,
                             backends)
                results.append(rec)
                progress.step(f"{name} {layer} {pass_} {impl}: {rec['median_s'] * 1e3:.3f} ms")
        del calls, outs, dev, pen
    return results


def _references(target, shape, layer, x, weight, bias, grad_out, outs, pen=None):
    """{pass: (who, outputs)}: the float64 oracle for shared conv on the CPU, else the first
    PyTorch peer's float32 result (a float64 oracle of a local layer at full size would take
    minutes); the weight-gradient passes are checked against the backward's dW, the penalty
    (inputs `pen`) against the float64 oracle."""
    refs = {}
    if layer == "shared" and target.name == "cpu":
        r = ops.reference(shape, layer, x, weight, bias, grad_out)
        refs = {"forward": ("float64 oracle", r[:1]), "backward": ("float64 oracle", r[1:])}
    else:
        for pass_ in PASSES:
            peer = next((impl for (p, impl) in outs if p == pass_ and impl.startswith("torch")),
                        None)
            if peer is not None:
                refs[pass_] = (peer, outs[(pass_, peer)])
    if "backward" in refs:
        refs["weight"] = refs["backward"]
    if pen is not None:
        from sharenet_fast import reference

        refs["penalty"] = ("float64 oracle", (np.float64(reference.soft_sharing_penalty(
            pen[0], pen[1], ops.PENALTY_STRENGTH)[0]),))
    return refs


def record(target, name, shape, g, layer, pass_, impl, weight, bias, samples, limits, err,
           err_against, backends):
    median = float(np.median(samples))
    q1, q3 = (float(v) for v in np.percentile(samples, [25, 75]))
    if pass_ == "penalty":
        # per element: a - b, its square into the sum, one multiply-add into each gradient;
        # a and b read, grad_a and grad_b read and written: six streams of the weights' size
        flops, nbytes = 5 * weight.size, 6 * weight.nbytes
        wbytes = nbytes
    else:
        flops = g.flops(_flop_pass(pass_))
        nbytes = g.min_bytes(_flop_pass(pass_), sharing=layer, tile=ops.TILE)
        wbytes = weight_stream_bytes(pass_, weight)

    def rate(amount):
        return amount / median / 1e9 if median > 0 else float("nan")

    gflops, gbps, wgbps = rate(flops), rate(nbytes), rate(wbytes)
    sg, cp = limits.get("sgemm_gflops"), limits.get("copy_gbps")
    return {
        "shape": name, "dims": shape._asdict(), "layer": layer,
        "tile": list(ops.grid(layer, g)), "pass": pass_, "impl": impl,
        "role": "ours" if impl in backends else "peer",
        "label": (f"ours ({impl})" if impl in backends
                  else ops.peer_label(impl, target.torch_device)),
        "params": int(weight.size + bias.size), "weight_bytes": int(weight.nbytes),
        "flops": int(flops), "bytes": int(nbytes), "weight_stream_bytes": int(wbytes),
        "samples_s": [float(s) for s in samples], "median_s": median, "q1_s": q1, "q3_s": q3,
        "gflops": gflops, "gbps": gbps, "weight_gbps": wgbps,
        "pct_sgemm": 100 * gflops / sg if sg else None,
        "pct_copy": 100 * gbps / cp if cp else None,
        "pct_copy_weights": 100 * wgbps / cp if cp else None,
        "rel_err": err, "rel_err_against": err_against}


# ----------------------------------------------------------------------------- output
COLUMNS = ["layer", "params", "weight MB", "pass", "impl", "ms", "GFLOP/s", "% sgemm", "GB/s",
           "% copy", "ratio", "rel err"]
NUMERIC = [False, True, True, False, False, True, True, True, True, True, True, True]


def _pct(v):
    return "-" if v is None or v != v else f"{v:.0f}%"


def shape_rows(results, shape):
    """Table rows of one shape: per layer and pass, ours then the peers; ratio = this row's
    time / the first of ours (> 1: ours faster)."""
    rows, last_layer = [], None
    rs = [r for r in results if r["shape"] == shape]
    for r in rs:
        first = next(o for o in rs if o["layer"] == r["layer"] and o["pass"] == r["pass"])
        layer = r["layer"] if r["layer"] != "tiled" else f"tiled {r['tile'][0]}x{r['tile'][1]}"
        new = r["layer"] != last_layer
        last_layer = r["layer"]
        ratio = (r["median_s"] / first["median_s"]
                 if r is not first and first["median_s"] > 0 else None)
        rows.append([
            layer if new else "", f"{r['params']:,}" if new else "",
            f"{r['weight_bytes'] / 1e6:.2f}" if new else "", r["pass"], r["label"],
            f"{r['median_s'] * 1e3:.3f}", f"{r['gflops']:.1f}", _pct(r["pct_sgemm"]),
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


def _verdict(ok):
    return "met" if ok else "NOT met"


def _by(results):
    return {(r["shape"], r["layer"], r["pass"], r["impl"]): r for r in results}


def cpu_targets(report):
    """Issue 3's targets, stated for alexnet_conv1 and deepface_l4 at their suite batch (8):
    a verdict there (a --full run); other shapes and batches get the figure alone."""
    by, out = _by(report["results"]), []
    for name in report["config"]["shapes"]:
        for pass_ in PASSES:
            lo = by.get((name, "local", pass_, "cpu"))
            pe = by.get((name, "local", pass_, "torch-unfold"))
            if lo:
                n = lo["dims"]["N"]
                rated = name in ("alexnet_conv1", "deepface_l4") and n == SUITE[name].N

                def tag(ok, t):
                    return f" (target {t}: {_verdict(ok)})" if rated else ""
                out.append(f"local2d {pass_} {name} (batch {n}): weight stream "
                           f"{lo['weight_gbps']:.1f} GB/s = {lo['pct_copy_weights']:.0f}% of copy"
                           + tag(lo["pct_copy_weights"] >= 50, ">= 50%"))
                if pe:
                    ratio = pe["median_s"] / lo["median_s"]
                    out.append(f"local2d {pass_} {name} (batch {n}): {ratio:.1f}x faster than "
                               "PyTorch unfold+einsum" + tag(ratio >= 5, ">= 5x"))
            ti, sh = by.get((name, "tiled", pass_, "cpu")), by.get((name, "shared", pass_, "cpu"))
            if ti and sh:
                ratio = ti["median_s"] / sh["median_s"]
                out.append(f"tiled_conv2d 2x2 {pass_} {name} (batch {ti['dims']['N']}): "
                           f"{ratio:.2f}x our conv2d time (target <= 1.5x: "
                           f"{_verdict(ratio <= 1.5)})")
    for impl, r in (report.get("peak_memory") or {}).items():
        what = "local2d" if impl == "ours" else "PyTorch unfold+einsum"
        line = (f"peak memory of {what} forward ({r['shape']}, batch {r['batch']}): "
                f"{r['rss_growth'] / 1e6:.1f} MB beyond the resident inputs (weights "
                f"{r['weight_bytes'] / 1e6:.0f} MB, input {r['input_bytes'] / 1e6:.1f} MB, "
                f"output {r['output_bytes'] / 1e6:.1f} MB)")
        if impl == "ours":
            line += (" (target: no buffer larger than the weights: "
                     f"{_verdict(r['rss_growth'] < r['weight_bytes'])})")
        out.append(line)
    out += penalty_targets(report)
    return ("Targets (issue 3, CPU; local2d verdicts for alexnet_conv1 and deepface_l4 at the "
            "suite batch 8, i.e. --full)", out)


def penalty_targets(report):
    """Issue 7: soft_sharing_penalty streams at >= 60% of the copy bandwidth (any size)."""
    out = []
    for r in report["results"]:
        if r["pass"] != "penalty" or r["role"] != "ours":
            continue
        peer = next((p for p in report["results"] if p["pass"] == "penalty" and p["shape"] ==
                     r["shape"] and p["impl"] == "torch-eager"), None)
        n = r["weight_bytes"] // 4 if r["bytes"] == 6 * r["weight_bytes"] else None
        out.append(f"{r['impl']}: soft_sharing_penalty on {r['shape']}'s local banks "
                   f"({(n or 0) / 1e6:.1f}M float32, both gradients): {r['gbps']:.1f} GB/s = "
                   f"{_pct(r['pct_copy'])} of copy (target >= 60%: "
                   f"{_verdict((r['pct_copy'] or 0) >= 60)})"
                   + (f"; {peer['median_s'] / r['median_s']:.1f}x faster than PyTorch eager"
                      if peer else ""))
    return out


def gpu_targets(report):
    """Issues 4 (numba-cuda) and 5 (cupy), at batch 64 (--full); other batches without verdict."""
    by, out = _by(report["results"]), []
    spec = {"numba-cuda": dict(conv=0.5, local_bw=60), "cupy": dict(conv=0.8, local_bw=75)}
    for name in report["config"]["shapes"]:
        for b in report["config"]["backends"]:
            s = spec.get(b, spec["numba-cuda"])
            for pass_ in PASSES:
                ours, peer = by.get((name, "shared", pass_, b)), by.get(
                    (name, "shared", pass_, "torch-conv2d"))
                rated = ours is not None and ours["dims"]["N"] == 64
                tag = (lambda ok, t: f" (target {t}: {_verdict(ok)})" if rated else "")
                if ours and peer:
                    r = peer["median_s"] / ours["median_s"]
                    out.append(f"{b}: conv2d {pass_} {name}: {r:.2f}x cuDNN's speed"
                               + tag(r >= s["conv"], f">= {s['conv']}x"))
                lo = by.get((name, "local", pass_, b))
                if lo and (b == "numba-cuda" or pass_ == "forward"):
                    out.append(f"{b}: local2d {pass_} {name}: weight stream "
                               f"{lo['weight_gbps']:.0f} GB/s = {_pct(lo['pct_copy_weights'])} "
                               "of copy" + tag((lo["pct_copy_weights"] or 0) >= s["local_bw"],
                                               f">= {s['local_bw']}%"))
                pe = by.get((name, "local", pass_, "torch-unfold"))
                if lo and pe and b == "numba-cuda":
                    r = pe["median_s"] / lo["median_s"]
                    out.append(f"{b}: local2d {pass_} {name}: {r:.1f}x faster than unfold+einsum"
                               + tag(r >= 10, ">= 10x"))
            at = by.get((name, "shared", "weight (atomic)", b))
            de = by.get((name, "shared", "weight (deterministic)", b))
            if at and de:
                r = de["median_s"] / at["median_s"]
                out.append(f"{b}: shared weight gradient {name}: deterministic {r:.2f}x the "
                           f"atomic time" + (f" (target <= 1.3x: {_verdict(r <= 1.3)})"
                                              if at["dims"]["N"] == 64 else ""))
        if {"numba-cuda", "cupy"} <= set(report["config"]["backends"]):
            slower = [f"{k[1]} {k[2]}" for k, r in by.items() if k[0] == name and k[3] == "cupy"
                      and (k[0], k[1], k[2], "numba-cuda") in by
                      and r["median_s"] > by[(k[0], k[1], k[2], "numba-cuda")]["median_s"]]
            out.append(f"cupy faster than numba-cuda on every op of {name}: "
                       f"{_verdict(not slower)}" + (f" (slower: {', '.join(slower)})"
                                                     if slower else ""))
    out += penalty_targets(report)
    return ("Targets (issues 4 and 5, GPU; rated at batch 64; issue 7)", out)


def format_report(report, markdown=False):
    m, lim, cfg = report["machine"], report["limits"], report["config"]
    v = report["versions"]
    bullet = "- " if markdown else ""
    out = [f"{bullet}machine: {m['device']}, {m.get('platform', '')}",
           f"{bullet}software: " + ", ".join(f"{k} {val}" for k, val in v.items() if val),
           f"{bullet}limits: {lim.get('describe', 'not measured')}",
           f"{bullet}run: {cfg['mode']} ({cfg['target']}), backends {', '.join(cfg['backends'])},"
           f" median of >= {cfg['repeat']} samples and >= {cfg['min_time_s']} s per timing, "
           "ours and the peers timed in alternation after a warm-up call"]
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
        "weight (atomic / deterministic): the shared weight gradient alone, both reductions; "
        "penalty: soft_sharing_penalty of the local banks toward their mean bank with both "
        "gradients (a, b read, grad_a, grad_b read and written: 6 streams).",
        "% sgemm = GFLOP/s / the sgemm rate; GB/s = the bytes the pass must move (each tensor "
        "read or written once) per second; % copy = that / the copy bandwidth.",
        "ratio = this row's time / the first 'ours' row's (> 1: ours faster); rel err = "
        "||out - ref|| / ||ref|| against the float64 oracle (shared, CPU) or the first PyTorch "
        "peer.",
    ]
    title, lines = (gpu_targets if cfg["target"] == "gpu" else cpu_targets)(report)
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
    try:
        v["git"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                                  capture_output=True, text=True).stdout.strip() or None
    except OSError:
        v["git"] = None
    return v


def slug(text):
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


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
                   help=f"comma-separated layer kinds (default: {','.join(ops.LAYERS)})")
    p.add_argument("--batch", type=int, help="batch size for every shape (overrides the mode)")
    p.add_argument("--repeat", type=int, help="minimum samples per timing")
    p.add_argument("--min-time", type=float, help="minimum seconds per timing")
    p.add_argument("--json", metavar="PATH", help="write machine, limits and raw samples here")
    p.add_argument("--plot", metavar="STEM",
                   help="write STEM_times.png and STEM_roofline.png (needs matplotlib)")
    p.add_argument("--markdown", action="store_true", help="print the tables as markdown")
    p.add_argument("--save", action="store_true",
                   help="write bench/results/<cpu|gpu>_<machine>.{json,md} and both plots")
    args = p.parse_args(argv)
    args.mode = args.mode or "quick"
    args.shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    args.layers = tuple(s.strip() for s in args.layers.split(",") if s.strip())
    bad = [s for s in args.layers if s not in ops.LAYERS]
    if bad or not args.layers:
        p.error(f"--layers: unknown {bad}; choose from {', '.join(ops.LAYERS)}")
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
    defaults = MODES[(args.mode, args.target)]
    for key in ("batch", "repeat"):
        if getattr(args, key) is not None and getattr(args, key) < 1:
            p.error(f"--{key} must be >= 1")
    if args.min_time is not None and args.min_time < 0:
        p.error("--min-time must be >= 0")
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
    """The whole report as a dict (bench/schema.py). `shapes` ({name: ConvShape}) replaces the
    suite (tests run tiny layers)."""
    target, backends = make_target(args)
    if target is None:
        raise SystemExit(backends)
    if shapes is None:
        shapes = {n: SUITE[n].with_batch(args.batch) if args.batch else SUITE[n]
                  for n in args.shapes}
        if args.grid:
            shapes = {n: s.shrunk(s.N, args.grid) for n, s in shapes.items()}
    args.shapes = list(shapes)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if load > 0.5:
        log(f"WARNING: load average {load:.2f} before starting: other processes share the "
            "cores, so timings are noisy")
    log(f"{target.device()}: measuring the machine's limits ...")
    limits = target.limits(small=args.mode == "quick")
    log(limits.get("describe", "no limits measured"))
    if ops.torch is None:
        log("PyTorch is not installed: no peers (pip install torch==2.13.0)")
    elif not target.peers_ok:
        log("PyTorch has no CUDA here: no GPU peers")
    steps = plan(target, args.layers, backends)
    extras = args.target == "cpu" and args.mode == "full" and "local" in args.layers
    progress = Progress(len(steps) * len(shapes) + (3 if extras else 0), progress_stream)
    results = []
    for name, shape in shapes.items():
        progress.log(f"{name}: x {shape.describe()}")
        results += bench_shape(target, name, shape, args.layers, backends, args.repeat,
                               args.min_time, limits, progress)
    peak = st = None
    if extras:
        mem = "alexnet_conv1" if "alexnet_conv1" in shapes else args.shapes[0]
        peak = peak_memory(mem, shapes[mem])
        progress.step(f"peak memory of local2d forward ({mem}), ours and the peer")
        st = startup(args.shapes[0], shapes[args.shapes[0]])
        progress.step("first call after import, cache cold")
        progress.step("first call after import, cache warm")
    progress.close()
    report = dict(
        schema=schema.VERSION,
        machine=dict(target.machine(), load_average_at_start=load,
                     date=time.strftime("%Y-%m-%d %H:%M:%S")),
        versions=versions(), limits=limits,
        config=dict(mode=args.mode, target=args.target, backends=backends, repeat=args.repeat,
                    min_time_s=args.min_time, batch=args.batch, max_grid=args.grid, shapes=args.shapes,
                    layers=list(args.layers), tile=list(ops.TILE),
                    peers=sorted({r["impl"] for r in results if r["role"] == "peer"})),
        shapes={n: dict(s._asdict(), describe=s.describe(), P=geometry(s).P, Q=geometry(s).Q,
                        gflop_forward=geometry(s).flops("forward") / 1e9)
                for n, s in shapes.items()},
        results=results, startup=st, peak_memory=peak)
    problems = schema.validate(report)
    if problems:  # a bug in this file: say so rather than write a file compare.py can't read
        raise RuntimeError("report does not match bench/schema.py: " + "; ".join(problems[:5]))
    return report


def main(argv=None):
    args = parse_args(argv)
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
        from bench import plots

        try:
            outputs += plots.plot_all(report, args.plot)
        except ImportError:
            log("--plot needs matplotlib (pip install matplotlib): no plots written")
    for path in outputs:
        log(f"wrote {path}")
    return 0
