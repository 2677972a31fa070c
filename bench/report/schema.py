"""The JSON a benchmark run writes (`python -m bench --json`, CPU and GPU alike), as data.

`validate(doc)` returns a list of problems (empty: valid). The report checks its own output
before writing it; compare.py and plots.py check what they read, so a wrong or old file gets a
clear message instead of a KeyError. No jsonschema dependency: the format is small.

Vocabulary (the op table's, sharenet_fast.optable): `layer` is an op name (conv2d, tiled_conv2d,
local2d); `pass` is an op-table pass word (forward, input, weight, bias, input_weight), or
backward (input + weight + bias gradients in one call), or soft_sharing_penalty (the penalty op
on a local2d layer's banks); `deterministic` is the backward's keyword the timing ran with;
`accumulate`: the gradients were added into a grad_weight= buffer (backward (grad_weight=));
`grid` is the layer's bank grid (TP, TQ); `dtype` the storage dtype of the timed arrays
(float32, or bfloat16 with float32 accumulation; a grad_weight= buffer is float32 either way).
A timing is keyed by key(record): (shape, layer, pass_label, impl), where pass_label adds
" (deterministic)" or " (grad_weight=)" to the pass, and " [bfloat16]" for a storage dtype other
than float32.
`floor_s` is the least time the pass can take here (max(bytes / limits.read_gbps, flops /
limits.sgemm_gflops)), `pct_floor` = 100 * floor_s / median_s; both None where the limits were
not measured. `machine.isa` is what the CPU code was compiled for (python -m bench --isa:
native or avx2). Version 3 and 4 files (3: no read bandwidth, no floor, no isa; 4: no dtype,
all float32) are upgraded on load (upgrade()).
"""
from __future__ import annotations

import math

from sharenet_fast import dtypes, optable

VERSION = "sharenet_fast.bench/5"

NUM = (int, float)
OPT_NUM = (int, float, type(None))
OPT_STR = (str, type(None))

TOP = {"schema": str, "machine": dict, "versions": dict, "limits": dict, "config": dict,
       "shapes": dict, "results": list, "startup": (dict, type(None)),
       "peak_memory": (dict, type(None))}
# optional (a --full CPU run has it): the sharing ops' extra tables (bench/sharing.py)
OPTIONAL = {"sharing": (dict, type(None))}
SHARING = ("groups_conv", "groups_local", "neighbour", "average")
MACHINE = {"device": str, "date": str, "load_average_at_start": NUM, "isa": str}
CONFIG = {"mode": str, "target": str, "backends": list, "repeat": int, "min_time_s": NUM,
          "batch": (int, type(None)), "shapes": list, "layers": list, "tile": list,
          "peers": list}
SHAPE = {"N": int, "C": int, "H": int, "W": int, "K": int, "R": int, "S": int, "stride": int,
         "padding": int, "describe": str, "P": int, "Q": int, "gflop_forward": NUM}
RESULT = {"shape": str, "dims": dict, "layer": str, "grid": list, "pass": str,
          "deterministic": bool, "accumulate": bool, "dtype": str, "impl": str,
          "role": str, "label": str, "params": int, "weight_bytes": int, "flops": int,
          "bytes": int, "weight_stream_bytes": int, "samples_s": list, "median_s": NUM,
          "q1_s": NUM, "q3_s": NUM, "gflops": NUM, "gbps": NUM, "weight_gbps": NUM,
          "pct_sgemm": OPT_NUM, "pct_copy": OPT_NUM, "pct_copy_weights": OPT_NUM,
          "floor_s": OPT_NUM, "pct_floor": OPT_NUM, "rel_err": OPT_NUM, "rel_err_against": OPT_STR}
BACKWARD = "backward"               # input + weight + bias gradients, one call
PASSES = (*optable.PASSES, BACKWARD, optable.PENALTY)
ISAS = ("native", "avx2")          # python -m bench --isa: what the CPU code was compiled for
CHOICES = {"mode": ("quick", "full"), "target": ("cpu", "gpu"), "isa": ISAS,
           "layer": tuple(optable.layers()), "role": ("ours", "peer"), "pass": PASSES,
           "dtype": dtypes.NAMES}


