"""The layers as PyTorch custom operators (`torch.ops.sharenet_fast.*`), built from the op table.

Per layer kind (optable.LAYERS: conv2d, tiled_conv2d, local2d) three operators, and two for the
penalty:

    <layer>(x, weight, bias?, stride, padding, padding_word, dilation, groups, deterministic,
            backend) -> y
    <layer>_backward(grad_out, x, weight, stride, padding, padding_word, dilation, groups,
                     needs_input, needs_weight, needs_bias, deterministic, backend)
        -> (dx, dw, db): a gradient not asked for is an empty tensor (custom ops return no None)
    <layer>_backward_into(grad_out, x, weight, grad_weight, grad_bias?, ..., needs_input, ...)
        -> dx; ADDS the weight and bias gradients into grad_weight / grad_bias (mutates_args:
        hard sharing's accumulation, as the NumPy API's grad_weight= does)
    soft_sharing_penalty(a, b, strength, backend) -> 0-d tensor of a's dtype
    soft_sharing_penalty_backward(grad, a, b, strength, needs_a, needs_b, backend) -> (ga, gb)

One `Layer` per kind holds the implementations, fake kernels (shapes only, for torch.compile and
meta tensors), setup_context and gradient rule. Both routes are built from it: the operators
(autograd by register_autograd: the rule calls the backward operator, with `needs` from
`ctx.needs_input_grad`, so one fused pass computes exactly the gradients autograd wants) and, for
eager CPU calls, an autograd.Function of the same implementations and rule (direct() says when).
Autocast: under torch.autocast (CPU or CUDA) the floating inputs are cast to the autocast dtype
(bfloat16 or float16: every backend's kernels store it and sum in float32), so a model stays in
reduced precision through our layers.

dtypes: float32, float64, bfloat16 and float16 tensors (docs/design.md, Precision); bfloat16
crosses to NumPy as ml_dtypes.bfloat16 through its bits, with no copy.

The kernels are the NumPy API's: CPU tensors are handed over as zero-copy NumPy views (a copy
only where a tensor is not C-contiguous), results come back as tensors sharing the NumPy
result's memory, and each gradient has the strides of the tensor it is the gradient of (DDP's
bucket views need a gradient strided like its parameter). CUDA tensors go through DLPack as CuPy
arrays, launched on torch's current stream; that path has not yet run on a GPU.
"""
from __future__ import annotations

import contextlib
from typing import Optional

import ml_dtypes
import numpy as np
import torch
from torch import Tensor

from .. import api, optable, registry
from ..geometry import ConvGeometry

NS = "sharenet_fast"
FLOATS = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
REDUCED = (torch.bfloat16, torch.float16)
_WORDS = "float32, float64, bfloat16 or float16"
# the NumPy API's functions the operators call, looked up per call (tests spy on them here)
_FUNCTIONS = {name: getattr(api, name) for name in optable.LAYERS}
_BACKWARDS = {name: getattr(api, name + "_backward") for name in optable.LAYERS}
_LIB = torch.library.Library(NS, "FRAGMENT")


# ------------------------------------------------------------------------------ boundary
def _kw(stride, padding, word, dilation, groups):
    """The NumPy API's geometry keywords from an operator's arguments."""
    return dict(stride=tuple(stride), padding=word or tuple(padding), dilation=tuple(dilation),
                groups=groups)


def _same_device(**tensors):
    """TypeError for tensors of one call on different devices (the fake kernels' check too:
    a meta or fake tensor beside a real one never reaches the kernels)."""
    devices = {name: t.device for name, t in tensors.items() if t is not None}
    if len(set(devices.values())) > 1:
        listing = ", ".join(f"{name} on {d}" for name, d in devices.items())
        raise TypeError(f"tensors of one call must be on one device, not mixed: {listing}")


