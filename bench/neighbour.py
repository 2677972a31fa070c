"""neighbour_penalty on the CPU against its floor, in one run:

    python -m bench.neighbour                      # alexnet_conv1's banks: 55x55x96x3x11x11
    python -m bench.neighbour --grid 27 27 --dtype bfloat16 --repeat 9

For each metric (l2, cosine) and neighbourhood (4, 8), the penalty alone and with its gradient
added into grad_weight: the median and range of `--repeat` timed calls after a warm-up (the JIT
compile is never timed), and the floor, the bytes that must move over the read bandwidth
measured in the same run (bench.cpu.read_gbps): the banks read once (the penalty alone), plus
the gradient read and written once (with grad_weight). Each row is checked against the float64
oracle first (reference.neighbour_penalty; a grid of at most 8x8 of the same banks).
Then average_banks into a separate out= (floor: the banks read once and written once; and
the bytes moved per second against the copy bandwidth). `python -m bench --full` runs the same
rows (bench/report/build.py) and rates them (bench/report/targets.py).
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


# what the tables time: every metric x neighbourhood, with and without grad_weight; two
# blockings of average_banks (bench/sharing.py counts its progress steps from these)
METRICS = ("l2", "cosine")
NEIGHBOURHOODS = (4, 8)
GROUPS_OF = ("all", (2, 2))


def penalty_records(weight, repeat, gbps, wrap=False, progress=None):
    """[record] of neighbour_penalty on `weight` for each metric, neighbourhood and with/without
    grad_weight: samples (s), median, floor (bytes over the read bandwidth), % of it, rel err."""
    row = dtypes.lookup(weight.dtype)
    grad = np.zeros(weight.shape, row.accum)
    out = []
    for metric in METRICS:
        for n in NEIGHBOURHOODS:
            err = _check(weight, metric, n, wrap)
            for with_grad in (False, True):
                kw = dict(metric=metric, neighbourhood=n, wrap=wrap,
                          grad_weight=grad if with_grad else None)
                call = (lambda kw=kw: sf.neighbour_penalty(weight, 0.5, **kw))
                call()                                         # compile, warm the pages
                samples = cpu.measure(call, max(1, repeat), 0.0)
                nbytes = weight.nbytes + (2 * grad.nbytes if with_grad else 0)
                floor, med = nbytes / gbps / 1e9, float(np.median(samples))
                out.append(dict(banks=_shape(weight), metric=metric, neighbourhood=n,
                                grad_weight=with_grad,
                                wrap=wrap, samples_s=samples, median_s=med, floor_s=floor,
                                pct_floor=100 * floor / med, rel_err=float(err)))
                if progress:
                    progress(f"neighbour_penalty {metric}/{n}"
                             + (" with grad_weight" if with_grad else ""))
    return out


def average_records(weight, repeat, gbps, copy_gbps, progress=None):
    """[record] of average_banks into a separate out=: samples (s), median, floor (the banks
    read and written once over the read bandwidth), and the bytes moved per second as % of
    the copy bandwidth (both measured in the caller's run)."""
    out = []
    for groups_of in GROUPS_OF:
        small = np.ascontiguousarray(weight[:8, :8])
        want = reference.average_banks(small, (8, 8) if groups_of == "all" else groups_of)
        err = dtypes.rel_err(sf.average_banks(small.copy(), groups_of=groups_of), want)
        dst = np.empty_like(weight)
        call = (lambda g=groups_of: sf.average_banks(weight, groups_of=g, out=dst))
        call()                                                          # compile, touch out
        samples = cpu.measure(call, max(1, repeat), 0.0)
        moved = 2 * weight.nbytes                                       # read + write
        floor, med = moved / gbps / 1e9, float(np.median(samples))
        out.append(dict(banks=_shape(weight), groups_of=str(groups_of), samples_s=samples,
                        median_s=med, floor_s=floor, pct_floor=100 * floor / med,
                        gbps=moved / med / 1e9, pct_copy=100 * moved / med / 1e9 / copy_gbps,
                        rel_err=float(err)))
        if progress:
            progress(f"average_banks {groups_of}")
    return out


def _shape(weight):
    return "x".join(map(str, weight.shape)) + f" ({weight.nbytes / 1e6:.0f} MB)"


def penalty_table(records):
    lines = ["| metric | neighbourhood | grad_weight | median ms | range ms | floor ms "
             "| % of floor | rel err |", "|---|---|---|---|---|---|---|---|"]
    for r in records:
        lines.append(f"| {r['metric']} | {r['neighbourhood']} | "
                     f"{'yes' if r['grad_weight'] else 'no'} | {r['median_s'] * 1e3:.1f} | "
                     f"{cpu.ms_range(r['samples_s'], 1)} | {r['floor_s'] * 1e3:.1f} | "
                     f"{r['pct_floor']:.0f}% | {r['rel_err']:.1e} |")
    return lines


def average_table(records):
    lines = ["| average_banks groups_of | median ms | range ms | floor ms | % of floor | GB/s "
             "| % of copy | rel err |", "|---|---|---|---|---|---|---|---|"]
    for r in records:
        lines.append(f"| {r['groups_of']} | {r['median_s'] * 1e3:.1f} | "
                     f"{cpu.ms_range(r['samples_s'], 1)} | {r['floor_s'] * 1e3:.1f} | "
                     f"{r['pct_floor']:.0f}% | {r['gbps']:.1f} | {r['pct_copy']:.0f}% | "
                     f"{r['rel_err']:.1e} |")
    return lines


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
    weight = banks(tuple(args.grid) + tuple(args.bank), args.dtype)
    gbps = cpu.read_gbps(args.read_mb)
    copy = max(cpu.copy_gbps())
    print(f"# neighbour_penalty, weight {weight.shape} {args.dtype} "
          f"({weight.nbytes / 1e6:.0f} MB), wrap={args.wrap}; {cpu.cpu_model()}; read bandwidth "
          f"{gbps:.1f} GB/s, copy {copy:.1f} GB/s (this run)")
    print("\n".join(penalty_table(penalty_records(weight, args.repeat, gbps, args.wrap))))
    print()
    print("\n".join(average_table(average_records(weight, args.repeat, gbps, copy))))
    return 0


def banks(shape, dtype="float32"):
    """Random banked weights of `shape` in storage dtype `dtype` (seeded)."""
    rng = np.random.default_rng(0)
    return rng.standard_normal(shape, dtype=np.float32).astype(dtypes.lookup(dtype).storage)


if __name__ == "__main__":
    sys.exit(main())
