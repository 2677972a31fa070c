"""`sharenet-fast info | verify | params` (also `python -m sharenet_fast ...`).

    info     versions, backends (with the reason for each missing one), CPU threads and
             threading layer, GPU
    verify   every available backend x layer x pass x dtype against the float64 oracle on fresh
             random inputs (stride, padding, dilation, groups, tiles), and soft_sharing_penalty with
             both gradients at three sizes; exit status 1 on any failure
    params   the cs231n comparison for one layer: shared vs tiled vs locally connected
             neurons, weights per neuron, parameters and bytes
"""
from __future__ import annotations

import argparse
import platform
import sys
import time

import numpy as np

from . import api, optable, reference, registry
from . import dtypes as dtypes_
from .api import param_count
from .geometry import ConvGeometry, pair

LAYERS = tuple(optable.LAYERS)
PASSES = ("forward", *optable.GRADIENTS)
TILE = (2, 2)

# (name, N, C, H, W, K, R, S, stride, padding, dilation, groups): small, but every path of the
# kernels (grouped: the per-group paths and the depthwise kernels)
VERIFY_SHAPES = [
    ("stride4_k11", 2, 3, 23, 23, 4, 11, 11, 4, 0, 1, 1),
    ("pad1_3x3", 2, 4, 9, 10, 5, 3, 3, 1, 1, 1, 1),
    ("stride2_dil2", 2, 3, 13, 12, 4, 3, 3, 2, 2, 2, 1),
    ("nonsquare", 1, 3, 11, 14, 5, 3, 5, (2, 1), (1, 2), (1, 2), 1),
    ("groups2", 2, 4, 9, 8, 6, 3, 3, 1, 1, 1, 2),
    ("depthwise_s2", 2, 4, 11, 10, 8, 3, 3, 2, 1, 1, 4),
]
# soft_sharing_penalty sizes: one element, a few blocks, past one CPU chunk (config.PENALTY_CHUNK)
PENALTY_SIZES = (1, 1000, 70001)
# neighbour_penalty / average_banks: a banked weight (TP, TQ, K, C, R, S) and the variants
BANKED_SHAPE = (5, 6, 3, 2, 3, 2)
NEIGHBOUR_VARIANTS = (("l2", 4, False), ("l2", 8, True), ("cosine", 4, True),
                      ("cosine", 8, False))


# ---------------------------------------------------------------------------------------- info
def _version(module):
    try:
        mod = __import__(module)
        return getattr(mod, "__version__", "installed")
    except Exception as exc:  # noqa: BLE001 - any failure means "not usable here"
        return f"not available ({type(exc).__name__})"


def info(out=sys.stdout):
    import numba

    from . import __version__

    print(f"sharenet_fast {__version__}", file=out)
    print(f"python {platform.python_version()} ({platform.machine()}, {platform.system()})",
          file=out)
    for mod in ("numpy", "numba", "numba_cuda", "cupy", "torch"):
        print(f"{mod:12s} {_version(mod)}", file=out)
    print("backends:", file=out)
    for name, status in registry.backends().items():
        print(f"  {name:11s} {status}", file=out)
    print(f"CPU threads: {numba.get_num_threads()} of {numba.config.NUMBA_NUM_THREADS}", file=out)
    print(f"threading layer: {_threading_layer()}", file=out)
    print(f"GPU: {_gpu_name()}", file=out)
    return 0


def _threading_layer():
    """Numba knows its layer only after a parallel kernel has run: run the smallest one."""
    import numba

    try:
        x = np.ones((1, 1, 1, 1), np.float32)
        api.conv2d(x, x, backend="cpu")
        return numba.threading_layer()
    except Exception as exc:  # noqa: BLE001
        return f"unknown ({type(exc).__name__}: {exc})"


def _gpu_name():
    why = registry.backends()["numba-cuda"]
    if why != "available":
        return f"none ({why})"
    try:
        from numba import cuda

        from . import config

        if config.CUDASIM:
            return "Numba CUDA simulator (NUMBA_ENABLE_CUDASIM=1)"
        dev = cuda.get_current_device()
        name = dev.name.decode() if isinstance(dev.name, bytes) else dev.name
        return f"{name} (compute capability {dev.compute_capability[0]}.{dev.compute_capability[1]})"
    except Exception as exc:  # noqa: BLE001
        return f"unknown ({type(exc).__name__}: {exc})"