def _check(**tensors):
    """dtype and device of every given tensor, before anything is converted: a TypeError naming
    the argument (the NumPy API checks everything else, before any kernel runs)."""
    device = None
    for name, t in tensors.items():
        if t is None:
            continue
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in FLOATS:
            raise TypeError(f"{name} must be {_WORDS}, got {t.dtype}")
        if device is None:
            device = t.device
        elif t.device != device:
            _same_device(**tensors)
    if device.type == "cuda":
        avail = registry.backends()
        if not any(avail[b] == "available" for b in registry.GPU):
            raise TypeError("CUDA tensors need a GPU backend, and none is available here: "
                            + "; ".join(f"{b}: {avail[b]}" for b in registry.GPU))
    elif device.type != "cpu":
        raise TypeError(f"tensors must be on the CPU or a CUDA device, got {device}")


def _check_args(**tensors):
    """The functional forms' check before the operator is called (where a meta tensor would
    send the call to a fake kernel): types, dtypes and one device. Not under torch.compile's
    tracing, where the fake kernels check what they can."""
    if not torch.compiler.is_compiling():
        _check(**tensors)


def _array(t, writable=False):
    """The NumPy (CPU) or CuPy (CUDA) array of a tensor, without a copy where the kernels can
    read it as it is; `writable`: a buffer added into in place (strides kept: the API adds into
    a strided buffer through a temporary)."""
    if t is None:
        return None
    if t.requires_grad:
        t = t.detach()
    if not writable and not t.is_contiguous():
        t = t.contiguous()
    if t.device.type == "cpu":
        if t.dtype == torch.bfloat16:      # NumPy's bfloat16 is ml_dtypes': through the bits
            return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        return t.numpy()
    import cupy

    return cupy.from_dlpack(t)


def _tensor(a, like):
    """A tensor of the API's result `a` (sharing its memory) on `like`'s device."""
    if like.device.type == "cpu":
        if a.dtype == ml_dtypes.bfloat16:
            return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
        return torch.from_numpy(a)
    return torch.from_dlpack(a)


def _strided_like(g, ref):
    """Gradient `g` (C-contiguous) with the strides of `ref`, the tensor it is the gradient of
    (a copy only where ref is not contiguous)."""
    if ref.is_contiguous():
        return g
    return torch.empty_like(ref).copy_(g)


def _stream(ref):
    """CuPy launches on torch's current stream of ref's device; nothing to do on the CPU."""
    if ref.device.type != "cuda":
        return contextlib.nullcontext()
    import cupy

    stream = torch.cuda.current_stream(ref.device)
    stack = contextlib.ExitStack()
    stack.enter_context(cupy.cuda.Device(ref.device.index))
    stack.enter_context(cupy.cuda.ExternalStream(stream.cuda_stream))
    return stack


def _geometry(x, weight, stride, padding, word, dilation, groups):
    N, C, H, W = x.shape
    K, _, R, S = weight.shape[-4:]
    return ConvGeometry.make(N, C, H, W, K, R, S, **_kw(stride, padding, word, dilation, groups))


# --------------------------------------------------------------------------------- autocast
def _autocast_dtype(device_type):
    """The dtype our operators compute in under torch.autocast: the autocast dtype (bfloat16
    or float16: reduced storage, float32 sums, on the CPU and GPU kernels alike), float32
    wherever the autocast dtype is another one."""
    dtype = torch.get_autocast_dtype(device_type)
    return dtype if dtype in REDUCED else torch.float32


def _register_autocast(opname):
    """Autocast rules for operator `opname` on the CPU and CUDA: cast every floating tensor
    argument to _autocast_dtype(device), run the operator with autocast off. Not
    torch.library.register_autocast, whose dtype is fixed at registration: ours is the
    region's (bfloat16 or float16, on either device); public calls only."""
    op = getattr(getattr(torch.ops, NS), opname).default
    for device_type in ("cpu", "cuda"):
        def kernel(*args, device_type=device_type):
            dtype = _autocast_dtype(device_type)
            cast = [a.to(dtype) if isinstance(a, Tensor) and a.is_floating_point()
                    and a.device.type == device_type else a for a in args]
            torch.set_autocast_enabled(device_type, False)     # excludes the Autocast key
            try:
                return op(*cast)
            finally:
                torch.set_autocast_enabled(device_type, True)

        _LIB.impl(opname, kernel, "Autocast" + device_type.upper())