# the variants of a pass a timing can run with (a record's boolean fields), as labels spell them
VARIANTS = {"deterministic": " (deterministic)", "accumulate": " (grad_weight=)"}


DEFAULT_DTYPE = "float32"


def pass_label(pass_, deterministic=False, accumulate=False, dtype=DEFAULT_DTYPE):
    """How tables and keys spell a timing's pass: the pass word, plus ' (deterministic)' or
    ' (grad_weight=)', plus ' [bfloat16]' for a storage dtype other than float32."""
    on = dict(deterministic=deterministic, accumulate=accumulate)
    text = pass_ + "".join(suffix for name, suffix in VARIANTS.items() if on[name])
    return text if dtype == DEFAULT_DTYPE else f"{text} [{dtype}]"


def parse_label(label):
    """(pass, {variant: bool, "dtype": name}) of a pass label: the inverse of pass_label."""
    on = {"dtype": DEFAULT_DTYPE}
    if label.endswith("]") and " [" in label:
        label, dt = label[:-1].rsplit(" [", 1)
        on["dtype"] = dt
    for name, suffix in VARIANTS.items():
        on[name] = suffix in label
        label = label.replace(suffix, "")
    return label, on


def label(r):
    """A record's pass label."""
    return pass_label(r["pass"], r["deterministic"], r["accumulate"],
                      r.get("dtype", DEFAULT_DTYPE))


def key(r):
    """(shape, layer, pass label, impl): one timing of a run."""
    return (r["shape"], r["layer"], label(r), r["impl"])


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
                "bench/report/build.py? re-run python -m bench --json)"]
    _fields("document", doc, TOP, problems)
    _fields("document", doc, {k: v for k, v in OPTIONAL.items() if k in doc}, problems)
    if problems:
        return problems
    for name, rows in (doc.get("sharing") or {}).items():
        if name not in SHARING:
            problems.append(f"sharing.{name}: not one of {SHARING}")
        elif not isinstance(rows, list) or not all(
                isinstance(r, dict) and isinstance(r.get("median_s"), NUM) for r in rows):
            problems.append(f"sharing.{name}: expected a list of timings with median_s")
    _fields("machine", doc["machine"], MACHINE, problems)
    _fields("config", doc["config"], CONFIG, problems)
    bad = [v for v in doc["config"].get("layers") or () if v not in CHOICES["layer"]]
    if bad:
        problems.append(f"config.layers: {bad} not in {CHOICES['layer']}")
    for name, s in doc["shapes"].items():
        _fields(f"shapes.{name}", s, SHAPE, problems)
    for name in ("sgemm_gflops", "copy_gbps", "read_gbps"):
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


def upgrade(doc):
    """A version 3 or 4 document as version 5, in place (other documents are returned as they
    are): 3 -> 4: compiled for the host (native), no timing accumulated into a buffer, and no
    floor (version 3 measured no read bandwidth); 4 -> 5: every timing float32."""
    if isinstance(doc, dict) and doc.get("schema") == "sharenet_fast.bench/3":
        if isinstance(doc.get("machine"), dict):
            doc["machine"].setdefault("isa", "native")
        for r in doc.get("results") or ():
            if isinstance(r, dict):
                r.setdefault("accumulate", False)
                r.setdefault("floor_s", None)
                r.setdefault("pct_floor", None)
        doc["schema"] = "sharenet_fast.bench/4"
    if isinstance(doc, dict) and doc.get("schema") == "sharenet_fast.bench/4":
        for r in doc.get("results") or ():
            if isinstance(r, dict):
                r.setdefault("dtype", DEFAULT_DTYPE)
        doc["schema"] = VERSION
    return doc


def load(path):
    """A benchmark JSON file (version 3 upgraded), validated: ValueError naming the file and
    its problems."""
    import json

    with open(path) as f:
        doc = upgrade(json.load(f))
    problems = validate(doc)
    if problems:
        raise ValueError(f"{path}: not a benchmark result of this version: "
                         + "; ".join(problems[:8]))
    return doc
