"""Functional forms and `torch.nn.Module`s over the custom operators of _ops.py.

The modules are shaped like `torch.nn.Conv2d`: the same constructor words, `weight`/`bias`
parameters initialised from the fan-in of one bank (uniform in +-1/sqrt(C*R*S), what
nn.Conv2d's kaiming_uniform_(a=sqrt(5)) comes to), an `extra_repr`, and a state_dict holding
only `weight` and `bias`. Parameter layouts are the NumPy API's: (K, C, R, S) shared,
(TP, TQ, K, C, R, S) tiled, (P, Q, K, C, R, S) locally connected.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .. import optable
from ..geometry import ConvGeometry, pair
from . import _ops  # noqa: F401  (registers torch.ops.sharenet_fast.*)

_ops_ns = torch.ops.sharenet_fast


def _conv_args(stride, padding, dilation):
    """(stride, padding, padding_word, dilation) as the operators take them; ValueError/
    TypeError naming the argument for a bad value."""
    st = list(pair(stride, "stride"))
    dl = list(pair(dilation, "dilation"))
    if isinstance(padding, str):
        if padding not in ("same", "valid"):
            raise ValueError(f"padding must be an int, a pair, 'same' or 'valid', got "
                             f"{padding!r}")
        if padding == "same" and st != [1, 1]:
            raise ValueError(f"padding='same' needs stride 1 (as torch.nn.Conv2d), got "
                             f"stride {tuple(st)}")
        return st, [0, 0], padding, dl
    return st, list(pair(padding, "padding")), "", dl


def _apply(op, x, weight, bias, stride, padding, dilation, deterministic, backend):
    st, pd, word, dl = _conv_args(stride, padding, dilation)
    args = (x, weight, bias, st, pd, word, dl, bool(deterministic), backend)
    how = _ops.direct(x, weight, bias)      # eager CPU calls skip the dispatcher
    if how is None:                         # (the implementation checks its tensors itself)
        _ops._check_args(x=x, weight=weight, bias=bias)
    elif how == "impl":
        return _ops.IMPLS[op](*args)
    elif how == "function":
        return _ops.EAGER[op].apply(*args)
    return getattr(_ops_ns, op)(*args)


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, *, deterministic=False,
           backend="auto"):
    """Shared-weight convolution, differentiable: x (N, C, H, W), weight (K, C, R, S), bias
    (K,) or None -> (N, K, P, Q); torch.nn.functional.conv2d's arithmetic (groups = 1)."""
    return _apply("conv2d", x, weight, bias, stride, padding, dilation, deterministic, backend)


def tiled_conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, *, deterministic=False,
                 backend="auto"):
    """Tiled convolution, differentiable: weight (TP, TQ, K, C, R, S); output (p, q) uses bank
    [p % TP, q % TQ]; bias (TP, TQ, K) or None."""
    return _apply("tiled_conv2d", x, weight, bias, stride, padding, dilation, deterministic,
                  backend)


def local2d(x, weight, bias=None, stride=1, padding=0, dilation=1, *, deterministic=False,
            backend="auto"):
    """Locally connected layer, differentiable: weight (P, Q, K, C, R, S), one bank per output
    position; bias (P, Q, K) or None."""
    return _apply("local2d", x, weight, bias, stride, padding, dilation, deterministic, backend)


def soft_sharing_penalty(a, b, strength, *, backend="auto"):
    """strength/2 * sum((a - b)**2) as a 0-d tensor of a's dtype, differentiable in a and b."""
    _ops._check_args(a=a, b=b)
    return _ops_ns.soft_sharing_penalty(a, b, float(strength), backend)