# ------------------------------------------------------------------------ layer operators
class Layer:
    """One layer kind: its operators, implementations, fake kernels, setup_context and gradient
    rule; `function`, the same forward and rule as a torch.autograd.Function (eager calls);
    calling it runs the layer by the route direct() picks."""

    def __init__(self, name):
        self.name, self.spec = name, optable.LAYERS[name]
        self.op = torch.library.custom_op(f"{NS}::{name}", self.forward, mutates_args=())
        self.op.register_fake(self.forward_fake)
        self.op.register_autograd(self.gradient, setup_context=self.setup_context)
        self.backward_op = torch.library.custom_op(f"{NS}::{name}_backward", self.backward,
                                                   mutates_args=())
        self.backward_op.register_fake(self.backward_fake)
        self.into_op = torch.library.custom_op(f"{NS}::{name}_backward_into", self.backward_into,
                                               mutates_args=("grad_weight", "grad_bias"))
        self.into_op.register_fake(self.into_fake)
        _register_autocast(name)
        self.overload = getattr(torch.ops.sharenet_fast, name).default
        # forward takes ctx itself: a separate setup_context costs a signature binding per call
        self.function = type(name, (torch.autograd.Function,),
                             dict(forward=staticmethod(self._eager_forward),
                                  backward=staticmethod(self.gradient)))

    def __call__(self, x, weight, bias, *args):
        how = direct(x, weight, bias)
        if how == "function":
            return self.function.apply(x, weight, bias, *args)
        if how == "impl":
            return self.forward(x, weight, bias, *args)
        _check_args(x=x, weight=weight, bias=bias)
        return self.overload(x, weight, bias, *args)

    def forward(self, x: Tensor, weight: Tensor, bias: Optional[Tensor], stride: list[int],
                padding: list[int], padding_word: str, dilation: list[int], groups: int,
                deterministic: bool, backend: str) -> Tensor:
        _check(x=x, weight=weight, bias=bias)
        with _stream(x):
            y = _FUNCTIONS[self.name](_array(x), _array(weight), _array(bias), backend=backend,
                                      **_kw(stride, padding, padding_word, dilation, groups))
        return _tensor(y, x)

    def forward_fake(self, x, weight, bias, stride, padding, padding_word, dilation, groups,
                     *_):
        _same_device(x=x, weight=weight, bias=bias)
        return x.new_empty(_geometry(x, weight, stride, padding, padding_word, dilation,
                                     groups).y_shape)

    def backward(self, grad_out: Tensor, x: Tensor, weight: Tensor, stride: list[int],
                 padding: list[int], padding_word: str, dilation: list[int], groups: int,
                 needs_input: bool, needs_weight: bool, needs_bias: bool, deterministic: bool,
                 backend: str) -> tuple[Tensor, Tensor, Tensor]:
        _check(grad_out=grad_out, x=x, weight=weight)
        grads = self._backward(grad_out, x, weight, stride, padding, padding_word, dilation,
                               groups, needs_input, needs_weight, needs_bias, deterministic,
                               backend)
        return tuple(x.new_empty(0) if g is None else g for g in grads)

    def _backward(self, grad_out, x, weight, stride, padding, word, dilation, groups, *args):
        """The gradients asked for (None for the others), tensors unchecked."""
        *wants, deterministic, backend = args
        with _stream(x):
            g = _BACKWARDS[self.name](
                _array(grad_out), _array(x), _array(weight), deterministic=deterministic,
                needs=tuple(n for n, want in zip(optable.GRADIENTS, wants) if want),
                backend=backend, **_kw(stride, padding, word, dilation, groups))
        return (_strided_like(_tensor(g.input, x), x) if wants[0] else None,
                _strided_like(_tensor(g.weight, x), weight) if wants[1] else None,
                _tensor(g.bias, x) if wants[2] else None)

    def backward_fake(self, grad_out, x, weight, stride, padding, padding_word, dilation,
                      groups, needs_input, needs_weight, needs_bias, *_):
        g = _geometry(x, weight, stride, padding, padding_word, dilation, groups)
        return (torch.empty_like(x) if needs_input else x.new_empty(0),
                torch.empty_like(weight) if needs_weight else x.new_empty(0),
                x.new_empty(self.spec.bias_shape(g, self.spec.grid(weight.shape)))
                if needs_bias else x.new_empty(0))

    def backward_into(self, grad_out: Tensor, x: Tensor, weight: Tensor, grad_weight: Tensor,
                      grad_bias: Optional[Tensor], stride: list[int], padding: list[int],
                      padding_word: str, dilation: list[int], groups: int, needs_input: bool,
                      deterministic: bool, backend: str) -> Tensor:
        _check(grad_out=grad_out, x=x, weight=weight, grad_weight=grad_weight,
               grad_bias=grad_bias)
        needs = ("input",) * needs_input + ("weight",) + ("bias",) * (grad_bias is not None)
        with _stream(x):
            g = _BACKWARDS[self.name](
                _array(grad_out), _array(x), _array(weight), needs=needs,
                deterministic=deterministic, grad_weight=_array(grad_weight, writable=True),
                grad_bias=_array(grad_bias, writable=True), backend=backend,
                **_kw(stride, padding, padding_word, dilation, groups))
        return _strided_like(_tensor(g.input, x), x) if needs_input else x.new_empty(0)

    def into_fake(self, grad_out, x, weight, grad_weight, grad_bias, stride, padding,
                  padding_word, dilation, groups, needs_input, *_):
        return torch.empty_like(x) if needs_input else x.new_empty(0)

    def setup_context(self, ctx, inputs, output):
        """Saves x, weight and the geometry arguments as the forward that just ran validated
        them: the backward passes them on, unchecked. `run`: the backward operator."""
        x, weight, _, *ctx.geo, ctx.deterministic, ctx.backend = inputs
        ctx.save_for_backward(x, weight)
        ctx.run = self.backward_op

    def gradient(self, ctx, grad_out):
        x, weight = ctx.saved_tensors
        wants = ctx.needs_input_grad[:3]
        if not any(wants):
            return (None,) * 10
        grads = ctx.run(grad_out.contiguous(), x, weight, *ctx.geo, *wants, ctx.deterministic,
                        ctx.backend)
        return tuple(g if want else None for g, want in zip(grads, wants)) + (None,) * 7

    def _eager_forward(self, ctx, *inputs):
        out = self.forward(*inputs)
        self.setup_context(ctx, inputs, out)
        ctx.run = self._backward        # the implementation: no dispatcher, tensors checked
        return out


