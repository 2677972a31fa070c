"""GPU benchmark: the suite at batch 64 on the numba-cuda backend, against PyTorch on the GPU.

    python -m bench.gpu [--shapes alexnet_conv1 ...] [--batch 64] [--reps 20]
                        [--json PATH] [--markdown PATH] [--save]

For every suite shape (bench/shapes.py) x layer (shared, tiled 2x2, local) x pass (forward,
backward = input + weight + bias gradients) it times ours and the peers with CUDA events after
warm-up (median of --reps samples, each its own event pair; JIT compilation and cuDNN's
algorithm search happen in the warm-up), checks ours against the peer's result, and prints one
table per shape. Peers (DESIGN.md): shared -> cuDNN through torch.nn.functional.conv2d and
aten.convolution_backward, with TF32 off (torch.backends.cudnn.allow_tf32 = False); tiled and
local -> PyTorch unfold + einsum (TF32 off for the matmuls too). The machine's limits are
measured first: device-to-device copy bandwidth (bytes read + written) and a large SGEMM.

Also timed: the shared weight gradient alone, atomic against deterministic (issue 4's 1.3x).
`--save` writes bench/results/gpu_<device>.{json,md}. Inputs are CuPy arrays when CuPy is
installed, else Numba device arrays (which is how the simulator smoke test runs this file).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import time

import numpy as np

import sharenet_fast as sf
from bench import ops
from bench.shapes import SUITE, geometry, make_inputs

GPU_BACKENDS = ("numba-cuda", "cupy")
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


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
    if isinstance(a, np.ndarray):
        return a
    if hasattr(a, "get"):                  # CuPy
        return a.get()
    if hasattr(a, "copy_to_host"):         # Numba
        return a.copy_to_host()
    return a.detach().cpu().numpy()        # torch


def synchronize():
    from numba import cuda

    cuda.synchronize()
    t = _torch_cuda()
    if t is not None:
        t.cuda.synchronize()


def time_events(fn, reps, warmup=3):
    """Samples (ms) of fn(), each between two CUDA events on the legacy default stream, which
    CuPy, PyTorch and our launches all use by default."""
    from numba import cuda

    for _ in range(warmup):
        fn()
    synchronize()
    samples = []
    for _ in range(reps):
        start, end = cuda.event(), cuda.event()
        start.record()
        fn()
        end.record()
        end.synchronize()
        samples.append(float(start.elapsed_time(end)))
    return samples


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
def machine_limits(reps=10):
    """{'copy_gbs': device-to-device copy (read + write bytes), 'sgemm_gflops': float32 GEMM}."""
    xp = _xp()
    torch = _torch_cuda()
    limits = {}
    if xp is not None:
        n = 256 * 2**20                      # 1 GiB of float32
        a = xp.ones(n, dtype=xp.float32)
        b = xp.empty_like(a)
        ms = statistics.median(time_events(lambda: b.__setitem__(Ellipsis, a), reps))
        limits["copy_gbs"] = _rate(2 * a.nbytes, ms)
        del a, b
        m = 8192
        a = xp.random.standard_normal((m, m), dtype=xp.float32)
        c = xp.empty_like(a)
        ms = statistics.median(time_events(lambda: xp.matmul(a, a, out=c), reps))
        limits["sgemm_gflops"] = _rate(2 * m**3, ms)
    elif torch is not None:  # pragma: no cover - CuPy is the normal route
        a = torch.ones(256 * 2**20, device="cuda")
        b = torch.empty_like(a)
        ms = statistics.median(time_events(lambda: b.copy_(a), reps))
        limits["copy_gbs"] = _rate(2 * a.numel() * 4, ms)
    return limits


# ------------------------------------------------------------------------------- the timings
def _ours(backend, layer, shape, x, w, b, dy, deterministic=False,
          needs=("input", "weight", "bias")):
    fwd, bwd = ops.API[layer]
    kw = dict(stride=shape.stride, padding=shape.padding, backend=backend)
    return (lambda: fwd(x, w, b, **kw),
            lambda: bwd(dy, x, w, needs=needs, deterministic=deterministic, **kw))


def _peer(torch, layer, shape, x, w, b, dy):
    """(forward, backward) closures of the PyTorch peer on GPU tensors."""
    xt, wt, bt, dyt = (torch.from_numpy(a).cuda() for a in (x, w, b, dy))
    if layer == "shared":
        st, pd = [shape.stride] * 2, [shape.padding] * 2

        def fwd():
            with torch.no_grad():
                return torch.nn.functional.conv2d(xt, wt, bt, stride=shape.stride,
                                                  padding=shape.padding)

        def bwd():
            return torch.ops.aten.convolution_backward(dyt, xt, wt, [shape.K], st, pd, [1, 1],
                                                       False, [0, 0], 1, [True, True, True])
        return fwd, bwd

    def fwd():
        with torch.no_grad():
            return ops._torch_untied(shape, layer, xt, wt, bt)
    xg, wg, bg = (t.clone().requires_grad_() for t in (xt, wt, bt))
    y = ops._torch_untied(shape, layer, xg, wg, bg)

    def bwd():
        return torch.autograd.grad(y, (xg, wg, bg), dyt, retain_graph=True)
    return fwd, bwd


def _rel(a, b):
    a, b = np.asarray(to_host(a), np.float64), np.asarray(to_host(b), np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _rate(amount, ms):
    """amount per ms / 1e6 (bytes -> GB/s, FLOPs -> GFLOP/s); NaN when no time was measured
    (the simulator's events carry none)."""
    return amount / ms / 1e6 if ms > 0 else float("nan")


def available_backends():
    return [b for b in GPU_BACKENDS if sf.backends()[b] == "available"]


def run(shapes, batch=64, reps=20, layers=ops.LAYERS, log=print, warmup=3, backends=None):
    """Time every shape in `shapes` ({name: ConvShape}) at `batch` (None: the shape's own) on
    each GPU backend (default: every available one) against the peer, timed once per layer."""
    torch = _torch_cuda()
    backends = available_backends() if backends is None else list(backends)
    limits = machine_limits()
    log(f"device: {device_name()}; backends: {', '.join(backends)}; limits: "
        + ", ".join(f"{k} {v:.0f}" for k, v in limits.items()))
    rows = []
    for name, shape in shapes.items():
        shape = shape.with_batch(batch) if batch else shape
        g = geometry(shape)
        x, w0, b0, dy = make_inputs(shape)
        for layer in layers:
            w, b = ops.layer_params(layer, w0, b0, g)
            dev = [to_device(a) for a in (x, w, b, dy)]
            peer = _peer(torch, layer, shape, x, w, b, dy) if torch is not None else None
            for i, pass_ in enumerate(("forward", "backward")):
                want, peer_ms, peer_samples = None, None, None
                if peer is not None:
                    want = peer[i]()
                    peer_samples = time_events(peer[i], reps, warmup)
                    peer_ms = statistics.median(peer_samples)
                for backend in backends:
                    rows.append(_time_ours(backend, name, shape, g, layer, pass_, dev, w, b,
                                           reps, warmup, limits, want, peer_ms, peer_samples))
                    r = rows[-1]
                    log(f"  {name:14s} {layer:6s} {pass_:8s} {backend:10s} ours "
                        f"{r['ours_ms']:8.3f} ms"
                        + (f"  peer {r['peer_ms']:8.3f} ms  x{r['speedup']:.2f}  err "
                           f"{r['err']:.1e}" if "peer_ms" in r else ""))
            if layer == "shared":
                for backend in backends:
                    rows.append(_atomic_vs_deterministic(backend, name, shape, dev, reps,
                                                         warmup))
                    r = rows[-1]
                    log(f"  {name:14s} shared wgrad {backend}: atomic {r['atomic_ms']:.3f} ms, "
                        f"deterministic {r['deterministic_ms']:.3f} ms "
                        f"(x{r['det_over_atomic']:.2f})")
            del dev
    return dict(device=device_name(), limits=limits, backends=backends, rows=rows,
                meta=_meta(torch, batch, reps))


def _time_ours(backend, name, shape, g, layer, pass_, dev, w, b, reps, warmup, limits, want,
               peer_ms, peer_samples):
    fn = _ours(backend, layer, shape, *dev)[0 if pass_ == "forward" else 1]
    got = fn()
    row = dict(shape=name, layer=layer, pass_=pass_, backend=backend, batch=shape.N,
               params=int(w.size + b.size), weight_mb=w.nbytes / 1e6, flops=g.flops(pass_))
    row["ours_samples"] = time_events(fn, reps, warmup)
    row["ours_ms"] = statistics.median(row["ours_samples"])
    if want is not None:
        if pass_ == "forward":
            row["err"] = _rel(got, want)
        else:                                # dx, dw, db: the worst of the three
            row["err"] = max(_rel(a, bb) for a, bb in zip(got, want))
        row["peer_samples"], row["peer_ms"] = peer_samples, peer_ms
        row["speedup"] = peer_ms / row["ours_ms"] if row["ours_ms"] > 0 else float("nan")
    # weight stream: the bank grid read once (forward), read + dW written (backward)
    row["weight_gbs"] = _rate(w.nbytes * (1 if pass_ == "forward" else 2), row["ours_ms"])
    if limits.get("copy_gbs"):
        row["pct_copy"] = 100 * row["weight_gbs"] / limits["copy_gbs"]
    row["gflops"] = _rate(row["flops"], row["ours_ms"])
    return row


def _atomic_vs_deterministic(backend, name, shape, dev, reps, warmup):
    x, w, b, dy = dev
    out = dict(shape=name, layer="shared", pass_="weight_grad_modes", backend=backend,
               batch=shape.N)
    for det in (False, True):
        fn = _ours(backend, "shared", shape, x, w, b, dy, deterministic=det,
                   needs=("weight",))[1]
        key = "deterministic" if det else "atomic"
        out[key + "_samples"] = time_events(fn, reps, warmup)
        out[key + "_ms"] = statistics.median(out[key + "_samples"])
    out["det_over_atomic"] = (out["deterministic_ms"] / out["atomic_ms"] if out["atomic_ms"] > 0
                              else float("nan"))
    return out


def _meta(torch, batch, reps):
    import numba

    meta = dict(python=platform.python_version(), numpy=np.__version__, numba=numba.__version__,
                sharenet_fast=sf.__version__, batch=batch, reps=reps,
                date=time.strftime("%Y-%m-%d %H:%M:%S"))
    try:
        import numba_cuda

        meta["numba_cuda"] = numba_cuda.__version__
    except Exception:
        pass
    xp = _xp()
    if xp is not None:
        meta["cupy"] = xp.__version__
    if torch is not None:
        meta.update(torch=torch.__version__, cudnn=torch.backends.cudnn.version())
    return meta


# ---------------------------------------------------------------------------------- reports
TARGETS = """Targets (issue 4, numba-cuda): conv2d fwd and bwd >= 0.5x cuDNN (peer/ours >= 0.5);
local2d >= 60% of copy bandwidth on the weight stream and >= 10x unfold+einsum;
deterministic weight gradient <= 1.3x the atomic one.
Targets (issue 5, cupy): conv2d fwd and bwd >= 0.8x cuDNN on each shape; local2d forward >= 75%
of copy bandwidth on the weight stream; faster than numba-cuda on every op."""


def markdown(result):
    lines = [f"# GPU benchmark: {result['device']}", "",
             "limits: " + ", ".join(f"{k} = {v:.0f}" for k, v in result["limits"].items()),
             "", "meta: " + ", ".join(f"{k} {v}" for k, v in result["meta"].items()), ""]
    head = ("| shape | layer | pass | backend | params | weight MB | ours ms | GFLOP/s "
            "| weight GB/s | % copy | peer ms | peer/ours | err vs peer |")
    lines += [head, "|" + "---|" * 13]
    for r in result["rows"]:
        if r["pass_"] == "weight_grad_modes":
            continue
        lines.append(
            f"| {r['shape']} | {r['layer']} | {r['pass_']} | {r['backend']} | {r['params']:,} | "
            f"{r['weight_mb']:.1f} | {r['ours_ms']:.3f} | {r['gflops']:.0f} | "
            f"{r['weight_gbs']:.0f} | {r.get('pct_copy', float('nan')):.0f} | "
            f"{r.get('peer_ms', float('nan')):.3f} | {r.get('speedup', float('nan')):.2f} | "
            f"{r.get('err', float('nan')):.1e} |")
    lines += ["", "| shape | backend | wgrad atomic ms | deterministic ms | det / atomic |",
              "|---|---|---|---|---|"]
    for r in result["rows"]:
        if r["pass_"] == "weight_grad_modes":
            lines.append(f"| {r['shape']} | {r['backend']} | {r['atomic_ms']:.3f} | "
                         f"{r['deterministic_ms']:.3f} | {r['det_over_atomic']:.2f} |")
    lines += ["", TARGETS, ""]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.split("\n")[0])
    p.add_argument("--shapes", nargs="+", default=list(SUITE), choices=list(SUITE))
    p.add_argument("--layers", nargs="+", default=list(ops.LAYERS), choices=list(ops.LAYERS))
    p.add_argument("--backend", nargs="+", choices=GPU_BACKENDS,
                   help="GPU backends to time (default: every available one)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--json", help="write the full results (with samples) here")
    p.add_argument("--markdown", help="write the table here")
    p.add_argument("--save", action="store_true",
                   help="write bench/results/gpu_<device>.{json,md}")
    args = p.parse_args(argv)
    backends = args.backend or available_backends()
    missing = {b: sf.backends()[b] for b in backends if sf.backends()[b] != "available"}
    if not backends or missing:
        print(f"no GPU backend to time: {missing or sf.backends()}", file=sys.stderr)
        return 2
    result = run({n: SUITE[n] for n in args.shapes}, args.batch, args.reps, args.layers,
                 backends=backends)
    text = markdown(result)
    print(text)
    paths = [(args.json, "json"), (args.markdown, "md")]
    if args.save:
        slug = re.sub(r"[^a-z0-9]+", "_", result["device"].lower()).strip("_")
        paths += [(os.path.join(RESULTS, f"gpu_{slug}.json"), "json"),
                  (os.path.join(RESULTS, f"gpu_{slug}.md"), "md")]
    for path, fmt in paths:
        if path:
            with open(path, "w") as f:
                if fmt == "json":
                    json.dump(result, f, indent=1)
                else:
                    f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
