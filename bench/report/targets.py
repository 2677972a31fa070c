"""The performance targets, as data: one row per target. `python -m bench` prints, for each row
that matches its run, the measured figure and, where the run has the target's shape and batch,
met / NOT met. `python -m bench.report.targets` prints the table.

Columns (ANY = "*": every value):
    name       what the row is called
    target     cpu or gpu: the run (python -m bench [--gpu]) that rates it
    impl       the backend of ours it rates, or ANY (every backend of the run)
    layer      op name (sf.layers()), or ANY
    passes     comma-separated pass labels (bench/report/schema.py: forward, backward,
               backward (grad_weight=), weight, weight (deterministic), soft_sharing_penalty),
               or ANY
    metric     what is measured: a key of METRICS below
    threshold  "op number" (>=, <=, <, >), or "-": the figure alone, never a verdict
    shapes     comma-separated suite shapes whose figure gets a verdict, or ANY
    batch      the batch the target is stated at (another batch: figure only), or ANY, or
               SUITE ("suite"): the shape exactly as bench/shapes.py's suite has it (its own
               batch, outputs not cut: python -m bench --full)
    against    the timing it is compared with: the one key field (bench/report/schema.py key) that
               differs from the rated timing's, by its value: an impl (torch-unfold), a layer
               (conv2d) or a pass label (weight); or "-"
"""
from __future__ import annotations

import operator
import sys
from typing import NamedTuple

from bench import ops
from bench.report import schema
from bench.shapes import SUITE as SUITE_SHAPES
from sharenet_fast import optable

ANY = "*"
SUITE = "suite"


class Target(NamedTuple):
    name: str
    target: str
    impl: str
    layer: str
    passes: str
    metric: str
    threshold: str
    shapes: str
    batch: object
    against: str


