"""neighbour_penalty on the CPU against its floor, in one run:

    python -m bench.neighbour                      # alexnet_conv1's banks: 55x55x96x3x11x11
    python -m bench.neighbour --grid 27 27 --dtype bfloat16 --repeat 9

For each metric (l2, cosine) and neighbourhood (4, 8), the penalty alone and with its gradient
added into grad_weight: the median and range of `--repeat` timed calls after a warm-up (the JIT
compile is never timed), and the floor, the bytes that must move over the read bandwidth
measured in the same run (bench.cpu.read_gbps): the banks read once (the penalty alone), plus
the gradient read and written once (with grad_weight). Each row is checked against the float64
oracle first (reference.neighbour_penalty; a grid of at most 8x8 of the same banks).
Then average_banks into a separate out= (floor: the banks read once and written once).
"""
import argparse
import sys

import numpy as np

import sharenet_fast as sf
from sharenet_fast import dtypes, reference

from bench import cpu


def _check(weight, metric, neighbourhood, wrap):
    w = np.ascontiguousarray(weight[:8, :8])
    grad = np.zeros(w.shape, dtypes.lookup(w.dtype).accum)
    got = sf.neighbour_penalty(w, 0.5, metric=metric, neighbourhood=neighbourhood, wrap=wrap,
                               grad_weight=grad)
    want, dw = reference.neighbour_penalty(w, 0.5, metric, neighbourhood, wrap)
    return max(abs(got - want) / max(1.0, abs(want)), dtypes.rel_err(grad, dw))


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.neighbour", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--grid", type=int, nargs=2, default=(55, 55), metavar=("TP", "TQ"))
    ap.add_argument("--bank", type=int, nargs=4, default=(96, 3, 11, 11),
                    metavar=("K", "C", "R", "S"))
    ap.add_argument("--dtype", default="float32", choices=dtypes.NAMES)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--wrap", action="store_true")
    ap.add_argument("--read-mb", type=int, default=512, help="the bandwidth probe's array")
    args = ap.parse_args(argv)
    row = dtypes.lookup(args.dtype)
    rng = np.random.default_rng(0)
    shape = tuple(args.grid) + tuple(args.bank)
    weight = rng.standard_normal(shape, dtype=np.float32).astype(row.storage)
    grad = np.zeros(shape, row.storage)
    gbps = cpu.read_gbps(args.read_mb)
    print(f"# neighbour_penalty, weight {shape} {row.name} ({weight.nbytes / 1e6:.0f} MB), "
          f"wrap={args.wrap}; {cpu.cpu_model()}; read bandwidth {gbps:.1f} GB/s (this run)")
    print("| metric | neighbourhood | grad_weight | median ms | range ms | floor ms | % of floor "
          "| rel err |")
    print("|---|---|---|---|---|---|---|---|")
    for metric in ("l2", "cosine"):
        for n in (4, 8):
            err = _check(weight, metric, n, args.wrap)
            for with_grad in (False, True):
                kw = dict(metric=metric, neighbourhood=n, wrap=args.wrap,
                          grad_weight=grad if with_grad else None)
                call = (lambda kw=kw: sf.neighbour_penalty(weight, 0.5, **kw))
                call()                                         # compile, warm the pages
                samples = cpu.measure(call, max(1, args.repeat), 0.0)
                nbytes = weight.nbytes * (3 if with_grad else 1)
                floor, med = nbytes / gbps / 1e9, float(np.median(samples))
                print(f"| {metric} | {n} | {'yes' if with_grad else 'no'} | {med * 1e3:.1f} | "
                      f"{min(samples) * 1e3:.1f}-{max(samples) * 1e3:.1f} | {floor * 1e3:.1f} | "
                      f"{100 * floor / med:.0f}% | {err:.1e} |")
                sys.stdout.flush()
    print()
    print("| average_banks groups_of | median ms | range ms | floor ms | % of floor | rel err |")
    print("|---|---|---|---|---|---|")
    for groups_of in ("all", (2, 2)):
        small = np.ascontiguousarray(weight[:8, :8])
        want = reference.average_banks(small, (8, 8) if groups_of == "all" else groups_of)
        err = dtypes.rel_err(sf.average_banks(small.copy(), groups_of=groups_of), want)
        out = np.empty_like(weight)
        call = (lambda g=groups_of: sf.average_banks(weight, groups_of=g, out=out))
        call()                                                          # compile, touch out
        samples = cpu.measure(call, max(1, args.repeat), 0.0)
        floor, med = 2 * weight.nbytes / gbps / 1e9, float(np.median(samples))   # read + write
        print(f"| {groups_of} | {med * 1e3:.1f} | {min(samples) * 1e3:.1f}-"
              f"{max(samples) * 1e3:.1f} | {floor * 1e3:.1f} | {100 * floor / med:.0f}% | "
              f"{err:.1e} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
