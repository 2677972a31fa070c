"""The one benchmark harness: what is timed, how it is launched, checked, timed and recorded.

`python -m bench` (report.py) and the pytest-benchmark suite (bench_layers.py; bench_gpu.py
runs the report) both go through here:

    plan(target, layers, backends)   the steps of one shape: (layer, pass, impl, deterministic)
    LayerCase(target, shape, layer)  the inputs of one layer, a launcher per step (ops.py), the
                                     warm-up call (JIT compilation and library autotuning are
                                     never timed), the references and the error check
    target.time(fns, repeat, min)    the timing loop: CpuTarget (bench/cpu.py, perf_counter) or
                                     GpuTarget (bench/gpu.py, CUDA events), ours and the peers
                                     interleaved
    figures(...), record(...)        FLOP and byte counts from the op table (spec.flops,
                                     spec.bytes), rates, the floor (floor_s: the least time
                                     those allow under the machine's read bandwidth and sgemm
                                     rate) and the JSON record (bench/report/schema.py)
    bench_shape(...)                 all of the above for one shape

The pytest-benchmark suite hands the same launcher to pytest-benchmark's loop when it times
(perf_counter, as CpuTarget) and, in its smoke run, checks the same outputs with check().
Errors are sharenet_fast.dtypes.rel_err against dtypes.tol (the tests' bound).

Reduced precision: every pass of ours that a backend has in bfloat16 (its DTYPES) is timed again
on the same inputs rounded to bfloat16 (REDUCED: float32 accumulation, bfloat16 results; the
grad_weight= timing adds into a float32 master buffer), with the PyTorch peers that take
bfloat16. Its bytes, and so its floor, are the bfloat16 ones; its outputs are checked against our
float32 kernels run on the rounded inputs (the oracle of the rounded problem, within float32's
1e-5), at the bfloat16 bound.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from bench import ops
from bench.report import schema
from bench.shapes import geometry, make_inputs
from sharenet_fast import dtypes, optable, registry

DTYPE = np.dtype(np.float32)
REDUCED = "bfloat16"                    # the reduced storage timed beside float32
BACKWARD = schema.BACKWARD              # input + weight + bias gradients, one call
PENALTY = optable.PENALTY               # soft_sharing_penalty on a local layer's banks
TIMED = ("forward", BACKWARD)           # every layer kind, every target
PENALTY_PEER = "torch-eager"


class Step(NamedTuple):
    layer: str                # op name
    pass_: str                # schema.PASSES
    impl: str                 # one of ours (a backend) or a peer
    deterministic: bool = False
    accumulate: bool = False  # the gradients added into a grad_weight= buffer
    dtype: str = "float32"    # storage dtype of the arrays (REDUCED: float32 accumulation)

    @property
    def label(self):
        return schema.pass_label(self.pass_, self.deterministic, self.accumulate, self.dtype)


def plan(target, layers, backends, peers=None, full=True, dtypes=("float32", REDUCED)):
    """[Step] in timing order for one shape: per layer, each pass's backends then its peers;
    on the GPU the shared layer's weight gradient alone (atomic, then deterministic: the
    reduction over all positions); for the local layer the backward into a grad_weight= buffer
    (hard sharing's path; ours only) and the soft-sharing penalty of its banks.
    peers=None: every installed peer that runs on the target (PyTorch's where PyTorch runs
    there: target.peers_ok); full=False: the quick run's, without the slow peers; `dtypes`: the
    storage dtypes timed (float32, and REDUCED where a backend of ours has it)."""
    if peers is None:
        peers = target.peers_ok
    reduced = [b for b in backends if REDUCED in registry.get(b).DTYPES] if REDUCED in dtypes \
        else []
    out = []
    for layer in layers:
        spec = ops.SPECS[layer]
        mine = ops.peer_names(layer, target.torch_device, full) if peers else ()
        for pass_ in TIMED:
            out += [Step(layer, pass_, impl) for impl in (*backends, *mine)]
        if reduced:     # the same passes in bfloat16, with the peers that take it
            mine16 = (ops.peer_names(layer, target.torch_device, full, REDUCED) if peers
                      else ())
            for pass_ in TIMED:
                out += [Step(layer, pass_, impl, dtype=REDUCED) for impl in (*reduced, *mine16)]
        if spec.sharing == "shared" and target.name == "gpu":
            out += [Step(layer, "weight", b, det) for det in (False, True) for b in backends]
        if spec.sharing == "local":
            out += [Step(layer, BACKWARD, b, accumulate=True) for b in backends]
            out += [Step(layer, BACKWARD, b, accumulate=True, dtype=REDUCED) for b in reduced]
            penalty_peer = (PENALTY_PEER,) if peers and ops.installed(PENALTY_PEER) else ()
            out += [Step(layer, PENALTY, impl) for impl in (*backends, *penalty_peer)]
            out += [Step(layer, PENALTY, impl, dtype=REDUCED)
                    for impl in (*reduced, *(penalty_peer if reduced else ()))]
    return out


def host_tuple(target, out):
    out = out if isinstance(out, (tuple, list)) else (out,)
    return tuple(np.asarray(target.to_host(o)) for o in out if o is not None)


class LayerCase:
    """One layer of one shape: inputs (host and device), a launcher per step, outputs of the
    warm-up call, references."""

    def __init__(self, target, shape, layer, steps, backends):
        self.target, self.shape, self.layer, self.backends = target, shape, layer, tuple(backends)
        self.g = geometry(shape)
        self.grid = ops.grid(layer, self.g)
        x, weight, bias, grad_out = make_inputs(shape, DTYPE)
        weight, bias = ops.layer_params(layer, weight, bias, self.g)
        self.x, self.weight, self.bias, self.grad_out = x, weight, bias, grad_out
        self.steps = [s for s in steps if s.layer == layer]
        # the inputs per storage dtype: float32, and rounded to each reduced dtype timed
        self.data = {DTYPE.name: (x, weight, bias, grad_out)}
        for dt in dict.fromkeys(s.dtype for s in self.steps if s.dtype != DTYPE.name):
            storage = dtypes.lookup(dt).storage
            self.data[dt] = tuple(a.astype(storage) for a in (x, weight, bias, grad_out))
        pen_dtypes = dict.fromkeys(s.dtype for s in self.steps if s.pass_ == PENALTY)
        self.pens = {dt: ops.penalty_inputs(self.data[dt][1]) for dt in pen_dtypes}
        self.pen = self.pens.get(DTYPE.name)
        dev = {dt: [target.to_device(a) for a in arrays] for dt, arrays in self.data.items()}
        dpen = {dt: [target.to_device(a) for a in pen] for dt, pen in self.pens.items()}
        self.calls = {s: self._launcher(s, dev[s.dtype], dpen.get(s.dtype)) for s in self.steps}
        self.outs = {}

    def weight_of(self, step):
        """The weight array a step runs on (its storage dtype)."""
        return self.data[step.dtype][1]

    def _launcher(self, step, dev, dpen):
        shape, layer, impl = self.shape, self.layer, step.impl
        x, w, b, dy = dev
        hx, hw, hb, hdy = self.data[step.dtype]
        device = self.target.torch_device
        if impl in self.backends:
            if step.pass_ == "forward":
                return ops.ours_forward(shape, layer, x, w, b, backend=impl)
            if step.pass_ == BACKWARD and step.accumulate:
                return self._accumulating(step, dev)
            if step.pass_ == BACKWARD:
                return ops.ours_backward(shape, layer, x, w, dy, backend=impl,
                                         needs=optable.GRADIENTS)
            if step.pass_ in optable.GRADIENTS:
                return ops.ours_backward(shape, layer, x, w, dy, backend=impl,
                                         needs=(step.pass_,), deterministic=step.deterministic)
            if step.pass_ == PENALTY:
                return ops.ours_penalty(*dpen, backend=impl)
        elif step.pass_ == PENALTY:
            return ops.torch_penalty(*self.pens[step.dtype], device)
        elif step.pass_ == "forward":
            return ops.PEERS[impl].forward(shape, layer, hx, hw, hb, device)
        elif step.pass_ == BACKWARD:
            return ops.PEERS[impl].backward(shape, layer, hx, hw, hdy, hb, device)
        raise ValueError(f"no launcher for {step}")

    def _accumulating(self, step, dev):
        """Our backward adding dW into a buffer (grad_weight=: hard sharing's path), the buffer
        random at first (never zeros: an overwrite instead of an add fails the check). Every
        call adds into it; the check takes the warm-up call's, the first: buffer - start. The
        buffer is float32 for every storage dtype (a reduced weight's master weights)."""
        x, w, _, dy = dev
        start = np.random.default_rng(3).standard_normal(self.weight.shape, dtype=DTYPE)
        run = ops.ours_backward(self.shape, self.layer, x, w, dy, backend=step.impl,
                                needs=optable.GRADIENTS,
                                grad_weight=self.target.to_device(start.copy()))
        return ops.converted(run, lambda outs: (outs[0], outs[1] - start, outs[2]))

    def warm(self, steps=None):
        """Call each step once (JIT compilation, oneDNN / cuDNN algorithm choice, XLA and
        tf.function compilation) and keep its outputs, on the host and in our layouts
        (ops.ours_layout), for the check."""
        for s in steps or self.steps:
            run = self.calls[s]
            self.outs[s] = ops.ours_layout(run, host_tuple(self.target, run()))
        return self.outs

    def references(self, oracle=None):
        """{(dtype, pass): (who, outputs)}. float32: oracle=True: the float64 oracle
        (ops.reference) for every pass; oracle=None: the oracle for the shared layer on the CPU,
        else the first PyTorch peer's float32 result (a float64 oracle of a local layer at full
        size would take minutes). A gradient alone is checked against its part of the backward;
        the penalty always against the float64 oracle. Reduced dtypes: our float32 kernels on
        the rounded inputs (self.reduced_references)."""
        refs = {(DTYPE.name, p): r for p, r in self._float32_references(oracle).items()}
        for dt in self.data:
            if dt != DTYPE.name:
                refs.update({(dt, p): r for p, r in self.reduced_references(dt, oracle).items()})
        return refs

    def reduced_references(self, dt, oracle=None):
        """{pass: (who, outputs)} for the inputs rounded to `dt`: the float64 oracle on them
        with oracle=True, else the first backend of ours in float32 on them (the rounded
        problem, summed in float32 as the reduced kernels sum: within 1e-5 of the oracle,
        which would take minutes at full size); the penalty's float64 oracle on the rounded
        banks."""
        if oracle:
            r = ops.reference(self.shape, self.layer, *self.data[dt])
            refs = {"forward": ("float64 oracle", r[:1]), BACKWARD: ("float64 oracle", r[1:])}
        else:
            be = self.backends[0]
            x, w, b, dy = (self.target.to_device(a.astype(DTYPE)) for a in self.data[dt])
            y = ops.ours_forward(self.shape, self.layer, x, w, b, backend=be)()
            g = ops.ours_backward(self.shape, self.layer, x, w, dy, backend=be)()
            who = f"ours ({be}) float32 on the {dt} inputs"
            refs = {"forward": (who, host_tuple(self.target, y)),
                    BACKWARD: (who, host_tuple(self.target, g))}
        for i, pass_ in enumerate(optable.GRADIENTS):
            refs[pass_] = (refs[BACKWARD][0], refs[BACKWARD][1][i:i + 1])
        if dt in self.pens:
            from sharenet_fast import reference

            a, bb = self.pens[dt][:2]
            refs[PENALTY] = ("float64 oracle", (np.float64(reference.soft_sharing_penalty(
                a, bb, ops.PENALTY_STRENGTH)[0]),))
        return refs

    def _float32_references(self, oracle):
        if oracle is None:
            oracle = ops.SPECS[self.layer].sharing == "shared" and self.target.name == "cpu"
        refs = {}
        if oracle:
            r = ops.reference(self.shape, self.layer, self.x, self.weight, self.bias,
                              self.grad_out)
            refs = {"forward": ("float64 oracle", r[:1]), BACKWARD: ("float64 oracle", r[1:])}
        else:
            for pass_ in TIMED:
                peer = next((s.impl for s in self.outs if s.pass_ == pass_ and not s.accumulate
                             and s.dtype == DTYPE.name and s.impl not in self.backends), None)
                if peer is not None:
                    refs[pass_] = (peer, self.outs[Step(self.layer, pass_, peer)])
        if BACKWARD in refs:
            who, grads = refs[BACKWARD]
            for i, pass_ in enumerate(optable.GRADIENTS):
                refs[pass_] = (who, grads[i:i + 1])
        if self.pen is not None:
            from sharenet_fast import reference

            a, b = self.pen[:2]
            refs[PENALTY] = ("float64 oracle", (np.float64(reference.soft_sharing_penalty(
                a, b, ops.PENALTY_STRENGTH)[0]),))
        return refs

    def error(self, step, refs):
        """(max relative error of the step's outputs, against whom), or (None, None) when it
        has no reference (or is the reference)."""
        ref = refs.get((step.dtype, step.pass_))
        if ref is None or ref[0] == step.impl:
            return None, None
        return check(self.outs[step], ref[1]), ref[0]


# A peer in a reduced dtype may sum in it too (PyTorch's bfloat16 einsum on the CPU: 1e-2 from
# the float32 result at cifar_5x5's backward): the check then only tells another layer apart.
PEER_REDUCED_TOL = 5e-2


def check_tol(step, backends):
    """The error bound a step's outputs are checked at: the dtype's (dtypes.tol) for ours and for
    float32 peers; PEER_REDUCED_TOL for a peer in a reduced dtype."""
    if step.impl in backends or step.dtype == DTYPE.name:
        return dtypes.tol(step.dtype)
    return PEER_REDUCED_TOL


def check(outs, refs):
    """The largest dtypes.rel_err of outputs against their references."""
    if len(outs) != len(refs):
        raise ValueError(f"{len(outs)} outputs against {len(refs)} references")
    # a scalar (the penalty) may come back as a 1-element array from a GPU
    return max(dtypes.rel_err(np.reshape(o, np.shape(r)) if np.size(o) == np.size(r) == 1
                              else o, r) for o, r in zip(outs, refs))


def figures(layer, pass_, g, grid, weight, median=None, accumulate=False):
    """{flops, bytes, weight_stream_bytes} of one timed pass (the op table's counts: spec.flops,
    spec.bytes at the weight's itemsize, plus the float32 grad_weight= buffer's read, and its
    write in float32, when `accumulate`; the penalty's six streams of the weights' size), and
    with a median time in seconds their rates: gflops, gbps, weight_gbps."""
    if pass_ == PENALTY:
        # per element: a - b, its square into the sum, one multiply-add into each gradient;
        # a and b read, grad_a and grad_b read and written
        flops, nbytes = 5 * weight.size, 6 * weight.nbytes
        wbytes = nbytes
    else:
        spec = ops.SPECS[layer]
        flops = spec.flops(g, pass_)
        nbytes = spec.bytes(g, pass_, weight.itemsize, grid)
        # forward and the input gradient read W, the weight gradient writes dW; backward both
        wbytes = weight.nbytes * (2 if pass_ == BACKWARD else 1)
        if accumulate:    # dW added into a float32 buffer: read too, and written as float32
            extra = 2 * weight.size * DTYPE.itemsize - weight.nbytes
            nbytes, wbytes = nbytes + extra, wbytes + extra
    out = dict(flops=int(flops), bytes=int(nbytes), weight_stream_bytes=int(wbytes))
    if median is not None:
        def rate(amount):
            return amount / median / 1e9 if median > 0 else float("nan")
        out.update(gflops=rate(flops), gbps=rate(nbytes), weight_gbps=rate(wbytes))
    return out


def floor_s(flops, nbytes, limits):
    """The least time a pass can take on this machine: max(its bytes / the read bandwidth, its
    FLOPs / the sgemm rate), in seconds; None where either limit was not measured."""
    rd, sg = limits.get("read_gbps"), limits.get("sgemm_gflops")
    if not rd or not sg or rd != rd or sg != sg:
        return None
    return max(nbytes / (rd * 1e9), flops / (sg * 1e9))


def record(case, name, step, samples, limits, err=None, err_against=None):
    """The JSON record (bench/report/schema.py RESULT) of one timing."""
    median = float(np.median(samples))
    q1, q3 = (float(v) for v in np.percentile(samples, [25, 75]))
    weight = case.weight_of(step)
    f = figures(step.layer, step.pass_, case.g, case.grid, weight, median, step.accumulate)
    sg, cp = limits.get("sgemm_gflops"), limits.get("copy_gbps")
    floor = floor_s(f["flops"], f["bytes"], limits)
    return {
        "shape": name, "dims": case.shape._asdict(), "layer": step.layer,
        "grid": list(case.grid), "pass": step.pass_, "deterministic": step.deterministic,
        "accumulate": step.accumulate, "dtype": step.dtype, "impl": step.impl,
        "role": "ours" if step.impl in case.backends else "peer",
        "label": label(case.target, step.impl, case.backends),
        "params": int(case.weight.size + case.bias.size),
        "weight_bytes": int(weight.nbytes), **f,
        "samples_s": [float(s) for s in samples], "median_s": median, "q1_s": q1, "q3_s": q3,
        "pct_sgemm": 100 * f["gflops"] / sg if sg else None,
        "pct_copy": 100 * f["gbps"] / cp if cp else None,
        "pct_copy_weights": 100 * f["weight_gbps"] / cp if cp else None,
        "floor_s": floor, "pct_floor": 100 * floor / median if floor and median > 0 else None,
        "rel_err": err, "rel_err_against": err_against}


def label(target, impl, backends):
    return f"ours ({impl})" if impl in backends else ops.peer_label(impl, target.torch_device)


class Quiet:
    """A progress sink that says nothing (report.Progress is the one on a terminal)."""

    def step(self, label):
        pass

    def log(self, msg):
        pass


def _affordable(steps, shape, layer, progress):
    """The steps without the peer passes that are not timed at this shape's weight size
    (ops.skipped), each left out with its reason logged."""
    spec = ops.SPECS[layer]
    g = geometry(shape)
    out = []
    for s in steps:
        peer = ops.PEERS.get(s.impl)
        if s.layer == layer and peer is not None and (peer.backward_max_weight or peer.max_weight):
            wbytes = int(np.prod(spec.weight_shape(g, spec.bank_grid(g)))) * DTYPE.itemsize
            why = ops.skipped(s.impl, s.pass_, wbytes)
            if why:
                progress.log(f"{why} ({layer})")
                continue
        out.append(s)
    return out


def bench_shape(target, name, shape, layers, backends, repeat, min_time, limits, progress=None,
                full=True, dtypes=("float32", REDUCED)):
    """Result records (bench/report/schema.py) for one shape: every layer x pass x impl of
    plan()."""
    progress = progress or Quiet()
    steps = plan(target, layers, backends, full=full, dtypes=dtypes)
    results = []
    for layer in layers:
        case = LayerCase(target, shape, layer, _affordable(steps, shape, layer, progress),
                         backends)
        case.warm()
        refs = case.references()
        for pass_label in dict.fromkeys(s.label for s in case.steps):
            mine = [s for s in case.steps if s.label == pass_label]
            samples = target.time({s: case.calls[s] for s in mine}, repeat, min_time)
            for s in mine:
                err, against = case.error(s, refs)
                tol = check_tol(s, case.backends)
                if err is not None and err >= tol:     # ours, or a peer computing another layer
                    progress.log(f"WARNING: {name} {layer} {pass_label} {s.impl}: relative "
                                 f"error {err:.2e} >= {tol:.0e} against {against}")
                rec = record(case, name, s, samples[s], limits, err, against)
                results.append(rec)
                progress.step(f"{name} {layer} {pass_label} {s.impl}: "
                              f"{rec['median_s'] * 1e3:.3f} ms")
        del case
    return results
