"""Grouped and depthwise layers on the CPU against PyTorch and their floors, in one run:

    python -m bench.groups                 # every shape below
    python -m bench.groups --repeat 9 --only mobilenet_dw

Shared conv (conv2d with groups 2, 4 and depthwise) against torch.nn.functional.conv2d with
the same groups (oneDNN on the CPU), forward and backward (input, weight and bias gradients:
torch.autograd on x, weight and bias), timed interleaved (ours, torch, ours, ...) so both see
the same load; each pair is checked to compute the same layer first. Grouped local2d against
ungrouped local2d of the same shape: each pass as % of its floor, max(bytes that must move /
read bandwidth, FLOPs / sgemm rate), both measured in this run (bench.cpu). Medians and ranges
of `--repeat` calls after a warm-up (the JIT compile is never timed).
"""
import argparse
import os
import sys

import numpy as np

import sharenet_fast as sf
from sharenet_fast import dtypes
from sharenet_fast.geometry import ConvGeometry

from bench import cpu

_lines = []


def emit(line=""):
    """Print one line of the report (and keep it for --save)."""
    print(line, flush=True)
    _lines.append(line)

# name: (N, C, H, W, K, R, S, stride, padding, groups)
CONV_SHAPES = {
    "resnext_g2": (8, 64, 56, 56, 64, 3, 3, 1, 1, 2),
    "resnext_g4": (8, 64, 56, 56, 64, 3, 3, 1, 1, 4),
    "mobilenet_dw": (8, 64, 56, 56, 64, 3, 3, 1, 1, 64),
    "mobilenet_dw_s2": (8, 128, 56, 56, 128, 3, 3, 2, 1, 128),
    "depthwise_m2_5x5": (8, 32, 28, 28, 64, 5, 5, 1, 2, 32),
}
# grouped local2d beside the same layer ungrouped (an LC ResNet block's 3x3 layer)
LOCAL_SHAPES = {
    "lc_block_g1": (8, 32, 28, 28, 32, 3, 3, 1, 1, 1),
    "lc_block_g4": (8, 32, 28, 28, 32, 3, 3, 1, 1, 4),
    "lc_block_dw": (8, 32, 28, 28, 32, 3, 3, 1, 1, 32),
}


def _floor(g, pass_, banks, gbps, gflops):
    return max(g.min_bytes(pass_, 4, banks) / gbps / 1e9, g.flops(pass_) / gflops / 1e9)


def _dims(N, C, H, W, K, R, S, st, pd, G):
    return f"{N}x{C}x{H}x{W} -> {K}, {R}x{S}, stride {st}, pad {pd}"


def conv_records(shapes, repeat, gbps, gflops, progress=None):
    """[record] of the grouped shared conv, ours and torch interleaved, each pass: a dict with
    the shape, groups, pass, both sides' samples (s) and medians (ours: median_s), the floor
    and the rel err."""
    import torch
    torch.set_num_threads(os.cpu_count())
    out = []
    rng = np.random.default_rng(0)
    for name, dims in shapes.items():
        N, C, H, W, K, R, S, st, pd, G = dims
        g = ConvGeometry.make(N, C, H, W, K, R, S, st, pd, 1, G)
        x = rng.standard_normal(g.x_shape, dtype=np.float32)
        w = rng.standard_normal(g.w_shape, dtype=np.float32)
        b = rng.standard_normal(K, dtype=np.float32)
        kw = dict(stride=st, padding=pd, groups=G)
        y = sf.conv2d(x, w, b, **kw)
        dy = rng.standard_normal(y.shape, dtype=np.float32)
        tx, tw, tb = (torch.from_numpy(a).requires_grad_() for a in (x, w, b))
        tdy = torch.from_numpy(dy)

        def torch_fwd():
            with torch.no_grad():
                return torch.nn.functional.conv2d(tx, tw, tb, stride=st, padding=pd, groups=G)

        def torch_bwd():
            ty = torch.nn.functional.conv2d(tx, tw, tb, stride=st, padding=pd, groups=G)
            return torch.autograd.grad(ty, (tx, tw, tb), tdy)

        def ours_bwd():
            return sf.conv2d_backward(dy, x, w, **kw)

        err = dtypes.rel_err(y, torch_fwd().numpy())
        for a, t in zip(ours_bwd(), torch_bwd()):
            err = max(err, dtypes.rel_err(a, t.numpy()))
        assert err < 1e-4, f"{name}: ours and torch differ (rel err {err:.2g})"
        for pass_, ours, peer in (("forward", lambda: sf.conv2d(x, w, b, **kw), torch_fwd),
                                  ("backward", ours_bwd, torch_bwd)):
            ours(), peer()                                   # warm: compile, pages
            t = cpu.measure_interleaved({"ours": ours, "torch": peer}, repeat, 0.3)
            out.append(dict(shape=name, dims=_dims(*dims), N=N, groups=G, **{"pass": pass_},
                            ours_s=t["ours"], torch_s=t["torch"],
                            median_s=float(np.median(t["ours"])),
                            torch_median_s=float(np.median(t["torch"])),
                            floor_s=_floor(g, pass_, 1, gbps, gflops), rel_err=float(err)))
            if progress:
                progress(f"groups: conv2d {name} {pass_}")
    return out