# short names for the table's cells (the header's "pass" is the passes column, "N" the batch)
CONV, TILED, LOCAL = "conv2d", "tiled_conv2d", "local2d"
FB, FWD, PEN, DET = "forward,backward", "forward", optable.PENALTY, "weight (deterministic)"
GW = "backward (grad_weight=)"            # the backward adding dW into a buffer
BWDP = "backward"                          # the plain backward (a speedup's other pass)
FWD16, BWD16 = "forward [bfloat16]", "backward [bfloat16]"     # bfloat16 storage (pass labels)
FB16 = f"{FWD16},{BWD16}"
PEN16 = f"{optable.PENALTY} [bfloat16]"
NC, CP = "numba-cuda", "cupy"
UNF, EAGER, CUDNN = "torch-unfold", "torch-eager", "torch-conv2d"     # PyTorch peers (bench/ops.py)
ONEDNN = CUDNN                          # the same peer on the CPU: torch conv2d runs oneDNN there
TFK, JAX = "tf-keras", "jax"            # the local layer's other CPU peers (--full)
CPU8 = "alexnet_conv1,deepface_l4"      # the CPU targets' shapes, stated at their suite batch
TABLE = tuple(Target(*row) for row in (
    # name               target impl   layer  pass metric           threshold shape N    against
    ("local_floor",      "cpu", "cpu", LOCAL, FWD, "floor",         ">= 75",  CPU8, 8,   "-"),
    ("local_floor",      "cpu", "cpu", LOCAL, "backward", "floor",  ">= 60",  ANY,  SUITE, "-"),
    ("local_floor",      "cpu", "cpu", LOCAL, GW,  "floor",         ">= 50",  ANY,  SUITE, "-"),
    ("local_stream",     "cpu", "cpu", LOCAL, FB,  "weight_stream", ">= 50",  CPU8, 8,   "-"),
    ("local_vs_unfold",  "cpu", "cpu", LOCAL, FB,  "speedup",       ">= 5",   CPU8, 8,   UNF),
    ("local_vs_tf_keras", "cpu", "cpu", LOCAL, FWD, "speedup",      ">= 3",   CPU8, 8,   TFK),
    ("local_vs_tf_keras", "cpu", "cpu", LOCAL, FWD, "speedup",      ">= 1.5", ANY,  SUITE, TFK),
    ("local_vs_tf_keras", "cpu", "cpu", LOCAL, "backward", "speedup", "-",    ANY,  ANY, TFK),
    ("local_vs_jax",     "cpu", "cpu", LOCAL, FB,  "speedup",       "-",      ANY,  ANY, JAX),
    ("conv_vs_onednn",   "cpu", "cpu", CONV,  FB,  "speed",         ">= 0.9", ANY,  SUITE, ONEDNN),
    ("tiled_overhead",   "cpu", "cpu", TILED, FB,  "time_ratio",    "<= 1.2", ANY,  ANY, CONV),
    ("local_memory",     "cpu", "cpu", LOCAL, FWD, "peak_memory",   "< 1",    ANY,  ANY, "-"),
    ("local_memory",     "cpu", UNF,   LOCAL, FWD, "peak_memory",   "-",      ANY,  ANY, "-"),
    ("penalty_stream",   "cpu", "cpu", LOCAL, PEN, "bandwidth",     ">= 60",  ANY,  ANY, "-"),
    ("penalty_vs_eager", "cpu", "cpu", LOCAL, PEN, "speedup",       "-",      ANY,  ANY, EAGER),
    # bfloat16 storage (float32 accumulation) against our float32, same run, same inputs rounded
    ("bf16_speedup",     "cpu", "cpu", LOCAL, FWD16, "speedup",     ">= 1.8", CPU8, 8,   FWD),
    ("bf16_floor",       "cpu", "cpu", LOCAL, FWD16, "floor",       ">= 75",  CPU8, 8,   "-"),
    ("bf16_speedup",     "cpu", "cpu", LOCAL, BWD16, "speedup",     ">= 1.6", CPU8, 8,   BWDP),
    ("bf16_speedup",     "cpu", "cpu", LOCAL, PEN16, "speedup",     ">= 1.8", ANY,  ANY, PEN),
    ("bf16_speedup",     "cpu", "cpu", CONV,  FWD16, "speedup",     ">= 1.5", ANY,  ANY, FWD),
    ("bf16_speedup",     "cpu", "cpu", CONV,  BWD16, "speedup",     ">= 1.5", ANY,  ANY, BWDP),
    ("conv_vs_onednn",   "cpu", "cpu", CONV,  FB16, "speed",        ">= 0.8", ANY,  SUITE, ONEDNN),
    # the sharing ops' own tables (a --full CPU run: bench/sharing.py)
    ("grouped_vs_onednn", "cpu", "cpu", CONV, FB,  "grouped_speed", ">= 0.9", ANY,  ANY, ONEDNN),
    ("grouped_floor_gap", "cpu", "cpu", LOCAL, FB, "grouped_gap",   "<= 10",  ANY,  ANY, "-"),
    ("neighbour_floor",  "cpu", "cpu", ANY,   ANY, "neighbour_floor", ">= 70", ANY, ANY, "-"),
    ("neighbour_floor",  "cpu", "cpu", ANY,   ANY, "neighbour_alone", "-",    ANY,  ANY, "-"),
    ("average_copy",     "cpu", "cpu", ANY,   ANY, "average_copy",  ">= 70",  ANY,  ANY, "-"),
    ("conv_vs_cudnn",    "gpu", NC,    CONV,  FB,  "speed",         ">= 0.5", ANY,  64,  CUDNN),
    ("conv_vs_cudnn",    "gpu", CP,    CONV,  FB,  "speed",         ">= 0.8", ANY,  64,  CUDNN),
    ("local_stream",     "gpu", NC,    LOCAL, FB,  "weight_stream", ">= 60",  ANY,  64,  "-"),
    ("local_stream",     "gpu", CP,    LOCAL, FWD, "weight_stream", ">= 75",  ANY,  64,  "-"),
    ("local_vs_unfold",  "gpu", NC,    LOCAL, FB,  "speedup",       ">= 10",  ANY,  64,  UNF),
    ("deterministic",    "gpu", ANY,   CONV,  DET, "time_ratio",    "<= 1.3", ANY,  64,  "weight"),
    ("cupy_fastest",     "gpu", CP,    ANY,   ANY, "slower_ops",    "<= 0",   ANY,  ANY, NC),
    ("penalty_stream",   "gpu", ANY,   LOCAL, PEN, "bandwidth",     ">= 60",  ANY,  ANY, "-"),
    ("penalty_vs_eager", "gpu", ANY,   LOCAL, PEN, "speedup",       "-",      ANY,  ANY, EAGER),
))

