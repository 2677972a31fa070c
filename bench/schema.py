"""The JSON a benchmark run writes (`python -m bench --json`, CPU and GPU alike), as data.

`validate(doc)` returns a list of problems (empty: valid). The report checks its own output
before writing it; compare.py and plots.py check what they read, so a wrong or old file gets a
clear message instead of a KeyError. No jsonschema dependency: the format is small.

Vocabulary (the op table's, sharenet_fast.optable): `layer` is an op name (conv2d, tiled_conv2d,
local2d); `pass` is an op-table pass word (forward, input, weight, bias, input_weight), or
backward (input + weight + bias gradients in one call), or soft_sharing_penalty (the penalty op
on a local2d layer's banks); `deterministic` is the backward's keyword the timing ran with;
`grid` is the layer's bank grid (TP, TQ). A timing is keyed by key(record): (shape, layer,
pass_label, impl), where pass_label adds " (deterministic)" to a deterministic timing.
"""
from __future__ import annotations

import math

from sharenet_fast import optable

VERSION = "sharenet_fast.bench/3"

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
RESULT = {"shape": str, "dims": dict, "layer": str, "grid": list, "pass": str,
          "deterministic": bool, "impl": str,
          "role": str, "label": str, "params": int, "weight_bytes": int, "flops": int,
          "bytes": int, "weight_stream_bytes": int, "samples_s": list, "median_s": NUM,
          "q1_s": NUM, "q3_s": NUM, "gflops": NUM, "gbps": NUM, "weight_gbps": NUM,
          "pct_sgemm": OPT_NUM, "pct_copy": OPT_NUM, "pct_copy_weights": OPT_NUM,
          "rel_err": OPT_NUM, "rel_err_against": OPT_STR}
BACKWARD = "backward"               # input + weight + bias gradients, one call
PASSES = (*optable.PASSES, BACKWARD, optable.PENALTY)
CHOICES = {"mode": ("quick", "full"), "target": ("cpu", "gpu"),
           "layer": tuple(optable.layers()), "role": ("ours", "peer"), "pass": PASSES}


def pass_label(pass_, deterministic=False):
    """How tables and keys spell a timing's pass: the pass word, plus ' (deterministic)'."""
    return pass_ + (" (deterministic)" if deterministic else "")


def key(r):
    """(shape, layer, pass label, impl): one timing of a run."""
    return (r["shape"], r["layer"], pass_label(r["pass"], r["deterministic"]), r["impl"])


def _fields(where, obj, spec, problems):
    if not isinstance(obj, dict):
        problems.append(f"{where}: expected an object, got {type(obj).__name__}")
        return
    for field, typ in spec.items():
        v = obj.get(field)
        if field not in obj:
            problems.append(f"{where}: missing {field!r}")
        elif (isinstance(v, bool) and typ is not bool) or not isinstance(v, typ):
            problems.append(f"{where}.{field}: {type(v).__name__} is not "
                            f"{getattr(typ, '__name__', typ)}")
        elif field in CHOICES and v not in CHOICES[field]:
            problems.append(f"{where}.{field}: {v!r} not one of {CHOICES[field]}")


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
    bad = [v for v in doc["config"].get("layers") or () if v not in CHOICES["layer"]]
    if bad:
        problems.append(f"config.layers: {bad} not in {CHOICES['layer']}")
    for name, s in doc["shapes"].items():
        _fields(f"shapes.{name}", s, SHAPE, problems)
    for name in ("sgemm_gflops", "copy_gbps"):
        if name in doc["limits"] and not isinstance(doc["limits"][name], NUM):
            problems.append(f"limits.{name}: not a number")
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
        k = key(r)
        if k in seen:
            problems.append(f"{where}: duplicate timing {k}")
        seen.add(k)
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