def local_records(shapes, repeat, gbps, gflops, progress=None):
    """[record] of local2d at each shape and pass (backward: input + weight gradients): the
    samples (s), median, floor, % of floor and what bounds it (bytes or FLOPs)."""
    out = []
    rng = np.random.default_rng(1)
    for name, dims in shapes.items():
        N, C, H, W, K, R, S, st, pd, G = dims
        g = ConvGeometry.make(N, C, H, W, K, R, S, st, pd, 1, G)
        banks = g.P * g.Q
        x = rng.standard_normal(g.x_shape, dtype=np.float32)
        w = rng.standard_normal((g.P, g.Q) + g.w_shape, dtype=np.float32)
        dy = rng.standard_normal(g.y_shape, dtype=np.float32)
        kw = dict(stride=st, padding=pd, groups=G)
        for pass_, fn in (("forward", lambda: sf.local2d(x, w, **kw)),
                          ("backward", lambda: sf.local2d_backward(dy, x, w, needs=(
                              "input", "weight"), **kw))):
            fn()
            samples = cpu.measure(fn, repeat, 0.3)
            fl = "input_weight" if pass_ == "backward" else "forward"
            mem = g.min_bytes(fl, 4, banks) / gbps / 1e9
            comp = g.flops(fl) / gflops / 1e9
            med = float(np.median(samples))
            out.append(dict(shape=name, dims=_dims(*dims), N=N, groups=G, **{"pass": pass_},
                            samples_s=samples, median_s=med, floor_s=max(mem, comp),
                            pct_floor=100 * max(mem, comp) / med,
                            bound="bytes" if mem >= comp else "FLOPs"))
            if progress:
                progress(f"groups: local2d {name} {pass_}")
    return out


def conv_table(records):
    lines = ["| shape | groups | pass | ours ms (range) | torch ms (range) | ours / torch speed "
             "| ours % of floor | torch % of floor | rel err vs torch |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        mo, mt, fl = r["median_s"], r["torch_median_s"], r["floor_s"]
        lines.append(f"| {r['shape']} | {r['groups']} | {r['pass']} | {mo * 1e3:.2f} "
                     f"({cpu.ms_range(r['ours_s'])}) | {mt * 1e3:.2f} "
                     f"({cpu.ms_range(r['torch_s'])}) | "
                     f"{mt / mo:.2f}x | {100 * fl / mo:.0f}% | {100 * fl / mt:.0f}% | "
                     f"{r['rel_err']:.1e} |")
    return lines


def local_table(records):
    lines = ["| shape | groups | pass | ms (range) | floor ms | % of floor | bound by |",
             "|---|---|---|---|---|---|---|"]
    for r in records:
        lines.append(f"| {r['shape']} | {r['groups']} | {r['pass']} | {r['median_s'] * 1e3:.2f}"
                     f" ({cpu.ms_range(r['samples_s'])}) | {r['floor_s'] * 1e3:.2f} | "
                     f"{r['pct_floor']:.0f}% | {r['bound']} |")
    return lines


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.groups", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--only", nargs="*", help="shape names (default: all)")
    ap.add_argument("--read-mb", type=int, default=512, help="the bandwidth probe's array")
    ap.add_argument("--save", action="store_true",
                    help="write bench/results/groups_<machine>[_avx2].md")
    args = ap.parse_args(argv)
    pick = (lambda table: {k: v for k, v in table.items()
                           if not args.only or k in args.only})
    gbps, gflops = cpu.read_gbps(args.read_mb), cpu.sgemm_gflops()
    isa = os.environ.get("NUMBA_CPU_NAME") or "native"
    emit(f"# grouped layers; {cpu.cpu_model()}, {os.cpu_count()} CPUs, our kernels' target "
         f"{isa}; read bandwidth {gbps:.1f} GB/s, sgemm {gflops:.0f} GFLOP/s (this run); "
         f"float32")
    if pick(CONV_SHAPES):
        for line in conv_table(conv_records(pick(CONV_SHAPES), args.repeat, gbps, gflops)):
            emit(line)
        emit()
    if pick(LOCAL_SHAPES):
        for line in local_table(local_records(pick(LOCAL_SHAPES), args.repeat, gbps, gflops)):
            emit(line)
    if args.save:
        isa = "_avx2" if os.environ.get("NUMBA_CPU_NAME") == "haswell" else ""
        path = cpu.results_stem("groups") + isa + ".md"
        with open(path, "w") as f:
            f.write("\n".join(_lines) + "\n")
        print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
