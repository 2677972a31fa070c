"""Public API: validation and dispatch only, no arithmetic.

Each call is resolved once, before any kernel runs, into a `Call`: the backend, where the
arrays live (their kind is read once per array), whether they travel to a GPU, the precision
keyword, and for a layer its geometry and bank grid. A bad call raises ValueError/TypeError
naming the argument and the shapes involved while the Call is made, so it never reaches a
kernel. Backends get the geometry whole, padding="same"'s extra end row/column included: each
pads where it has to anyway (the CPU kernels in the padded copy they build; the GPU kernels
and the oracle read past the input's end as zeros), so the API never copies x for it.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import NamedTuple, Optional

import numpy as np

from . import _device, config, dtypes, optable, registry
from .geometry import ConvGeometry, ParamCount, check_groups, pair

NEEDS = optable.GRADIENTS
_WORDS = {"numpy": "NumPy", "cupy": "CuPy", "numba": "Numba device"}


class Grads(NamedTuple):
    input: object
    weight: object
    bias: object


# ------------------------------------------------------------------------------ checks
def _kind(name, a):
    """Where `a` lives ("numpy", "cupy", "numba"); TypeError for anything else, ValueError for
    a non-contiguous Numba device array (no device-side copy exists for it)."""
    k = _device.kind(a)
    if k is None:
        raise TypeError(f"{name} must be a numpy.ndarray, cupy.ndarray or Numba CUDA device "
                        f"array, got {type(a).__name__}")
    if k == "numba" and not a.is_c_contiguous():
        raise ValueError(f"{name}: a Numba device array must be C-contiguous (got strides "
                         f"{a.strides}); pass a contiguous copy or a CuPy array")
    return k


def _array(name, a, ndim, dtype=None):
    """The kind of input array `a` after checking its dtype (x's, when given), ndim and size."""
    k = _kind(name, a)
    if dtypes.lookup(a.dtype) is None:
        raise TypeError(f"{name} must be {dtypes.WORDS}, got dtype {a.dtype}")
    if dtype is not None and a.dtype != dtype:
        raise TypeError(f"{name} has dtype {a.dtype} but x has dtype {dtype}: mixed dtypes")
    if a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {a.shape}")
    if 0 in a.shape:
        raise ValueError(f"{name} must have no empty dimension, got shape {a.shape}")
    return k


def _accepts(buf_dtype, dtype):
    """A buffer added into for arrays of `dtype`: the same dtype, or float32 for reduced
    storage (master weights)."""
    row = dtypes.lookup(dtype)
    return buf_dtype == dtype or (row.reduced and buf_dtype == row.accum)


def _accumulator(name, buf, shape, dtype):
    """The kind of a buffer added into in place, after checking dtype, shape and writability."""
    k = _kind(name, buf)
    if not _accepts(buf.dtype, dtype):
        row = dtypes.lookup(dtype)
        extra = f" (or {row.accum}: master weights)" if row.reduced else ""
        raise TypeError(f"{name} has dtype {buf.dtype} but x has dtype {dtype}: mixed dtypes; "
                        f"{name} must be {dtype}{extra}")
    if buf.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {buf.shape}")
    if k == "numpy" and not buf.flags.writeable:
        raise ValueError(f"{name} is read-only; it is accumulated into in place")
    return k


def _one_place(kinds, arrays):
    """The one kind of a call's arrays ({name: kind}): mixing is a TypeError, CuPy arrays on
    different devices a ValueError."""
    if len(set(kinds.values())) > 1:
        listing = ", ".join(f"{name} is {k}" for name, k in kinds.items())
        raise TypeError(f"arrays of one call must all be NumPy or all on the GPU (CuPy or "
                        f"Numba device arrays), not mixed: {listing}")
    kind = next(iter(kinds.values()))
    if kind == "cupy":
        devices = {name: arrays[name].device.id for name in kinds}
        if len(set(devices.values())) > 1:
            listing = ", ".join(f"{name} on device {d}" for name, d in devices.items())
            raise ValueError(f"arrays of one call must be on one GPU: {listing}")
    return kind


def _auto(kind, op):
    """backend="auto": NumPy -> cpu; CuPy -> config.auto_gpu(op) (or another GPU backend if
    that one is missing here); Numba device arrays -> numba-cuda."""
    if kind == "numpy":
        return "cpu"
    if kind == "numba":
        return "numba-cuda"
    first = config.auto_gpu(op)
    for name in (first,) + tuple(b for b in registry.GPU if b != first):
        if registry.backends()[name] == "available":
            return name
    return first     # registry.get reports why it is missing


def _backend(name, kind, op):
    if not isinstance(name, str):
        raise TypeError(f"backend must be a str, got {type(name).__name__}")
    be = registry.get(_auto(kind, op) if name == "auto" else name)
    if kind not in be.KINDS:
        raise TypeError(f"backend {name!r} takes {' or '.join(_WORDS[k] for k in be.KINDS)} "
                        f"arrays, got {_WORDS[kind]} arrays; use backend='auto' or another "
                        f"backend, or copy them")
    return be


def _out_dtype(be, dtype, out_dtype):
    """The out_dtype= a backend pass gets for storage `dtype` (None: the storage dtype; always
    None for float32/float64); TypeError if the backend has no kernels for `dtype` or out_dtype
    is not the storage or its accumulation dtype."""
    row = dtypes.lookup(dtype)
    if out_dtype is not None:
        try:
            want = np.dtype(out_dtype)
        except TypeError:
            raise TypeError(f"out_dtype must be a dtype, got {out_dtype!r}") from None
        if want not in (row.storage, row.accum):
            raise TypeError(f"out_dtype must be None, {row.storage} or {row.accum} for "
                            f"{row.name} inputs, got {want}")
        out_dtype = None if want == row.storage else want
    if row.name not in be.DTYPES:
        raise TypeError(f"backend {registry.name_of(be)!r} has no {row.name} kernels (it takes "
                        f"{dtypes.words(be.DTYPES)}); use backend='cpu' or convert the arrays")
    return out_dtype


# -------------------------------------------------------------------------------- the plan
@dataclass(frozen=True)
class Call:
    """One API call, resolved: the backend, where its arrays live, whether they are copied to
    a GPU (NumPy arrays given to a GPU backend: each array crosses once, each result comes back
    once), the precision keyword, and for a layer its op-table entry, geometry and bank grid."""

    be: object
    kind: str
    copy: bool
    kw: dict                                   # {"out_dtype": ...} for reduced storage, else {}
    spec: Optional[optable.Layer] = None
    g: Optional[ConvGeometry] = None
    grid: tuple = (1, 1)

    @classmethod
    def make(cls, backend, kind, op, dtype, out_dtype, **layer):
        be = _backend(backend, kind, op)
        g = layer.get("g")
        if g is not None and g.groups > 1 and not getattr(be, "GROUPS", False):
            have = [n for n, why in registry.backends().items()
                    if why == "available" and getattr(registry.get(n), "GROUPS", False)]
            raise TypeError(f"backend {registry.name_of(be)!r} has no grouped kernels yet "
                            f"(groups={g.groups}); backends with them: {have}")
        out_dtype = _out_dtype(be, dtype, out_dtype)
        kw = {"out_dtype": out_dtype} if dtypes.lookup(dtype).reduced else {}
        return cls(be, kind, kind == "numpy" and be.KINDS[0] != "numpy", kw, **layer)

    def put(self, a):
        """`a` on the backend's side, C-contiguous (None passes)."""
        if a is None:
            return None
        a = _device.contiguous(a, self.kind)
        return self.be.to_device(a) if self.copy else a

    def get(self, d):
        """A backend result on the caller's side."""
        return self.be.to_host(d) if self.copy and d is not None else d

    def land(self, buf, out, result):
        """The API's result for accumulator `buf` (None: the pass's fresh `result`), `out` =
        put(buf) having been added into by the pass: written back where it is a copy (a device
        copy, or a contiguous copy of a strided buffer), so `buf` holds the sum."""
        if buf is None:
            return self.get(result)
        if out is not buf:
            if self.copy and _device.is_c_contiguous(buf, self.kind):
                self.be.copy_into(out, buf)
            else:
                buf[...] = self.get(out)
        return buf

    def pass_(self, name):
        """The backend's host function for one pass of this layer (None: not exported)."""
        return getattr(self.be, self.spec.export(name), None)


def _layer_arrays(spec, x, weight, stride, padding, dilation, groups, bias=None,
                  grad_out=None):
    """(g, grid, kinds, arrays) of one layer call, its arrays checked in the order the errors
    read best: x, weight, groups, the geometry and grid, bias, grad_out."""
    kinds = {"x": _array("x", x, 4)}
    kinds["weight"] = _array("weight", weight, spec.weight_ndim, x.dtype)
    N, C, H, W = x.shape
    K, Cw, R, S = weight.shape[-4:]
    G = check_groups(groups, C, K)
    if Cw * G != C:
        per = f"C // groups = {C // G}" if G > 1 else f"C={C}"
        raise ValueError(f"channel mismatch: x has C={C} channels (shape {x.shape}) so weight "
                         f"must have {per} on its channel axis, but it has {Cw} (bank "
                         f"(K, C // groups, R, S) = {tuple(weight.shape[-4:])}, groups={G})")
    g = ConvGeometry.make(N, C, H, W, K, R, S, stride, padding, dilation, G)
    grid = spec.grid(weight.shape)
    spec.check_grid(g, grid, weight.shape)
    arrays = {"x": x, "weight": weight}
    if bias is not None:
        b_shape = spec.bias_shape(g, grid)
        kinds["bias"], arrays["bias"] = _array("bias", bias, len(b_shape), x.dtype), bias
        if bias.shape != b_shape:
            raise ValueError(f"bias must have shape {spec.bias_words} = {b_shape}, "
                             f"got {bias.shape}")
    if grad_out is not None:
        kinds["grad_out"] = _array("grad_out", grad_out, 4, x.dtype)
        arrays["grad_out"] = grad_out
        if grad_out.shape != g.y_shape:
            raise ValueError(f"grad_out must have the output shape (N, K, P, Q) = {g.y_shape} "
                             f"for x {x.shape} and weight {weight.shape}, got {grad_out.shape}")
    return g, grid, kinds, arrays


def _layer_call(spec, g, grid, kinds, arrays, backend, out_dtype, accumulators=()):
    """The Call of one layer pass from _layer_arrays' checked arrays, after checking the
    accumulators ((name, buffer or None, shape) triples), the arrays' place and the backend."""
    dtype = arrays["x"].dtype
    for name, buf, shape in accumulators:
        if buf is not None:
            kinds[name], arrays[name] = _accumulator(name, buf, shape, dtype), buf
    return Call.make(backend, _one_place(kinds, arrays), spec.name, dtype, out_dtype,
                     spec=spec, g=g, grid=grid)


def _forward(op, x, weight, bias, stride, padding, dilation, groups, backend, out_dtype):
    spec = optable.LAYERS[op]
    c = _layer_call(spec, *_layer_arrays(spec, x, weight, stride, padding, dilation, groups,
                                         bias=bias), backend, out_dtype)
    return c.get(c.pass_("forward")(c.put(x), c.put(weight), c.put(bias), c.g, c.grid, **c.kw))


def _needs(needs):
    if isinstance(needs, str):
        needs = (needs,)
    try:
        needs = tuple(needs)
    except TypeError:
        raise TypeError(f"needs must be a sequence of names from {NEEDS}, got {needs!r}") from None
    bad = [n for n in needs if n not in NEEDS]
    if bad:
        raise ValueError(f"needs must name only {NEEDS}, got {bad!r}")
    return needs


def _backward(op, grad_out, x, weight, stride, padding, dilation, groups, needs,
              deterministic, grad_weight, grad_bias, backend, out_dtype):
    spec = optable.LAYERS[op]
    g, grid, kinds, arrays = _layer_arrays(spec, x, weight, stride, padding, dilation, groups,
                                           grad_out=grad_out)
    needs = _needs(needs)
    if not isinstance(deterministic, (bool, np.bool_)):
        raise TypeError(f"deterministic must be a bool, got {deterministic!r}")
    c = _layer_call(spec, g, grid, kinds, arrays, backend, out_dtype,
                    (("grad_weight", grad_weight, spec.weight_shape(g, grid)),
                     ("grad_bias", grad_bias, spec.bias_shape(g, grid))))
    g, grid, kw, det = c.g, c.grid, c.kw, bool(deterministic)
    dy = c.put(grad_out)                  # each array crosses to a device at most once
    xd = c.put(x) if "weight" in needs else None
    wd = c.put(weight) if "input" in needs else None
    dx = dw = db = None
    fused = c.pass_("input_weight")
    if fused is not None and "input" in needs and "weight" in needs:
        # one pass computes both (a local layer then streams its weights once, not twice)
        out = c.put(grad_weight)
        dx, dw = fused(dy, xd, wd, g, grid, out=out, deterministic=det, **kw)
        dx, dw = c.get(dx), c.land(grad_weight, out, dw)
    else:
        if "input" in needs:
            dx = c.get(c.pass_("input")(dy, wd, g, grid, **kw))
        if "weight" in needs:
            out = c.put(grad_weight)
            dw = c.land(grad_weight, out,
                        c.pass_("weight")(dy, xd, g, grid, out=out, deterministic=det, **kw))
    if "bias" in needs:
        out = c.put(grad_bias)
        db = c.land(grad_bias, out, c.pass_("bias")(dy, g, grid, out=out, **kw))
    return Grads(dx, dw, db)


# --------------------------------------------------------------------------- public API
_BACKWARD_DOC = """

    Returns Grads(input, weight, bias); an entry not in `needs` is None. grad_weight /
    grad_bias, when given, are added into in place and returned (hard sharing: a weight used at
    several call sites gets the sum of their gradients). deterministic=True asks for a weight
    gradient with the same bits on every run (the CPU kernels always give that).

    bfloat16 / float16 inputs accumulate in float32; gradients come back in the storage dtype,
    or float32 with out_dtype=np.float32. grad_weight / grad_bias may then be float32 buffers
    (master weights): added into in float32, with no rounding to the storage dtype.
    """


def conv2d(x, weight, bias=None, *, stride=1, padding=0, dilation=1, groups=1,
           backend="auto", out_dtype=None):
    """Shared-weight 2D convolution (cross-correlation, zero padding), NCHW.

    x (N, C, H, W), weight (K, C // groups, R, S), bias (K,) or None -> y (N, K, P, Q), dtype
    of x. groups (dividing C and K) as in torch.nn.Conv2d: filter k sees only the C // groups
    input channels of its group k // (K // groups); groups == C is a depthwise conv.
    """
    return _forward("conv2d", x, weight, bias, stride, padding, dilation, groups, backend,
                    out_dtype)


def conv2d_backward(grad_out, x, weight, *, stride=1, padding=0, dilation=1, groups=1,
                    needs=NEEDS, deterministic=False, grad_weight=None, grad_bias=None,
                    backend="auto", out_dtype=None):
    return _backward("conv2d", grad_out, x, weight, stride, padding, dilation, groups,
                     needs, deterministic, grad_weight, grad_bias, backend, out_dtype)


def local2d(x, weight, bias=None, *, stride=1, padding=0, dilation=1, groups=1,
            backend="auto", out_dtype=None):
    """Locally-connected 2D layer (no weight sharing): one filter bank per output position.

    x (N, C, H, W), weight (P, Q, K, C, R, S), bias (P, Q, K) or None -> y (N, K, P, Q);
    y[n, k, p, q] = sum_{c, r, s} weight[p, q, k, c, r, s] * x_padded[n, c, p*sh + r*dh,
    q*sw + s*dw] + bias[p, q, k]. (P, Q) must be the output size for the given geometry.
    With groups, weight is (P, Q, K, C // groups, R, S) and c runs over filter k's group's
    channels only (as in conv2d).
    """
    return _forward("local2d", x, weight, bias, stride, padding, dilation, groups, backend,
                    out_dtype)


def local2d_backward(grad_out, x, weight, *, stride=1, padding=0, dilation=1, groups=1,
                     needs=NEEDS, deterministic=False, grad_weight=None, grad_bias=None,
                     backend="auto", out_dtype=None):
    return _backward("local2d", grad_out, x, weight, stride, padding, dilation, groups,
                     needs, deterministic, grad_weight, grad_bias, backend, out_dtype)


def tiled_conv2d(x, weight, bias=None, *, stride=1, padding=0, dilation=1, groups=1,
                 backend="auto", out_dtype=None):
    """Tiled 2D convolution: a TP x TQ grid of filter banks, output (p, q) uses bank
    [p % TP, q % TQ].

    x (N, C, H, W), weight (TP, TQ, K, C // groups, R, S), bias (TP, TQ, K) or None -> y (N, K,
    P, Q). TP = TQ = 1 is conv2d; TP = P, TQ = Q is local2d. The tile may not exceed the
    output. groups as in conv2d.
    """
    return _forward("tiled_conv2d", x, weight, bias, stride, padding, dilation, groups,
                    backend, out_dtype)


def tiled_conv2d_backward(grad_out, x, weight, *, stride=1, padding=0, dilation=1, groups=1,
                          needs=NEEDS, deterministic=False, grad_weight=None, grad_bias=None,
                          backend="auto", out_dtype=None):
    return _backward("tiled_conv2d", grad_out, x, weight, stride, padding, dilation, groups,
                     needs, deterministic, grad_weight, grad_bias, backend, out_dtype)


conv2d_backward.__doc__ = "Gradients of conv2d." + _BACKWARD_DOC
local2d_backward.__doc__ = "Gradients of local2d (weight (P, Q, K, C, R, S))." + _BACKWARD_DOC
tiled_conv2d_backward.__doc__ = ("Gradients of tiled_conv2d (weight (TP, TQ, K, C, R, S))."
                                 + _BACKWARD_DOC)


# -------------------------------------------------------------------------- soft sharing
def soft_sharing_penalty(a, b, strength, *, grad_a=None, grad_b=None, backend="auto"):
    """Soft parameter sharing: penalty = strength/2 * sum((a - b)**2), in one fused pass.

    a, b: weight arrays of one shape and dtype (float32, float64, bfloat16 or float16: reduced
    storage is read as it is and summed in float32, the penalty in float64), e.g. two
    branches' filters, or a locally connected layer's banks and their mean broadcast to the
    same shape. strength:
    a finite real >= 0. grad_a / grad_b, when given (a's shape and dtype), are ADDED INTO in
    place: grad_a += strength * (a - b), grad_b -= strength * (a - b) (float32 buffers for
    bfloat16/float16 a and b: master weights); they must not overlap each other or a and b.

    Returns the penalty as a float64 scalar: numpy.float64 for NumPy (and Numba device)
    arrays, a 0-d CuPy array for CuPy arrays (no device-to-host synchronisation). It is summed
    in float64 in a fixed order on every backend: the same bits on every run.
    """
    arrays = {"a": a, "b": b, **{name: arr for name, arr in (("grad_a", grad_a),
                                                            ("grad_b", grad_b)) if arr is not None}}
    kind = _one_place({name: _kind(name, arr) for name, arr in arrays.items()}, arrays)
    for name, arr in arrays.items():
        if dtypes.lookup(arr.dtype) is None:
            raise TypeError(f"{name} must be {dtypes.WORDS}, got dtype {arr.dtype}")
        if arr.dtype != a.dtype and not (name.startswith("grad_")
                                         and _accepts(arr.dtype, a.dtype)):
            raise TypeError(f"{name} has dtype {arr.dtype} but a has dtype {a.dtype}: "
                            "mixed dtypes")
        if tuple(arr.shape) != tuple(a.shape):
            raise ValueError(f"{name} must have a's shape {tuple(a.shape)}, got "
                             f"{tuple(arr.shape)}")
    _strength(strength)
    grads = {name: arr for name, arr in arrays.items() if name.startswith("grad_")}
    for name, g in grads.items():
        if kind == "numpy" and not g.flags.writeable:
            raise ValueError(f"{name} is read-only: it is added into in place")
        for other, x in arrays.items():
            if other != name and _device.overlaps(g, x):
                raise ValueError(f"{name} overlaps {other} in memory: {name} is written while "
                                 f"{other} is read or written")
    c = Call.make(backend, kind, optable.PENALTY, a.dtype, None)
    if a.size == 0:
        return _device.zero_scalar(kind)
    outs = {name: c.put(g) for name, g in grads.items()}
    result = c.be.soft_sharing_penalty(
        _device.flat(c.put(a)), _device.flat(c.put(b)), float(strength),
        **{name: _device.flat(out) for name, out in outs.items()})
    for name, g in grads.items():
        c.land(g, outs[name], None)
    return _device.scalar(c.get(result), kind)


def _optional(c, op):
    """A Call's backend function for an op not every backend has; TypeError naming those that
    do where this one does not."""
    run = getattr(c.be, op, None)
    if run is None:
        have = [n for n, why in registry.backends().items()
                if why == "available" and hasattr(registry.get(n), op)]
        raise TypeError(f"backend {registry.name_of(c.be)!r} has no {op} kernels yet (backends "
                        f"with them: {have}); pass NumPy arrays with backend='cpu'")
    return run


def _banked(name, weight):
    """The kind of a banked weight (TP, TQ, K, C, R, S), checked (_array, with the ndim error
    saying what a banked weight is)."""
    if _device.kind(weight) is not None and weight.ndim != 6:
        raise ValueError(f"{name} must be banked, (TP, TQ, K, C, R, S) (a tiled or locally "
                         f"connected layer's), got shape {weight.shape}")
    return _array(name, weight, 6)


def _strength(strength):
    """A penalty's strength: a finite real >= 0."""
    if isinstance(strength, bool) or not isinstance(strength, numbers.Real):
        raise TypeError(f"strength must be a real number, got {type(strength).__name__}")
    if not np.isfinite(strength) or strength < 0:
        raise ValueError(f"strength must be finite and >= 0, got {strength!r}")


def average_banks(weight, *, groups_of="all", out=None, backend="auto"):
    """Hard sharing by averaging: each block of positions of a banked weight (TP, TQ, K, C, R,
    S) gets the mean of its banks. groups_of="all": one block (every bank becomes the mean: a
    shared conv's filters, repeated); (gp, gq): blocks of gp x gq neighbouring positions from
    (0, 0), the last ones clipped at the grid's edge (a size past the grid means the whole
    axis). Pogodin et al.'s dynamic weight sharing calls this every k steps
    (sharenet_fast.torch.BankAverager).

    In place (out=None: weight is overwritten and returned) or into `out` (weight's shape and
    dtype, not overlapping it). Summed in float64, each element read and written once; 16-bit
    banks rounded once. Every backend has it (the GPU ones: one thread per (block, element)).
    """
    kind = _banked("weight", weight)
    if isinstance(groups_of, str):
        if groups_of != "all":
            raise ValueError(f"groups_of must be 'all' or a pair of positive ints, got "
                             f"{groups_of!r}")
        groups = tuple(weight.shape[:2])
    else:
        groups = pair(groups_of, "groups_of", low=1)
    arrays, kinds = {"weight": weight}, {"weight": kind}
    if out is None:
        if kind == "numpy" and not weight.flags.writeable:
            raise ValueError("weight is read-only; average_banks writes it in place (or pass "
                             "out=)")
    else:
        kinds["out"] = _kind("out", out)
        if out.dtype != weight.dtype:
            raise TypeError(f"out has dtype {out.dtype} but weight has dtype {weight.dtype}")
        if tuple(out.shape) != tuple(weight.shape):
            raise ValueError(f"out must have weight's shape {tuple(weight.shape)}, got "
                             f"{tuple(out.shape)}")
        if kind == "numpy" and not out.flags.writeable:
            raise ValueError("out is read-only")
        if out is not weight and _device.overlaps(out, weight):
            raise ValueError("out overlaps weight in memory (pass out=None to average in place)")
        arrays["out"] = out
    c = Call.make(backend, _one_place(kinds, arrays), optable.AVERAGE, weight.dtype, None)
    run = _optional(c, optable.AVERAGE)
    target = weight if out is None else out
    w = c.put(weight)                             # a contiguous copy of a strided weight
    o = w if target is weight else c.put(out)     # in place: into w, written back below
    run(w, groups, o)
    if o is not target:
        target[...] = c.get(o)
    return target


def neighbour_penalty(weight, strength, *, metric="l2", neighbourhood=4, wrap=False,
                      grad_weight=None, backend="auto"):
    """Neighbour soft sharing for banked weights (a tiled or locally connected layer's
    (TP, TQ, K, C, R, S)): each bank is pulled towards the banks next to it on the grid, one
    step right and down (neighbourhood=4) and the two diagonals (8), each pair once; wrap=True
    makes the grid a torus.

    metric="l2":     strength/2 * sum over pairs of ||w[p, q] - w[p2, q2]||^2
    metric="cosine": strength * mean over pairs and filters k of 1 - cos(w[p, q, k],
                     w[p2, q2, k]), cos(a, b) = a.b / (max(|a|, 1e-8) max(|b|, 1e-8))
                     (All-TNN's spatial loss: each unit's filter near its neighbours')

    grad_weight, when given (weight's shape and dtype; float32 for bfloat16/float16 weights),
    is ADDED INTO in place with the penalty's gradient, in one pass over the banks. Returns the
    penalty as numpy.float64 (a 0-d CuPy array for CuPy inputs; summed in a fixed order: the
    same bits on every run). Every backend has it.
    """
    kind = _banked("weight", weight)
    _strength(strength)
    if metric not in ("l2", "cosine"):
        raise ValueError(f"metric must be 'l2' or 'cosine', got {metric!r}")
    if isinstance(neighbourhood, bool) or neighbourhood not in (4, 8):
        raise ValueError(f"neighbourhood must be 4 or 8, got {neighbourhood!r}")
    if not isinstance(wrap, (bool, np.bool_)):
        raise TypeError(f"wrap must be a bool, got {wrap!r}")
    arrays, kinds = {"weight": weight}, {"weight": kind}
    if grad_weight is not None:
        kinds["grad_weight"] = _accumulator("grad_weight", grad_weight, weight.shape,
                                            weight.dtype)
        arrays["grad_weight"] = grad_weight
        if _device.overlaps(grad_weight, weight):
            raise ValueError("grad_weight overlaps weight in memory: it is written while "
                             "weight is read")
    c = Call.make(backend, _one_place(kinds, arrays), optable.NEIGHBOUR, weight.dtype, None)
    run = _optional(c, optable.NEIGHBOUR)
    out = c.put(grad_weight)
    penalty = run(c.put(weight), float(strength), metric, int(neighbourhood), bool(wrap),
                  grad_weight=out)
    if grad_weight is not None:
        c.land(grad_weight, out, None)
    return _device.scalar(c.get(penalty), c.kind)


def param_count(sharing, input_shape, filters, kernel, *, stride=1, padding=0, dilation=1,
                tile=None, bias=True, groups=1):
    """ParamCount(neurons, weights_per_neuron, params, bytes) of one float32 layer: sharing is
    "shared", "tiled" (tile=(TP, TQ) required) or "local", or the layer's name (conv2d,
    tiled_conv2d, local2d). input_shape is (C, H, W) or (N, C, H, W) (N is ignored).
    cs231n: param_count("shared", (3, 227, 227), 96, 11, stride=4)
      -> ParamCount(neurons=290400, weights_per_neuron=363, params=34944, bytes=139776)
    groups: each neuron sees C // groups channels (weights_per_neuron = C // groups * R * S).
    """
    spec = optable.LAYERS.get(sharing) or optable.BY_SHARING.get(sharing)
    if spec is None:
        raise ValueError(f"sharing must be one of {tuple(optable.BY_SHARING)} (or "
                         f"{tuple(optable.LAYERS)}), got {sharing!r}")
    shape = tuple(input_shape)
    shape = shape[1:] if len(shape) == 4 else shape
    if len(shape) != 3:
        raise ValueError(f"input_shape must be (C, H, W) or (N, C, H, W), got {input_shape!r}")
    (C, H, W), K, (R, S) = (int(v) for v in shape), int(filters), pair(kernel, "kernel")
    if min(C, H, W, K, R, S) < 1:
        raise ValueError(f"input_shape, filters and kernel must be positive, got "
                         f"input_shape={input_shape!r}, filters={filters!r}, kernel={kernel!r}")
    g = ConvGeometry.make(1, C, H, W, K, R, S, stride, padding, dilation, groups)
    if spec.sharing == "tiled" and tile is None:
        raise ValueError("tile=(TP, TQ) is required for sharing='tiled'")
    grid = spec.bank_grid(g, pair(1 if tile is None else tile, "tile"))
    if min(grid) < 1 or grid[0] > g.P or grid[1] > g.Q:
        raise ValueError(f"tile {grid} must be in [1, (P, Q)] = [1, {(g.P, g.Q)}]")
    fan_in = g.Cg * R * S
    params = spec.banks(grid) * K * (fan_in + (1 if bias else 0))
    return ParamCount(K * g.P * g.Q, fan_in, params, params * 4)


backends = registry.backends