# ------------------------------------------------------------------------------- modules
def _check_module(in_channels, out_channels, kernel_size):
    for name, v in (("in_channels", in_channels), ("out_channels", out_channels)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    return pair(kernel_size, "kernel_size")


class _Layer(nn.Module):
    """What the three modules share: parameters shaped by the op table, initialisation,
    forward through the layer's operator, repr."""

    op = None           # the op table's name

    def __init__(self, in_channels, out_channels, kernel_size, grid, stride, padding, dilation,
                 bias, backend, deterministic, device, dtype):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = _check_module(in_channels, out_channels, kernel_size)
        self.stride = pair(stride, "stride")
        self.dilation = pair(dilation, "dilation")
        self.padding = padding if isinstance(padding, str) else pair(padding, "padding")
        _conv_args(self.stride, self.padding, self.dilation)          # validates padding
        self.backend, self.deterministic = backend, deterministic
        spec = optable.LAYERS[self.op]
        bank = (out_channels, in_channels) + self.kernel_size
        lead = tuple(grid) if spec.banked else ()
        factory = dict(device=device, dtype=dtype)
        self.weight = nn.Parameter(torch.empty(lead + bank, **factory))
        self.bias = (nn.Parameter(torch.empty(lead + (out_channels,), **factory)) if bias
                     else None)
        self.reset_parameters()

    def reset_parameters(self):
        """Uniform in +-1/sqrt(fan-in of one bank), weight and bias (torch.nn.Conv2d's)."""
        fan_in = self.in_channels * self.kernel_size[0] * self.kernel_size[1]
        bound = 1 / math.sqrt(fan_in)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        return _apply(self.op, x, self.weight, self.bias, self.stride, self.padding,
                      self.dilation, self.deterministic, self.backend)

    def extra_repr(self):
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"stride={self.stride}")
        if self.padding not in ((0, 0), "valid"):
            s += f", padding={self.padding!r}" if isinstance(self.padding, str) else \
                f", padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        s += self._extra()
        if self.bias is None:
            s += ", bias=False"
        if self.backend != "auto":
            s += f", backend={self.backend!r}"
        if self.deterministic:
            s += ", deterministic=True"
        return s

    def _extra(self):
        return ""

    @staticmethod
    def _conv_words(conv):
        """stride, padding, dilation, bias of a torch.nn.Conv2d we can take over."""
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"conv must be a torch.nn.Conv2d, got {type(conv).__name__}")
        if conv.groups != 1:
            raise ValueError(f"conv has groups={conv.groups}; only groups=1 layers can be "
                             "untied")
        if conv.padding_mode != "zeros":
            raise ValueError(f"conv has padding_mode={conv.padding_mode!r}; only 'zeros' "
                             "matches these layers")
        return dict(stride=conv.stride, padding=conv.padding, dilation=conv.dilation,
                    bias=conv.bias is not None, device=conv.weight.device,
                    dtype=conv.weight.dtype)

    def _untie_from(self, conv):
        """Every bank = the conv's filter (and bias): the same outputs as conv."""
        with torch.no_grad():
            self.weight.copy_(conv.weight.detach().expand_as(self.weight))
            if self.bias is not None:
                self.bias.copy_(conv.bias.detach().expand_as(self.bias))
        return self


class Conv2d(_Layer):
    """A shared-weight convolution on sharenet_fast's kernels, like torch.nn.Conv2d (groups=1,
    zero padding): weight (out_channels, in_channels, R, S), bias (out_channels,)."""
    op = "conv2d"

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 bias=True, *, backend="auto", deterministic=False, device=None, dtype=None):
        super().__init__(in_channels, out_channels, kernel_size, (1, 1), stride, padding,
                         dilation, bias, backend, deterministic, device, dtype)


class TiledConv2d(_Layer):
    """A tiled convolution: a `tiles` = (TP, TQ) grid of filter banks, output (p, q) using bank
    [p % TP, q % TQ]; weight (TP, TQ, out, in, R, S), bias (TP, TQ, out). (1, 1) is Conv2d."""
    op = "tiled_conv2d"

    def __init__(self, in_channels, out_channels, kernel_size, tiles, stride=1, padding=0,
                 dilation=1, bias=True, *, backend="auto", deterministic=False, device=None,
                 dtype=None):
        self.tiles = pair(tiles, "tiles")
        super().__init__(in_channels, out_channels, kernel_size, self.tiles, stride, padding,
                         dilation, bias, backend, deterministic, device, dtype)

    def _extra(self):
        return f", tiles={self.tiles}"

    @classmethod
    def from_conv2d(cls, conv, tiles, **kw):
        """A TiledConv2d whose every bank is conv's filter: the same outputs as conv, then
        each tile class trains on its own."""
        words = cls._conv_words(conv)
        return cls(conv.in_channels, conv.out_channels, conv.kernel_size, tiles, **words,
                   **kw)._untie_from(conv)