OPS = {">=": operator.ge, "<=": operator.le, "<": operator.lt, ">": operator.gt}


class Item(NamedTuple):
    """One line of the report: a figure of one run, with its target row."""
    row: Target
    shape: str
    batch: int
    subject: str
    figure: str
    value: float
    at_suite: bool = False      # the timing's layer is the suite's shape as it is

    @property
    def rated(self):
        return (self.row.threshold != "-" and _has(self.row.shapes, self.shape)
                and (self.row.batch == ANY or self.batch == self.row.batch
                     or (self.row.batch == SUITE and self.at_suite)))

    @property
    def met(self):
        op, thr = self.row.threshold.split()
        return self.value is not None and OPS[op](self.value, float(thr))

    def line(self):
        text = f"{self.subject}: {self.figure}"
        if self.rated:
            op, thr = self.row.threshold.split()
            text += (f" (target {op} {float(thr):g}{METRICS[self.row.metric].unit}: "
                     f"{verdict(self.met)})")
        return text


def verdict(ok):
    return "met" if ok else "NOT met"


def _has(column, value):
    return column == ANY or value in column.split(",")


def _pct(v):
    return "-" if v is None or v != v else f"{v:.0f}%"


# --------------------------------------------------------------------------------- metrics
def _subject(r):
    if r["pass"] == optable.PENALTY:
        dt = r.get("dtype", "float32")
        return (f"{r['impl']}: {optable.PENALTY} on {r['shape']}'s local banks "
                f"({r['weight_bytes'] // (2 if dt in ('bfloat16', 'float16') else 4) / 1e6:.1f}M "
                f"{dt}, both gradients)")
    layer = r["layer"]
    if optable.LAYERS[layer].sharing == "tiled":
        layer += f" {r['grid'][0]}x{r['grid'][1]}"
    return (f"{r['impl']}: {layer} {schema.label(r)} "
            f"{r['shape']} (batch {r['dims']['N']})")


def _at_suite(r):
    """Whether a timing's layer is its suite shape exactly (batch and size)."""
    shape = SUITE_SHAPES.get(r["shape"])
    return shape is not None and r["dims"] == shape._asdict()


def _field(against):
    """Which key field an `against` value replaces: layer, pass or impl."""
    if against in optable.LAYERS:
        return "layer"
    if schema.parse_label(against)[0] in schema.PASSES:
        return "pass"
    return "impl"


def _other(r, by, against):
    """The timing `against` names for record r (None: not in the run)."""
    k = list(schema.key(r))
    k[{"layer": 1, "pass": 2, "impl": 3}[_field(against)]] = against
    return by.get(tuple(k))


def _describe(r, o, against, target):
    field = _field(against)
    if o["role"] == "peer":
        return ops.peer_label(o["impl"], "cuda" if target == "gpu" else "cpu")
    if field == "pass" and o.get("dtype") != r.get("dtype"):
        return f"our {o['dtype']} {o['pass']} ({o['median_s'] * 1e3:.2f} ms)"
    if field == "pass":
        return f"the {o['pass']} pass" + (" (atomic)" if not o["deterministic"] else "")
    return f"our {o['layer']}" if field == "layer" else o["label"]


class Metric(NamedTuple):
    unit: str
    items: object         # (report, row, by) -> [Item]


def _per_record(value, figure, needs_other=False):
    """A metric of one timing (and the timing `against` names)."""
    def items(report, row, by):
        out = []
        backends = report["config"]["backends"]
        for r in report["results"]:
            if (r["role"] != "ours" or not _has(row.layer, r["layer"])
                    or not _has(row.passes, schema.label(r))
                    or not (r["impl"] == row.impl or (row.impl == ANY and r["impl"] in backends))):
                continue
            o = _other(r, by, row.against) if row.against != "-" else None
            if needs_other and o is None:
                continue
            v = value(r, o)
            out.append(Item(row, r["shape"], r["dims"]["N"], _subject(r),
                            figure(r, o, v, lambda: _describe(r, o, row.against, row.target)), v,
                            _at_suite(r)))
        return out
    return items