# -------------------------------------------------------------------------------------- params
def params(input_shape, filters, kernel, stride=1, padding=0, dilation=1, tile=TILE, bias=True,
           out=sys.stdout, groups=1):
    g = ConvGeometry.make(1, *input_shape, filters, *pair(kernel, "kernel"), stride, padding,
                          dilation, groups)
    grouped = f", groups {g.groups}" if g.groups > 1 else ""
    print(f"layer: input {'x'.join(map(str, input_shape))}, {filters} filters "
          f"{g.R}x{g.S}, stride {g.stride}, padding {g.padding}, dilation {g.dilation}"
          f"{grouped} -> output {g.K}x{g.P}x{g.Q}", file=out)
    print("| layer | sharing | banks | neurons | weights/neuron | parameters | bytes (float32) |",
          file=out)
    print("|---|---|---|---|---|---|---|", file=out)
    for spec in optable.LAYERS.values():
        grid = spec.bank_grid(g, tile)
        pc = param_count(spec.sharing, input_shape, filters, kernel, stride=stride,
                         padding=padding, dilation=dilation, tile=grid, bias=bias,
                         groups=groups)
        print(f"| {spec.name} | {spec.sharing} {grid[0]}x{grid[1]} | {spec.banks(grid):,} | "
              f"{pc.neurons:,} | {pc.weights_per_neuron:,} | {pc.params:,} | "
              f"{_bytes(pc.bytes)} |", file=out)
    return 0


def _bytes(n):
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000


# -------------------------------------------------------------------------------------- verify
def _calls(layer, x, w, b, dy, kw, backend):
    """{pass: array} of one layer on one backend (NumPy in and out)."""
    fwd, bwd = getattr(api, layer), getattr(api, layer + "_backward")
    return {"forward": fwd(x, w, b, backend=backend, **kw),
            **bwd(dy, x, w, backend=backend, **kw)._asdict()}


def _oracle(layer, x, w, b, dy, kw):
    return {p: optable.LAYERS[layer].reference(p, x, w, b, dy, **kw) for p in PASSES}