def direct(*tensors):
    """How an eager call may skip the dispatcher: None (it may not: torch.compile is tracing,
    autocast or a dispatch mode is on, or a tensor is not a plain CPU tensor or nn.Parameter;
    those need the operator itself), "impl" (no gradient to record: call the implementation),
    "function" (Layer.function). The dispatcher and the operator's autograd wrapper cost ~45 us a call
    and again for the backward operator, twice a tiny layer's kernels."""
    given = [t for t in tensors if t is not None]
    if not all(type(t) in _PLAIN and t.device.type == "cpu" for t in given):
        return None
    if torch.compiler.is_compiling() or torch.is_autocast_enabled("cpu") or _dispatch_modes():
        return None
    if torch.is_grad_enabled() and any(t.requires_grad for t in given):
        return "function"
    return "impl"


_PLAIN = (Tensor, torch.nn.Parameter)


def _dispatch_modes():
    stack = getattr(torch._C, "_len_torch_dispatch_stack", None)
    return stack() if stack is not None else 1


KINDS = {name: Layer(name) for name in optable.LAYERS}
OPS = {name: (k.op, k.backward_op, k.into_op) for name, k in KINDS.items()}


# ----------------------------------------------------------------------------- the penalty
@torch.library.custom_op(f"{NS}::soft_sharing_penalty", mutates_args=())
def soft_sharing_penalty(a: Tensor, b: Tensor, strength: float, backend: str) -> Tensor:
    _check(a=a, b=b)
    with _stream(a):
        p = api.soft_sharing_penalty(_array(a), _array(b), strength, backend=backend)
    if a.device.type == "cpu":
        return torch.tensor(float(p), dtype=a.dtype)
    return torch.from_dlpack(p).to(a.dtype)


@soft_sharing_penalty.register_fake
def _(a, b, strength, backend):
    return a.new_empty(())