def _speed(r, o):
    return o["median_s"] / r["median_s"] if r["median_s"] > 0 else float("nan")


def _peak_memory(report, row, by):
    out = []
    for who, m in (report.get("peak_memory") or {}).items():
        if (who == "ours") != (row.impl in report["config"]["backends"]):
            continue
        what = row.layer if who == "ours" else "PyTorch unfold+einsum"
        v = m["rss_growth"] / m["weight_bytes"]
        out.append(Item(
            row, m["shape"], m["batch"],
            f"{row.impl}: peak memory of {what} forward ({m['shape']}, batch {m['batch']})",
            f"{m['rss_growth'] / 1e6:.1f} MB beyond the resident inputs = {v:.2f}x the "
            f"weights ({m['weight_bytes'] / 1e6:.0f} MB; input {m['input_bytes'] / 1e6:.1f} MB, "
            f"output {m['output_bytes'] / 1e6:.1f} MB)", v))
    return out


def _slower_ops(report, row, by):
    """Per shape: how many timings of `impl` are slower than the same op of `against`."""
    out = []
    if row.impl not in report["config"]["backends"]:
        return out
    other = row.against
    for shape in report["config"]["shapes"]:
        pairs = [(k, r, _other(r, by, row.against)) for k, r in by.items()
                 if k[0] == shape and k[3] == row.impl]
        pairs = [(k, r, o) for k, r, o in pairs if o is not None]
        if not pairs:
            continue
        slower = [f"{k[1]} {k[2]}" for k, r, o in pairs if r["median_s"] > o["median_s"]]
        figure = (f"slower than {other} on {len(slower)} of {len(pairs)} ops"
                  + (f" ({', '.join(slower)})" if slower else ""))
        out.append(Item(row, shape, pairs[0][1]["dims"]["N"],
                        f"{row.impl}: every op of {shape} (batch {pairs[0][1]['dims']['N']})",
                        figure, len(slower)))
    return out


def _sharing(kind, pick, value, subject, figure):
    """Items of one table of the run's sharing ops (report["sharing"][kind]): the records
    `pick(record, records)` keeps, each with value(r, rs), subject(r) and figure(r, v, rs)."""
    def items(report, row, by):
        if row.impl not in report["config"]["backends"]:
            return []
        rs = (report.get("sharing") or {}).get(kind) or []
        out = []
        for r in rs:
            if pick(r, rs):
                v = value(r, rs)
                out.append(Item(row, r.get("shape", "-"), r.get("N", ANY),
                                f"{row.impl}: {subject(r)}", figure(r, v, rs), v))
        return out
    return items


def _ungrouped(r, rs):
    return next((o for o in rs if o["groups"] == 1 and o["pass"] == r["pass"]), None)


def _neighbour_subject(r):
    return (f"neighbour_penalty {r['metric']}, {r['neighbourhood']}-neighbourhood"
            + (" + grad_weight" if r["grad_weight"] else "") + f" (banks {r['banks']})")


