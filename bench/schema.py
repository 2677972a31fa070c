"""The JSON a benchmark run writes (`python -m bench --json`, CPU and GPU alike), as data.

`validate(doc)` returns a list of problems (empty: valid). The report checks its own output
before writing it; compare.py and plots.py check what they read, so a wrong or old file gets a
clear message instead of a KeyError. No jsonschema dependency: the format is small.
"""
from __future__ import annotations

import math

VERSION = "sharenet_fast.bench/2"

NUM = (int, float)
OPT_NUM = (int, float, type(None))
OPT_STR = (str, type(None))

TOP = {"schema": str, "machine": dict, "versions": dict, "limits": dict, "config": dict,
       "shapes": dict, "results": list, "startup": (dict, type(None)),
       "peak_memory": (dict, type(None))}
MACHINE = {"device": str, "date": str, "load_average_at_start": NUM}
CONFIG = {"mode": str, "target": str, "backends": list, "repeat": int, "min_time_s": NUM,
          "batch": (int, type(None)), "shapes": list, "layers": list, "tile": list,
          "peers": list}
SHAPE = {"N": int, "C": int, "H": int, "W": int, "K": int, "R": int, "S": int, "stride": int,
         "padding": int, "describe": str, "P": int, "Q": int, "gflop_forward": NUM}
RESULT = {"shape": str, "dims": dict, "layer": str, "tile": list, "pass": str, "impl": str,
          "role": str, "label": str, "params": int, "weight_bytes": int, "flops": int,
          "bytes": int, "weight_stream_bytes": int, "samples_s": list, "median_s": NUM,
          "q1_s": NUM, "q3_s": NUM, "gflops": NUM, "gbps": NUM, "weight_gbps": NUM,
          "pct_sgemm": OPT_NUM, "pct_copy": OPT_NUM, "pct_copy_weights": OPT_NUM,
          "rel_err": OPT_NUM, "rel_err_against": OPT_STR}
CHOICES = {"mode": ("quick", "full"), "target": ("cpu", "gpu"),
           "layer": ("shared", "tiled", "local"), "role": ("ours", "peer"),
           "pass": ("forward", "backward", "weight (atomic)", "weight (deterministic)",
                    "penalty")}


def _fields(where, obj, spec, problems):
    if not isinstance(obj, dict):
        problems.append(f"{where}: expected an object, got {type(obj).__name__}")
        return
    for key, typ in spec.items():
        if key not in obj:
            problems.append(f"{where}: missing {key!r}")
        elif isinstance(obj[key], bool) or not isinstance(obj[key], typ):
            problems.append(f"{where}.{key}: {type(obj[key]).__name__} is not "
                            f"{getattr(typ, '__name__', typ)}")
        elif key in CHOICES and obj[key] not in CHOICES[key]:
            problems.append(f"{where}.{key}: {obj[key]!r} not one of {CHOICES[key]}")


def validate(doc):
    """Problems with a benchmark JSON document ([] when it matches this schema)."""
    problems = []
    if not isinstance(doc, dict):
        return [f"document: expected an object, got {type(doc).__name__}"]
    if doc.get("schema") != VERSION:
        return [f"schema: {doc.get('schema')!r}, expected {VERSION!r} (a file from an older "
                "bench/report.py? re-run python -m bench --json)"]
    _fields("document", doc, TOP, problems)
    if problems:
        return problems
    _fields("machine", doc["machine"], MACHINE, problems)
    _fields("config", doc["config"], CONFIG, problems)
    for name, s in doc["shapes"].items():
        _fields(f"shapes.{name}", s, SHAPE, problems)
    for key in ("sgemm_gflops", "copy_gbps"):
        if key in doc["limits"] and not isinstance(doc["limits"][key], NUM):
            problems.append(f"limits.{key}: not a number")
    seen = set()
    for i, r in enumerate(doc["results"]):
        where = f"results[{i}]"
        before = len(problems)
        _fields(where, r, RESULT, problems)
        if len(problems) > before:           # the checks below need the fields' types right
            continue
        if r["shape"] not in doc["shapes"]:
            problems.append(f"{where}.shape: {r['shape']!r} not in shapes")
        if not r["samples_s"] or not all(isinstance(v, NUM) and v >= 0 and math.isfinite(v)
                                         for v in r["samples_s"]):
            problems.append(f"{where}.samples_s: needs >= 1 finite non-negative sample")
        elif not r["q1_s"] <= r["median_s"] <= r["q3_s"]:
            problems.append(f"{where}: q1_s <= median_s <= q3_s does not hold")
        key = (r["shape"], r["layer"], r["pass"], r["impl"])
        if key in seen:
            problems.append(f"{where}: duplicate timing {key}")
        seen.add(key)
        if r["role"] == "ours" and r["impl"] not in doc["config"]["backends"]:
            problems.append(f"{where}.impl: {r['impl']!r} is 'ours' but not a configured backend")
    return problems


def load(path):
    """A benchmark JSON file, validated: ValueError naming the file and its problems."""
    import json

    with open(path) as f:
        doc = json.load(f)
    problems = validate(doc)
    if problems:
        raise ValueError(f"{path}: not a benchmark result of this version: "
                         + "; ".join(problems[:8]))
    return doc
