"""Diff two benchmark JSON files and flag changes beyond the spread of their samples.

    python -m bench.report.compare OLD.json NEW.json [--threshold 0.05] [--all]

Reads the JSON of `python -m bench --json` (CPU or --gpu: bench/report/schema.py, raw samples in
seconds). Every timing (shape, layer, pass, impl) present in both files is compared by its
median. A change counts only when it is larger than the noise: the interquartile ranges of the
two sample sets must not overlap AND the medians must differ by more than --threshold
(relative). Exit status 1 if anything of ours got
slower (a regression), 0 otherwise; timings in only one file are listed, not judged.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

from bench.report import schema


def timings(doc):
    """{(shape, layer, pass label, impl): samples in seconds} (schema.key)."""
    return {schema.key(r): list(r["samples_s"]) for r in doc["results"]}


def ours(doc):
    """The impl names that are ours (the others are peers: their changes are not judged)."""
    return {r["impl"] for r in doc["results"] if r["role"] == "ours"}


def judge(old, new, threshold=0.05):
    """'slower', 'faster' or 'same' for two sample sets (see the module docstring)."""
    o, n = np.asarray(old, float), np.asarray(new, float)
    o25, o50, o75 = np.percentile(o, [25, 50, 75])
    n25, n50, n75 = np.percentile(n, [25, 50, 75])
    if n50 > o50 * (1 + threshold) and n25 > o75:
        return "slower"
    if n50 < o50 / (1 + threshold) and n75 < o25:
        return "faster"
    return "same"


def compare(old_doc, new_doc, threshold=0.05):
    """[(key, old median s, new median s, verdict)] for the common keys, plus the keys in only
    one file: (only_old, only_new)."""
    old, new = timings(old_doc), timings(new_doc)
    rows = []
    for key in sorted(set(old) & set(new), key=str):
        rows.append((key, float(np.median(old[key])), float(np.median(new[key])),
                     judge(old[key], new[key], threshold)))
    return rows, sorted(set(old) - set(new), key=str), sorted(set(new) - set(old), key=str)


def _machine(doc):
    """What the timings ran on: the GPU's name, or the CPU's processor and core count."""
    return doc["machine"]["device"]


def drift(old_doc, new_doc, tolerance=0.1):
    """[(limit, old, new)] of the machine limits both runs measured (GFLOP/s, GB/s) that moved
    by more than `tolerance`: a shared VM slower in one run moves every timing, ours and the
    peers', by about as much, which the per-timing verdicts cannot tell from a regression."""
    lo, ln = old_doc.get("limits") or {}, new_doc.get("limits") or {}
    return [(k, lo[k], ln[k]) for k in sorted(set(lo) & set(ln))
            if k.endswith(("gflops", "gbps")) and isinstance(lo[k], (int, float))
            and isinstance(ln[k], (int, float)) and lo[k] > 0
            and abs(ln[k] / lo[k] - 1) > tolerance]


def main(argv=None, out=sys.stdout):
    p = argparse.ArgumentParser(prog="python -m bench.report.compare",
                                description=__doc__.split("\n")[0])
    p.add_argument("old")
    p.add_argument("new")
    p.add_argument("--threshold", type=float, default=0.05,
                   help="smallest relative change of the median that counts (default 0.05)")
    p.add_argument("--all", action="store_true", help="list unchanged timings too")
    args = p.parse_args(argv)
    try:
        old_doc, new_doc = schema.load(args.old), schema.load(args.new)
    except ValueError as exc:
        print(f"python -m bench.report.compare: {exc}", file=sys.stderr)
        return 2
    rows, only_old, only_new = compare(old_doc, new_doc, args.threshold)
    mo, mn = _machine(old_doc), _machine(new_doc)
    if mo != mn:
        print(f"note: the machines differ ({mo} vs {mn}): a change may be the machine's",
              file=out)
    moved = drift(old_doc, new_doc)
    if moved:
        print("note: the machine's measured limits moved between the runs (" + ", ".join(
            f"{k} {o:.0f} -> {n:.0f}, {n / o:.2f}x" for k, o, n in moved) + "): compare ours "
            "against the peers of the same run, not milliseconds across runs", file=out)
    print("| shape | layer | pass | who | old ms | new ms | new/old | verdict |", file=out)
    print("|---|---|---|---|---|---|---|---|", file=out)
    regressions = 0
    for (shape, layer, pass_, who), o, n, verdict in rows:
        mine = who in ours(new_doc) | ours(old_doc)
        if verdict == "slower" and mine:
            regressions += 1
            verdict = "SLOWER (regression)"
        if verdict != "same" or args.all:
            print(f"| {shape} | {layer} | {pass_} | {who} | {o * 1e3:.3f} | {n * 1e3:.3f} | "
                  f"{n / o:.2f} | {verdict} |", file=out)
    print(f"{len(rows)} timings compared: {regressions} regressions of ours, "
          f"{sum(v == 'faster' for *_, v in rows)} faster, "
          f"{sum(v == 'same' for *_, v in rows)} within the spread", file=out)
    for label, keys in (("only in old", only_old), ("only in new", only_new)):
        if keys:
            print(f"{label}: " + ", ".join("/".join(map(str, k)) for k in keys), file=out)
    return 1 if regressions else 0


if __name__ == "__main__":
    sys.exit(main())