METRICS = {
    "floor": Metric("%", _per_record(
        lambda r, o: r["pct_floor"],
        lambda r, o, v, d: (f"{r['median_s'] * 1e3:.2f} ms = {_pct(v)} of the floor "
                            f"({r['floor_s'] * 1e3:.2f} ms)" if v is not None
                            else "no floor (limits not measured)"))),
    "weight_stream": Metric("%", _per_record(
        lambda r, o: r["pct_copy_weights"],
        lambda r, o, v, d: f"weight stream {r['weight_gbps']:.1f} GB/s = {_pct(v)} of copy")),
    "bandwidth": Metric("%", _per_record(
        lambda r, o: r["pct_copy"],
        lambda r, o, v, d: f"{r['gbps']:.1f} GB/s = {_pct(v)} of copy")),
    "speedup": Metric("x", _per_record(
        _speed, lambda r, o, v, d: f"{v:.1f}x faster than {d()}", True)),
    "speed": Metric("x", _per_record(
        _speed, lambda r, o, v, d: f"{v:.2f}x the speed of {d()}", True)),
    "time_ratio": Metric("x", _per_record(
        lambda r, o: r["median_s"] / o["median_s"] if o["median_s"] > 0 else float("nan"),
        lambda r, o, v, d: f"{v:.2f}x the time of {d()}", True)),
    "peak_memory": Metric("x the weights", _peak_memory),
    "slower_ops": Metric(" ops slower", _slower_ops),
    "grouped_speed": Metric("x", _sharing(
        "groups_conv", lambda r, rs: True,
        lambda r, rs: r["torch_median_s"] / r["median_s"],
        lambda r: f"conv2d {r['shape']} (groups {r['groups']}) {r['pass']}",
        lambda r, v, rs: f"{v:.2f}x the speed of PyTorch's grouped conv (oneDNN)")),
    "grouped_gap": Metric(" points", _sharing(
        "groups_local", lambda r, rs: r["groups"] > 1 and _ungrouped(r, rs) is not None,
        lambda r, rs: _ungrouped(r, rs)["pct_floor"] - r["pct_floor"],
        lambda r: f"local2d {r['shape']} (groups {r['groups']}) {r['pass']}",
        lambda r, v, rs: (f"{r['pct_floor']:.0f}% of its floor, ungrouped "
                          f"{_ungrouped(r, rs)['pct_floor']:.0f}%: {v:.0f} points below"))),
    "neighbour_floor": Metric("%", _sharing(
        "neighbour", lambda r, rs: r["grad_weight"], lambda r, rs: r["pct_floor"],
        _neighbour_subject,
        lambda r, v, rs: f"{r['median_s'] * 1e3:.1f} ms = {v:.0f}% of its floor")),
    "neighbour_alone": Metric("%", _sharing(
        "neighbour", lambda r, rs: not r["grad_weight"], lambda r, rs: r["pct_floor"],
        _neighbour_subject,
        lambda r, v, rs: f"{r['median_s'] * 1e3:.1f} ms = {v:.0f}% of its floor")),
    "average_copy": Metric("%", _sharing(
        "average", lambda r, rs: True, lambda r, rs: r["pct_copy"],
        lambda r: f"average_banks groups_of={r['groups_of']} (banks {r['banks']})",
        lambda r, v, rs: f"{r['gbps']:.1f} GB/s = {v:.0f}% of copy")),
}


def _check_table():
    """ValueError naming the row if a row of TABLE is not spelled in this module's words."""
    for row in TABLE:
        problems = [what for what, ok in (
            ("target", row.target in ("cpu", "gpu")), ("metric", row.metric in METRICS),
            ("layer", row.layer == ANY or row.layer in optable.LAYERS),
            ("threshold", row.threshold == "-" or (len(row.threshold.split()) == 2
                                                   and row.threshold.split()[0] in OPS)),
            ("passes", all(p == ANY or schema.parse_label(p)[0] in schema.PASSES
                           for p in row.passes.split(","))),
            ("batch", row.batch in (ANY, SUITE) or isinstance(row.batch, int))) if not ok]
        if problems:
            raise ValueError(f"bench/report/targets.py row {row.name!r} ({row.target}, "
                             f"{row.impl}): bad {', '.join(problems)}")


_check_table()


# ---------------------------------------------------------------------------------- report
def evaluate(report):
    """[Item] of a run (bench/report/schema.py document): every row of its target, in the order of
    the run's shapes, then the table's."""
    by = {schema.key(r): r for r in report["results"]}
    items = []
    for row in TABLE:
        if row.target == report["config"]["target"]:
            items += METRICS[row.metric].items(report, row, by)
    order = {s: i for i, s in enumerate(report["config"]["shapes"])}
    return sorted(items, key=lambda it: order.get(it.shape, len(order)))


def section(report):
    """(title, lines) of the report's targets section."""
    items = evaluate(report)
    rated = [it for it in items if it.rated]
    target = report["config"]["target"]
    title = (f"Targets ({target}, bench/report/targets.py: {sum(it.met for it in rated)} of "
             f"{len(rated)} met; a verdict where the run has the target's shape and batch)")
    # two rows on one figure (thresholds at different shapes) print it once where neither rates
    return title, list(dict.fromkeys(it.line() for it in items))


def markdown():
    """The table as markdown."""
    lines = ["| " + " | ".join(Target._fields) + " |", "|" + "---|" * len(Target._fields)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in TABLE]
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown())
    sys.exit(0)