@torch.library.custom_op(f"{NS}::soft_sharing_penalty_backward", mutates_args=())
def soft_sharing_penalty_backward(grad: Tensor, a: Tensor, b: Tensor, strength: float,
                                  needs_a: bool, needs_b: bool,
                                  backend: str) -> tuple[Tensor, Tensor]:
    """(grad * strength * (a - b), -grad * strength * (a - b)); one not asked for is empty.
    The fused kernel adds into zeroed buffers, then the incoming gradient scales them."""
    _check(a=a, b=b)
    ga = torch.zeros_like(a, memory_format=torch.contiguous_format) if needs_a else None
    gb = torch.zeros_like(b, memory_format=torch.contiguous_format) if needs_b else None
    with _stream(a):
        api.soft_sharing_penalty(_array(a), _array(b), strength, grad_a=_array(ga, True),
                                 grad_b=_array(gb, True), backend=backend)
    scale = grad.to(a.dtype)
    empty = a.new_empty(0)
    return (_strided_like(ga.mul_(scale), a) if needs_a else empty,
            _strided_like(gb.mul_(scale), b) if needs_b else empty.clone())


@soft_sharing_penalty_backward.register_fake
def _(grad, a, b, strength, needs_a, needs_b, backend):
    return (torch.empty_like(a) if needs_a else a.new_empty(0),
            torch.empty_like(b) if needs_b else a.new_empty(0))


def _penalty_setup(ctx, inputs, output):
    a, b, ctx.strength, ctx.backend = inputs
    ctx.save_for_backward(a, b)


def _penalty_grad(ctx, grad):
    a, b = ctx.saved_tensors
    want_a, want_b = ctx.needs_input_grad[:2]
    if not (want_a or want_b):
        return None, None, None, None
    ga, gb = soft_sharing_penalty_backward(grad, a, b, ctx.strength, want_a, want_b,
                                           ctx.backend)
    return (ga if want_a else None, gb if want_b else None, None, None)


soft_sharing_penalty.register_autograd(_penalty_grad, setup_context=_penalty_setup)
_register_autocast("soft_sharing_penalty")


# ------------------------------------------------------------------ the neighbour penalty
@torch.library.custom_op(f"{NS}::neighbour_penalty", mutates_args=())
def neighbour_penalty(weight: Tensor, strength: float, metric: str, neighbourhood: int,
                      wrap: bool, backend: str) -> Tensor:
    _check(weight=weight)
    p = api.neighbour_penalty(_array(weight), strength, metric=metric,
                              neighbourhood=neighbourhood, wrap=wrap, backend=backend)
    return torch.tensor(float(p), dtype=weight.dtype)


@neighbour_penalty.register_fake
def _(weight, strength, metric, neighbourhood, wrap, backend):
    return weight.new_empty(())


@torch.library.custom_op(f"{NS}::neighbour_penalty_backward", mutates_args=())
def neighbour_penalty_backward(grad: Tensor, weight: Tensor, strength: float, metric: str,
                               neighbourhood: int, wrap: bool, backend: str) -> Tensor:
    """grad * d(penalty)/d(weight): the kernel adds into a zeroed buffer, then the incoming
    gradient scales it."""
    _check(weight=weight)
    gw = torch.zeros_like(weight, memory_format=torch.contiguous_format)
    api.neighbour_penalty(_array(weight), strength, metric=metric, neighbourhood=neighbourhood,
                          wrap=wrap, grad_weight=_array(gw, True), backend=backend)
    return _strided_like(gw.mul_(grad.to(weight.dtype)), weight)


@neighbour_penalty_backward.register_fake
def _(grad, weight, strength, metric, neighbourhood, wrap, backend):
    return torch.empty_like(weight)


def _neighbour_setup(ctx, inputs, output):
    weight, *ctx.args = inputs
    ctx.save_for_backward(weight)


def _neighbour_grad(ctx, grad):
    if not ctx.needs_input_grad[0]:
        return (None,) * 6
    (weight,) = ctx.saved_tensors
    return (neighbour_penalty_backward(grad, weight, *ctx.args),) + (None,) * 5


neighbour_penalty.register_autograd(_neighbour_grad, setup_context=_neighbour_setup)
_register_autocast("neighbour_penalty")
