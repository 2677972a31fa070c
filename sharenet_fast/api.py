"""Public API: validation and dispatch only, no arithmetic.

Every check runs before any kernel: a bad call raises ValueError/TypeError naming the argument
and the shapes involved, and never reaches a kernel.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from . import _device, config, dtypes, optable, registry
from .geometry import ConvGeometry

NEEDS = optable.GRADIENTS


class Grads(NamedTuple):
    input: object
    weight: object
    bias: object


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
    _kind(name, a)
    if dtypes.lookup(a.dtype) is None:
        raise TypeError(f"{name} must be {dtypes.WORDS}, got dtype {a.dtype}")
    if dtype is not None and a.dtype != dtype:
        raise TypeError(f"{name} has dtype {a.dtype} but x has dtype {dtype}: mixed dtypes")
    if a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {a.shape}")
    if 0 in a.shape:
        raise ValueError(f"{name} must have no empty dimension, got shape {a.shape}")
    return a


def _same_place(**arrays):
    """The one kind ("numpy", "cupy", "numba") of all given arrays: mixing is a TypeError,
    CuPy arrays on different devices a ValueError."""
    given = {name: a for name, a in arrays.items() if a is not None}
    kinds = {name: _device.kind(a) for name, a in given.items()}
    if len(set(kinds.values())) > 1:
        listing = ", ".join(f"{name} is {k}" for name, k in kinds.items())
        raise TypeError(f"arrays of one call must all be NumPy or all on the GPU (CuPy or "
                        f"Numba device arrays), not mixed: {listing}")
    devices = {name: _device.device_id(a) for name, a in given.items()}
    if len(set(devices.values())) > 1:
        listing = ", ".join(f"{name} on device {d}" for name, d in devices.items())
        raise ValueError(f"arrays of one call must be on one GPU: {listing}")
    return next(iter(kinds.values()))


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


def _backend(name, kind="numpy", op="conv2d"):
    if not isinstance(name, str):
        raise TypeError(f"backend must be a str, got {type(name).__name__}")
    be = registry.get(_auto(kind, op) if name == "auto" else name)
    if kind not in be.KINDS:
        words = {"numpy": "NumPy", "cupy": "CuPy", "numba": "Numba device"}
        raise TypeError(f"backend {name!r} takes {' or '.join(words[k] for k in be.KINDS)} "
                        f"arrays, got {words[kind]} arrays; use backend='auto' or another "
                        f"backend, or copy them")
    return be


class _Moves:
    """The arrays of one call on the backend's side: NumPy arrays given to a GPU backend go to
    the device once per call (each input once, however many passes read it) and each result
    comes back once; otherwise arrays pass through (made C-contiguous)."""

    def __init__(self, be, kind):
        self.be = be
        self.copy = kind == "numpy" and be.KINDS[0] != "numpy"

    def put(self, a):
        if a is None:
            return None
        a = _device.contiguous(a)
        return self.be.to_device(a) if self.copy else a

    def get(self, d):
        return self.be.to_host(d) if self.copy and d is not None else d

    def into(self, buf, compute):
        """compute(out), out being `buf` on the backend's side (added into) or None; the sum
        lands in `buf`, which is returned (the fresh result when buf is None). Kernels add
        only into C-contiguous buffers: any other layout gets the sum through a temporary, so
        a strided view is still added into, never silently replaced."""
        if buf is None:
            return self.get(compute(None))
        if not _device.is_c_contiguous(buf):
            buf += self.get(compute(None))
            return buf
        work = self.put(buf)
        compute(work)
        return self.back(work, buf)

    def back(self, work, buf):
        """Write `work` (put(buf), accumulated into on the backend's side) back into `buf`."""
        if self.copy and _device.is_c_contiguous(buf):
            self.be.copy_into(work, buf)
        elif work is not buf:        # a device copy of a strided buffer, or a host copy of it
            buf[...] = self.get(work)
        return buf


def _precision(be, dtype, out_dtype):
    """{"out_dtype": ...} for a backend call on storage `dtype` ({} for float32/float64, whose
    results always have their own dtype); TypeError if the backend has no kernels for `dtype`
    or out_dtype is not the storage or its accumulation dtype."""
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
    return {"out_dtype": out_dtype} if row.reduced else {}


def _geometry(x, bank, stride, padding, dilation):
    """Geometry from x and one bank's (K, C, R, S); the channel counts must agree."""
    N, C, H, W = x.shape
    K, Cw, R, S = bank
    if Cw != C:
        raise ValueError(f"channel mismatch: x has C={C} channels (shape {x.shape}) but weight "
                         f"expects C={Cw} (bank (K, C, R, S) = {tuple(bank)})")
    return ConvGeometry.make(N, C, H, W, K, R, S, stride, padding, dilation)


def _layer_geometry(spec, x, weight, stride, padding, dilation):
    """The call's ConvGeometry and the weight's bank grid; ValueError if the grid does not fit."""
    _array("x", x, 4)
    _array("weight", weight, spec.weight_ndim, x.dtype)
    g = _geometry(x, weight.shape[-4:], stride, padding, dilation)
    grid = spec.grid(weight.shape)
    spec.check_grid(g, grid, weight.shape)
    return g, grid


def _kernel_input(x, g):
    """x as the kernels see it: padded at the end by g.extra (padding="same", odd total)."""
    return x if g.extra == (0, 0) else _device.pad_end(x, g.extra)


def _forward(op, x, weight, bias, stride, padding, dilation, backend, out_dtype):
    spec = optable.LAYERS[op]
    g, grid = _layer_geometry(spec, x, weight, stride, padding, dilation)
    if bias is not None:
        b_shape = spec.bias_shape(g, grid)
        _array("bias", bias, len(b_shape), x.dtype)
        if bias.shape != b_shape:
            raise ValueError(f"bias must have shape {spec.bias_words} = {b_shape}, "
                             f"got {bias.shape}")
    kind = _same_place(x=x, weight=weight, bias=bias)
    be = _backend(backend, kind, op)
    kw = _precision(be, x.dtype, out_dtype)
    io = _Moves(be, kind)
    forward = getattr(be, spec.export("forward"))
    return io.get(forward(io.put(_kernel_input(x, g)), io.put(weight), io.put(bias),
                          g.padded_input(), grid, **kw))


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


def _backward(op, grad_out, x, weight, stride, padding, dilation, needs, deterministic,
              grad_weight, grad_bias, backend, out_dtype):
    spec = optable.LAYERS[op]
    g, grid = _layer_geometry(spec, x, weight, stride, padding, dilation)
    _array("grad_out", grad_out, 4, x.dtype)
    if grad_out.shape != g.y_shape:
        raise ValueError(f"grad_out must have the output shape (N, K, P, Q) = {g.y_shape} for "
                         f"x {x.shape} and weight {weight.shape}, got {grad_out.shape}")
    needs = _needs(needs)
    if not isinstance(deterministic, (bool, np.bool_)):
        raise TypeError(f"deterministic must be a bool, got {deterministic!r}")
    _check_accumulator("grad_weight", grad_weight, spec.weight_shape(g, grid), x.dtype)
    _check_accumulator("grad_bias", grad_bias, spec.bias_shape(g, grid), x.dtype)
    kind = _same_place(grad_out=grad_out, x=x, weight=weight, grad_weight=grad_weight,
                       grad_bias=grad_bias)
    be = _backend(backend, kind, op)
    kw = _precision(be, x.dtype, out_dtype)
    io = _Moves(be, kind)
    kg, det = g.padded_input(), bool(deterministic)
    passes = {p: getattr(be, spec.export(p), None) for p in optable.PASSES}

    dy = io.put(grad_out)          # each array crosses to the device at most once
    xd = io.put(_kernel_input(x, g)) if "weight" in needs else None
    wd = io.put(weight) if "input" in needs else None
    dx = dw = db = None
    if passes["input_weight"] is not None and "input" in needs and "weight" in needs:
        # one pass computes both (a local layer then streams its weights once, not twice)
        got = {}

        def both(out):
            got["dx"], dw_ = passes["input_weight"](dy, xd, wd, kg, grid, out=out,
                                                    deterministic=det, **kw)
            return dw_
        dw = io.into(grad_weight, both)
        dx = io.get(got["dx"])
    else:
        if "input" in needs:
            dx = io.get(passes["input"](dy, wd, kg, grid, **kw))
        if "weight" in needs:
            dw = io.into(grad_weight, lambda out: passes["weight"](dy, xd, kg, grid, out=out,
                                                                   deterministic=det, **kw))
    if "bias" in needs:
        db = io.into(grad_bias, lambda out: passes["bias"](dy, kg, grid, out=out, **kw))
    if dx is not None and g.extra != (0, 0):
        dx = _device.contiguous(dx[:, :, :g.H, :g.W])       # drop the rows padded for "same"
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


def conv2d(x, weight, bias=None, *, stride=1, padding=0, dilation=1, backend="auto",
           out_dtype=None):
    """Shared-weight 2D convolution (cross-correlation, zero padding), NCHW.

    x (N, C, H, W), weight (K, C, R, S), bias (K,) or None -> y (N, K, P, Q), dtype of x.
    """
    return _forward("conv2d", x, weight, bias, stride, padding, dilation, backend, out_dtype)


def conv2d_backward(grad_out, x, weight, *, stride=1, padding=0, dilation=1,
                    needs=NEEDS, deterministic=False, grad_weight=None, grad_bias=None,
                    backend="auto", out_dtype=None):
    return _backward("conv2d", grad_out, x, weight, stride, padding, dilation, needs,
                     deterministic, grad_weight, grad_bias, backend, out_dtype)


def local2d(x, weight, bias=None, *, stride=1, padding=0, dilation=1, backend="auto",
            out_dtype=None):
    """Locally-connected 2D layer (no weight sharing): one filter bank per output position.

    x (N, C, H, W), weight (P, Q, K, C, R, S), bias (P, Q, K) or None -> y (N, K, P, Q);
    y[n, k, p, q] = sum_{c, r, s} weight[p, q, k, c, r, s] * x_padded[n, c, p*sh + r*dh,
    q*sw + s*dw] + bias[p, q, k]. (P, Q) must be the output size for the given geometry.
    """
    return _forward("local2d", x, weight, bias, stride, padding, dilation, backend, out_dtype)


def local2d_backward(grad_out, x, weight, *, stride=1, padding=0, dilation=1,
                     needs=NEEDS, deterministic=False, grad_weight=None, grad_bias=None,
                     backend="auto", out_dtype=None):
    return _backward("local2d", grad_out, x, weight, stride, padding, dilation, needs,
                     deterministic, grad_weight, grad_bias, backend, out_dtype)


def tiled_conv2d(x, weight, bias=None, *, stride=1, padding=0, dilation=1, backend="auto",
                 out_dtype=None):
    """Tiled 2D convolution: a TP x TQ grid of filter banks, output (p, q) uses bank
    [p % TP, q % TQ].

    x (N, C, H, W), weight (TP, TQ, K, C, R, S), bias (TP, TQ, K) or None -> y (N, K, P, Q).
    TP = TQ = 1 is conv2d; TP = P, TQ = Q is local2d. The tile may not exceed the output.
    """
    return _forward("tiled_conv2d", x, weight, bias, stride, padding, dilation, backend,
                    out_dtype)


def tiled_conv2d_backward(grad_out, x, weight, *, stride=1, padding=0, dilation=1,
                          needs=NEEDS, deterministic=False, grad_weight=None, grad_bias=None,
                          backend="auto", out_dtype=None):
    return _backward("tiled_conv2d", grad_out, x, weight, stride, padding, dilation, needs,
                     deterministic, grad_weight, grad_bias, backend, out_dtype)


conv2d_backward.__doc__ = "Gradients of conv2d." + _BACKWARD_DOC
local2d_backward.__doc__ = "Gradients of local2d (weight (P, Q, K, C, R, S))." + _BACKWARD_DOC
tiled_conv2d_backward.__doc__ = ("Gradients of tiled_conv2d (weight (TP, TQ, K, C, R, S))."
                                 + _BACKWARD_DOC)


def _accepts(buf_dtype, dtype):
    """A buffer added into for arrays of `dtype`: the same dtype, or float32 for reduced
    storage (master weights)."""
    row = dtypes.lookup(dtype)
    return buf_dtype == dtype or (row.reduced and buf_dtype == row.accum)


def _check_accumulator(name, buf, shape, dtype):
    if buf is None:
        return
    k = _kind(name, buf)
    if not _accepts(buf.dtype, dtype):
        extra = (f" (or {dtypes.lookup(dtype).accum}: master weights)"
                 if dtypes.lookup(dtype).reduced else "")
        raise TypeError(f"{name} has dtype {buf.dtype} but x has dtype {dtype}: mixed dtypes; "
                        f"{name} must be {dtype}{extra}")
    if buf.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {buf.shape}")
    if k == "numpy" and not buf.flags.writeable:
        raise ValueError(f"{name} is read-only; it is accumulated into in place")


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
    import numbers

    for name, arr in (("a", a), ("b", b), ("grad_a", grad_a), ("grad_b", grad_b)):
        if arr is not None:
            _kind(name, arr)
    kind = _same_place(a=a, b=b, grad_a=grad_a, grad_b=grad_b)
    for name, arr in (("a", a), ("b", b), ("grad_a", grad_a), ("grad_b", grad_b)):
        if arr is None:
            continue
        if dtypes.lookup(arr.dtype) is None:
            raise TypeError(f"{name} must be {dtypes.WORDS}, got dtype {arr.dtype}")
        if arr.dtype != a.dtype and not (name.startswith("grad_")
                                         and _accepts(arr.dtype, a.dtype)):
            raise TypeError(f"{name} has dtype {arr.dtype} but a has dtype {a.dtype}: "
                            "mixed dtypes")
        if tuple(arr.shape) != tuple(a.shape):
            raise ValueError(f"{name} must have a's shape {tuple(a.shape)}, got "
                             f"{tuple(arr.shape)}")
    if isinstance(strength, bool) or not isinstance(strength, numbers.Real):
        raise TypeError(f"strength must be a real number, got {type(strength).__name__}")
    if not np.isfinite(strength) or strength < 0:
        raise ValueError(f"strength must be finite and >= 0, got {strength!r}")
    grads = {"grad_a": grad_a, "grad_b": grad_b}
    for name, g in grads.items():
        if g is None:
            continue
        if kind == "numpy" and not g.flags.writeable:
            raise ValueError(f"{name} is read-only: it is added into in place")
        for other, x in (("a", a), ("b", b), *grads.items()):
            if x is not None and other != name and _device.overlaps(g, x):
                raise ValueError(f"{name} overlaps {other} in memory: {name} is written while "
                                 f"{other} is read or written")
    be = _backend(backend, kind, optable.PENALTY)
    _precision(be, a.dtype, None)
    if a.size == 0:
        return _device.zero_scalar(kind)
    io = _Moves(be, kind)
    work = {k: io.put(g) for k, g in grads.items()}
    result = be.soft_sharing_penalty(
        _device.flat(io.put(a)), _device.flat(io.put(b)), float(strength),
        **{k: None if w is None else _device.flat(w) for k, w in work.items()})
    for k, g in grads.items():
        if g is not None:
            io.back(work[k], g)
    return _device.scalar(io.get(result), kind)


def param_count(sharing, input_shape, filters, kernel, *, stride=1, padding=0, dilation=1,
                tile=None, bias=True):
    """ParamCount(neurons, weights_per_neuron, params, bytes) for shared, tiled or local
    (or the layer's name: conv2d, tiled_conv2d, local2d)."""
    from .geometry import param_count as _pc

    if sharing in optable.LAYERS:
        sharing = optable.LAYERS[sharing].sharing
    return _pc(sharing, input_shape, filters, kernel, stride=stride, padding=padding,
               dilation=dilation, tile=tile, bias=bias)


backends = registry.backends