class LocallyConnected2d(_Layer):
    """A locally connected layer: one filter bank per output position, for inputs of
    `input_size` = (H, W); weight (P, Q, out, in, R, S), bias (P, Q, out). PyTorch has none;
    this is tf-keras's LocallyConnected2D (implementation 1's arithmetic) in NCHW."""
    op = "local2d"

    def __init__(self, in_channels, out_channels, kernel_size, input_size, stride=1, padding=0,
                 dilation=1, bias=True, *, backend="auto", deterministic=False, device=None,
                 dtype=None):
        self.input_size = pair(input_size, "input_size")
        R, S = pair(kernel_size, "kernel_size")
        g = ConvGeometry.make(1, in_channels, *self.input_size, out_channels, R, S, stride,
                              padding, dilation)
        self.output_size = (g.P, g.Q)
        super().__init__(in_channels, out_channels, kernel_size, self.output_size, stride,
                         padding, dilation, bias, backend, deterministic, device, dtype)

    def _extra(self):
        return f", input_size={self.input_size}"

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or tuple(x.shape[-2:]) != self.input_size:
            raise ValueError(f"{type(self).__name__} was built for inputs (N, "
                             f"{self.in_channels}, {self.input_size[0]}, "
                             f"{self.input_size[1]}), got {tuple(x.shape)}")
        return super().forward(x)

    @classmethod
    def from_conv2d(cls, conv, input_size, **kw):
        """Untie a (trained) torch.nn.Conv2d: every bank starts as its filter, so the model's
        output is unchanged, and each position then trains on its own."""
        words = cls._conv_words(conv)
        return cls(conv.in_channels, conv.out_channels, conv.kernel_size, input_size, **words,
                   **kw)._untie_from(conv)


class LocallyConnected1d(nn.Module):
    """A 1-D locally connected layer (tf-keras's LocallyConnected1D) on the 2-D kernels with
    H = 1: x (N, in_channels, input_length) -> (N, out_channels, L_out); weight (L_out, out,
    in, kernel_size), bias (L_out, out), initialised as the 2-D layer's. The kernels
    parallelise over positions, so a single row uses every core."""

    def __init__(self, in_channels, out_channels, kernel_size, input_length, stride=1,
                 padding=0, dilation=1, bias=True, *, backend="auto", deterministic=False,
                 device=None, dtype=None):
        super().__init__()
        for name, v in (("kernel_size", kernel_size), ("input_length", input_length),
                        ("stride", stride), ("dilation", dilation)):
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"{name} must be an int, got {v!r}")
        if not isinstance(padding, str) and (isinstance(padding, bool)
                                             or not isinstance(padding, int)):
            raise TypeError(f"padding must be an int, 'same' or 'valid', got {padding!r}")
        _check_module(in_channels, out_channels, kernel_size)
        self.in_channels, self.out_channels, self.kernel_size = (in_channels, out_channels,
                                                                 kernel_size)
        self.input_length, self.stride, self.padding, self.dilation = (input_length, stride,
                                                                       padding, dilation)
        self.backend, self.deterministic = backend, deterministic
        # the 2-D layer this is: one row, kernel 1 x kernel_size
        self._args2d = ((1, stride), padding if isinstance(padding, str) else (0, padding),
                        (1, dilation))
        _conv_args(*self._args2d)
        g = ConvGeometry.make(1, in_channels, 1, input_length, out_channels, 1, kernel_size,
                              *self._args2d)
        self.output_length = g.Q
        factory = dict(device=device, dtype=dtype)
        self.weight = nn.Parameter(torch.empty(g.Q, out_channels, in_channels, kernel_size,
                                               **factory))
        self.bias = nn.Parameter(torch.empty(g.Q, out_channels, **factory)) if bias else None
        self.reset_parameters()

    def reset_parameters(self):
        bound = 1 / math.sqrt(self.in_channels * self.kernel_size)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 3 or x.shape[-1] != self.input_length:
            raise ValueError(f"LocallyConnected1d was built for inputs (N, {self.in_channels}, "
                             f"{self.input_length}), got {tuple(x.shape)}")
        L, K, C, S = self.weight.shape
        y = _apply("local2d", x.unsqueeze(2), self.weight.view(1, L, K, C, 1, S),
                   None if self.bias is None else self.bias.view(1, L, K), *self._args2d,
                   self.deterministic, self.backend)
        return y.squeeze(2)

    def extra_repr(self):
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"input_length={self.input_length}, stride={self.stride}")
        if self.padding not in (0, "valid"):
            s += f", padding={self.padding!r}"
        if self.dilation != 1:
            s += f", dilation={self.dilation}"
        return s + ("" if self.bias is not None else ", bias=False")