def verify(backends=None, dtypes=dtypes_.NAMES, seed=None, out=sys.stdout):
    """Run the checks, print the table; 0 if all pass, 1 otherwise."""
    status = registry.backends()
    if backends is None:
        backends = [n for n, s in status.items() if s == "available" and n != "reference"]
    seed = int(time.time_ns() % 2**32) if seed is None else seed
    rng = np.random.default_rng(seed)
    print(f"verify: backends {', '.join(backends)}; dtypes {', '.join(dtypes)}; seed {seed}",
          file=out)
    print("| backend | layer | shape | dtype | forward | input | weight | bias | result |",
          file=out)
    print("|---|---|---|---|---|---|---|---|---|", file=out)
    failures = checks = 0
    grouped_missing = set()
    for name, N, C, H, W, K, R, S, st, pd, dl, groups in VERIFY_SHAPES:
        kw = dict(stride=st, padding=pd, dilation=dl, groups=groups)
        g = ConvGeometry.make(N, C, H, W, K, R, S, st, pd, dl, groups)
        x64 = _random(rng, g.x_shape)
        dy64 = _random(rng, g.y_shape)
        for layer, spec in optable.LAYERS.items():
            grid = spec.bank_grid(g, TILE)
            w64 = _random(rng, spec.weight_shape(g, grid))
            b64 = _random(rng, spec.bias_shape(g, grid))
            for backend in backends:
                if groups > 1 and not getattr(registry.get(backend), "GROUPS", False):
                    grouped_missing.add(backend)
                    continue
                for dtype in _dtypes_of(backend, dtypes):
                    def layer_check():     # called at once: the loop variables are current
                        arrays = [a.astype(dtype) for a in (x64, w64, b64, dy64)]
                        # the oracle on the same (rounded) inputs: only the kernel's error counts
                        ref = _oracle(layer, *(a.astype(np.float64) for a in arrays), kw)
                        return _calls(layer, *arrays, kw, backend), ref
                    ok = _check(out, f"{backend} | {layer} | {name} | {dtype}", layer_check,
                                PASSES, dtype)
                    checks += 1
                    failures += not ok
    print("", file=out)
    print("| backend | op | size | dtype | penalty | grad_a | grad_b | result |", file=out)
    print("|---|---|---|---|---|---|---|---|", file=out)
    for n in PENALTY_SIZES:
        a64, b64, ga64, gb64 = (_random(rng, (n,)) for _ in range(4))
        strength = float(rng.uniform(0.1, 2.0))
        for backend in backends:
            for dtype in _dtypes_of(backend, dtypes):
                def penalty_check():
                    a, b, ga, gb = (v.astype(dtype) for v in (a64, b64, ga64, gb64))
                    want, da, db = reference.soft_sharing_penalty(a, b, strength)
                    ref = {"penalty": want, "grad_a": ga.astype(np.float64) + da,
                           "grad_b": gb.astype(np.float64) + db}
                    p = api.soft_sharing_penalty(a, b, strength, grad_a=ga, grad_b=gb,
                                                 backend=backend)
                    return {"penalty": p, "grad_a": ga, "grad_b": gb}, ref
                ok = _check(out, f"{backend} | soft_sharing_penalty | {n} | {dtype}",
                            penalty_check, ("penalty", "grad_a", "grad_b"), dtype)
                checks += 1
                failures += not ok
    print("", file=out)
    print("| backend | op | variant | dtype | penalty / out= | gradient / in place | result |",
          file=out)
    print("|---|---|---|---|---|---|---|", file=out)
    bank_less = set()
    w64 = _random(rng, BANKED_SHAPE)
    g64 = _random(rng, BANKED_SHAPE)
    for backend in backends:
        be = registry.get(backend)
        if not all(hasattr(be, op) for op in (optable.NEIGHBOUR, optable.AVERAGE)):
            bank_less.add(backend)
            continue
        for dtype in _dtypes_of(backend, dtypes):
            for metric, hood, wrap in NEIGHBOUR_VARIANTS:
                def neighbour_check():
                    w, g0 = w64.astype(dtype), g64.astype(dtype)
                    want, dw = reference.neighbour_penalty(w.astype(np.float64), 0.7, metric,
                                                           hood, wrap)
                    ref = {"penalty": want, "grad": g0.astype(np.float64) + dw}
                    p = api.neighbour_penalty(w, 0.7, metric=metric, neighbourhood=hood,
                                              wrap=wrap, grad_weight=g0, backend=backend)
                    return {"penalty": p, "grad": g0}, ref
                ok = _check(out, f"{backend} | neighbour_penalty | {metric}/{hood}"
                            f"{' wrap' if wrap else ''} | {dtype}", neighbour_check,
                            ("penalty", "grad"), dtype)
                checks += 1
                failures += not ok
            for groups_of in ("all", (2, 2)):
                def average_check():
                    w = w64.astype(dtype)
                    want = reference.average_banks(
                        w.astype(np.float64), w.shape[:2] if groups_of == "all" else groups_of)
                    into = np.empty_like(w)
                    got = api.average_banks(w, groups_of=groups_of, out=into, backend=backend)
                    api.average_banks(w, groups_of=groups_of, backend=backend)   # in place
                    return {"out": got, "in_place": w}, {"out": want, "in_place": want}
                ok = _check(out, f"{backend} | average_banks | {groups_of} | {dtype}",
                            average_check, ("out", "in_place"), dtype)
                checks += 1
                failures += not ok
    for b in sorted(bank_less):
        print(f"{b}: no neighbour_penalty / average_banks kernels yet: not checked", file=out)
    lacking = {b: [d for d in dtypes if d not in registry.get(b).DTYPES] for b in backends
               if registry.backends()[b] == "available"}
    for b, missing in lacking.items():
        if missing:
            print(f"{b}: no {', '.join(missing)} kernels: not checked", file=out)
    for b in sorted(grouped_missing):
        print(f"{b}: no grouped kernels yet: grouped shapes not checked", file=out)
    print(f"{checks} checks, {failures} failed (tolerance: norm-relative error <= "
          + ", ".join(f"{dtypes_.DTYPES[k].tol:g} {k}" for k in dtypes) + ")", file=out)
    return 1 if failures else 0


def _dtypes_of(backend, dtypes):
    """The asked-for dtypes the backend has kernels for (an unavailable backend: all of them,
    so its rows report why it fails)."""
    if registry.backends()[backend] != "available":
        return list(dtypes)
    return [d for d in dtypes if d in registry.get(backend).DTYPES]


def _check(out, head, compute, keys, dtype):
    """Print one table row: compute() -> (got, ref), the error of each key against the
    tolerance; a crash is a failure too. True if every key passes."""
    cells, ok = [], True
    try:
        got, ref = compute()
        for k in keys:
            err = _rel(got[k], ref[k])
            good = bool(err <= dtypes_.DTYPES[dtype].tol)
            ok &= good
            cells.append(f"{err:.1e}" + ("" if good else " (!)"))
    except Exception as exc:  # noqa: BLE001 - a crash is a failure to report
        ok = False
        cells = [f"error: {type(exc).__name__}: {exc}"[:60]] + [""] * (len(keys) - 1)
    print(f"| {head} | " + " | ".join(cells) + f" | {'pass' if ok else 'FAIL'} |", file=out)
    return ok


def _random(rng, shape):
    """Magnitudes in [0.5, 1.5) with random signs: never zeros."""
    return rng.uniform(0.5, 1.5, shape) * rng.choice([-1.0, 1.0], shape)


def _rel(out, ref):
    out = np.asarray(out, np.float64)
    return dtypes_.rel_err(out, ref) if out.shape == np.shape(ref) else float("inf")


# ---------------------------------------------------------------------------------------- main
def _shape(text):
    try:
        parts = tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected CxHxW like 3x227x227, got {text!r}") from None
    if len(parts) != 3 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"expected CxHxW like 3x227x227, got {text!r}")
    return parts


def _ints(text):
    """'11' -> 11, '3x5' -> (3, 5)."""
    try:
        parts = tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or NxM, got {text!r}") from None
    if len(parts) not in (1, 2):
        raise argparse.ArgumentTypeError(f"expected N or NxM, got {text!r}")
    return parts[0] if len(parts) == 1 else parts


def _padding(text):
    """An int, NxM, or the words 'valid' / 'same'."""
    from .geometry import PADDING_WORDS

    return text if text in PADDING_WORDS else _ints(text)


def main(argv=None, out=sys.stdout):
    p = argparse.ArgumentParser(prog="sharenet-fast", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions, backends, threads, GPU")
    v = sub.add_parser("verify", help="every backend x layer x pass x dtype vs the oracle")
    v.add_argument("--backend", nargs="+", choices=list(registry.BACKENDS),
                   help="backends to check (default: every available one)")
    v.add_argument("--dtype", nargs="+", default=list(dtypes_.NAMES), choices=dtypes_.NAMES)
    v.add_argument("--seed", type=int, help="random seed (default: a fresh one, printed)")
    q = sub.add_parser("params", help="shared vs tiled vs local parameter counts")
    q.add_argument("input", type=_shape, help="input C x H x W, e.g. 3x227x227")
    q.add_argument("--filters", type=int, required=True)
    q.add_argument("--kernel", type=_ints, required=True, help="R or RxS")
    q.add_argument("--stride", type=_ints, default=1)
    q.add_argument("--padding", type=_padding, default=0, help="P, PxQ, valid or same")
    q.add_argument("--dilation", type=_ints, default=1)
    q.add_argument("--groups", type=int, default=1, help="channel groups (default 1)")
    q.add_argument("--tile", type=_ints, default=TILE, help="tiled layer's TPxTQ (default 2x2)")
    q.add_argument("--no-bias", action="store_true")
    args = p.parse_args(argv)
    if args.command == "info":
        return info(out)
    if args.command == "verify":
        missing = {b: s for b, s in registry.backends().items()
                   if args.backend and b in args.backend and s != "available"}
        if missing:
            print(f"not available: {missing}", file=out)
            return 1
        return verify(args.backend, tuple(args.dtype), args.seed, out)
    try:
        return params(args.input, args.filters, args.kernel, args.stride, args.padding,
                      args.dilation, pair(args.tile, "tile"), not args.no_bias, out,
                      args.groups)
    except ValueError as exc:
        print(f"sharenet-fast params: {exc}", file=out)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
