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

from .. import api
from ..geometry import INDEX_MAX, ConvGeometry, pair
from . import _ops  # noqa: F401  (registers torch.ops.sharenet_fast.*)

_ops_ns = torch.ops.sharenet_fast


def _groups(groups):
    """groups as an int >= 1 (whether it divides the channels is the layer's check)."""
    if isinstance(groups, bool) or not isinstance(groups, int):
        raise TypeError(f"groups must be an int, got {groups!r}")
    if not 1 <= groups <= INDEX_MAX:
        raise ValueError(f"groups must be >= 1, got {groups}")
    return groups


def _conv_args(stride, padding, dilation, groups=1):
    """(stride, padding, padding_word, dilation, groups) as the operators take them;
    ValueError/TypeError naming the argument for a bad value (pair's range check included:
    torch's int64 schema would raise a RuntimeError on a too large int)."""
    st = list(pair(stride, "stride", low=1))
    dl = list(pair(dilation, "dilation", low=1))
    groups = _groups(groups)
    if isinstance(padding, str):
        if padding not in ("same", "valid"):
            raise ValueError(f"padding must be an int, a pair, 'same' or 'valid', got "
                             f"{padding!r}")
        if padding == "same" and st != [1, 1]:
            raise ValueError(f"padding='same' needs stride 1 (as torch.nn.Conv2d), got "
                             f"stride {tuple(st)}")
        return st, [0, 0], padding, dl, groups
    return st, list(pair(padding, "padding", low=0)), "", dl, groups


def _apply(op, x, weight, bias, stride, padding, dilation, groups, deterministic, backend):
    return _ops.KINDS[op](x, weight, bias, *_conv_args(stride, padding, dilation, groups),
                          bool(deterministic), backend)


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *,
           deterministic=False, backend="auto"):
    """Shared-weight convolution, differentiable: x (N, C, H, W), weight (K, C // groups, R, S),
    bias (K,) or None -> (N, K, P, Q); torch.nn.functional.conv2d's arithmetic, groups too."""
    return _apply("conv2d", x, weight, bias, stride, padding, dilation, groups, deterministic,
                  backend)


def tiled_conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *,
                 deterministic=False, backend="auto"):
    """Tiled convolution, differentiable: weight (TP, TQ, K, C // groups, R, S); output (p, q)
    uses bank [p % TP, q % TQ]; bias (TP, TQ, K) or None."""
    return _apply("tiled_conv2d", x, weight, bias, stride, padding, dilation, groups,
                  deterministic, backend)


def local2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *,
            deterministic=False, backend="auto"):
    """Locally connected layer, differentiable: weight (P, Q, K, C // groups, R, S), one bank
    per output position; bias (P, Q, K) or None."""
    return _apply("local2d", x, weight, bias, stride, padding, dilation, groups, deterministic,
                  backend)


def soft_sharing_penalty(a, b, strength, *, backend="auto"):
    """strength/2 * sum((a - b)**2) as a 0-d tensor of a's dtype, differentiable in a and b."""
    _ops._check_args(a=a, b=b)
    return _ops_ns.soft_sharing_penalty(a, b, float(strength), backend)


def neighbour_penalty(weight, strength, *, metric="l2", neighbourhood=4, wrap=False,
                      backend="auto"):
    """sharenet_fast.neighbour_penalty (each bank of a (TP, TQ, K, C, R, S) weight near its
    grid neighbours; l2 or cosine) as a 0-d tensor of weight's dtype, differentiable in
    weight."""
    _ops._check_args(weight=weight)
    return _ops_ns.neighbour_penalty(weight, float(strength), metric, int(neighbourhood),
                                     bool(wrap), backend)


# ------------------------------------------------------------------------------- modules
def _check_int(name, v, words=""):
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"{name} must be an int{words}, got {v!r}")


def _check_module(in_channels, out_channels, kernel_size):
    for name, v in (("in_channels", in_channels), ("out_channels", out_channels)):
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= INDEX_MAX:
            raise ValueError(f"{name} must be a positive int below 2**31, got {v!r}")
    return pair(kernel_size, "kernel_size")


_GEOMETRY_WORDS = dict(stride=1, padding=0, dilation=1)


class _Layer(nn.Module):
    """What the modules share: parameters (the bank grid _grid() of banks (out, in, R, S)),
    initialisation, forward through the layer's operator, repr."""

    op = None           # the op table's name

    def __init__(self, in_channels, out_channels, kernel_size, stride, padding, dilation,
                 groups, bias, backend, deterministic, device, dtype):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = _check_module(in_channels, out_channels, kernel_size)
        _groups(groups)
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"groups={groups} must divide both in_channels={in_channels} and "
                             f"out_channels={out_channels}")
        self.__dict__["groups"] = groups
        self._set_geometry(stride=stride, padding=padding, dilation=dilation)
        self.backend, self.deterministic = backend, deterministic
        self._fan_in = in_channels // groups * self.kernel_size[0] * self.kernel_size[1]
        factory = dict(device=device, dtype=dtype)
        lead = self._grid()
        self.weight = nn.Parameter(torch.empty(lead + (out_channels, in_channels // groups)
                                               + self.kernel_size, **factory))
        self.bias = (nn.Parameter(torch.empty(lead + (out_channels,), **factory)) if bias
                     else None)
        self.reset_parameters()

    def __setattr__(self, name, value):
        # stride, padding, dilation may change after construction, as on torch.nn.Conv2d: they
        # are validated when set and kept in the form the operator takes (_geo), so forward does
        # no checking (a local layer's weight then no longer fits, and its forward says so).
        # groups fixes the weight's shape: it is set once, by the constructor.
        if name == "groups":
            raise AttributeError("groups is fixed at construction (it sets the weight's shape)")
        if name in _GEOMETRY_WORDS:
            words = {w: self.__dict__.get(w, default) for w, default in _GEOMETRY_WORDS.items()}
            self._set_geometry(**{**words, name: value})
        else:
            super().__setattr__(name, value)

    def _set_geometry(self, **words):
        geo, shown = self._geometry(**words)      # raises, naming the word, before any change
        self.__dict__.update(shown, _geo=geo[:4] + (self.groups,))

    @staticmethod
    def _geometry(stride, padding, dilation):
        """(the operator's geometry arguments, the words as the module shows them)."""
        geo = st, pd, word, dl, _ = _conv_args(stride, padding, dilation)
        return geo, dict(stride=tuple(st), padding=word or tuple(pd), dilation=tuple(dl))

    def _grid(self):
        return ()

    def reset_parameters(self):
        """Uniform in +-1/sqrt(fan-in of one bank), weight and bias (torch.nn.Conv2d's)."""
        bound = 1 / math.sqrt(self._fan_in)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        return self._call(x, self.weight, self.bias)

    def _call(self, x, weight, bias):
        return _ops.KINDS[self.op](x, weight, bias, *self._geo, bool(self.deterministic),
                                   self.backend)

    def extra_repr(self):
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"stride={self.stride}")
        if self.padding not in ((0, 0), 0, "valid"):
            s += f", padding={self.padding!r}"
        if self.dilation not in ((1, 1), 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
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
        """stride, padding, dilation, groups, bias of a torch.nn.Conv2d we can take over."""
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"conv must be a torch.nn.Conv2d, got {type(conv).__name__}")
        if conv.padding_mode != "zeros":
            raise ValueError(f"conv has padding_mode={conv.padding_mode!r}; only 'zeros' "
                             "matches these layers")
        return dict(stride=conv.stride, padding=conv.padding, dilation=conv.dilation,
                    groups=conv.groups, bias=conv.bias is not None, device=conv.weight.device,
                    dtype=conv.weight.dtype)

    def _untie_from(self, conv):
        """Every bank = the conv's filter (and bias): the same outputs as conv."""
        with torch.no_grad():
            self.weight.copy_(conv.weight.detach().expand_as(self.weight))
            if self.bias is not None:
                self.bias.copy_(conv.bias.detach().expand_as(self.bias))
        return self


class Conv2d(_Layer):
    """A shared-weight convolution on sharenet_fast's kernels, like torch.nn.Conv2d (zero
    padding): weight (out_channels, in_channels // groups, R, S), bias (out_channels,)."""
    op = "conv2d"

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, *, backend="auto", deterministic=False, device=None,
                 dtype=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         groups, bias, backend, deterministic, device, dtype)


class TiledConv2d(_Layer):
    """A tiled convolution: a `tiles` = (TP, TQ) grid of filter banks, output (p, q) using bank
    [p % TP, q % TQ]; weight (TP, TQ, out, in, R, S), bias (TP, TQ, out). (1, 1) is Conv2d."""
    op = "tiled_conv2d"

    def __init__(self, in_channels, out_channels, kernel_size, tiles, stride=1, padding=0,
                 dilation=1, groups=1, bias=True, *, backend="auto", deterministic=False,
                 device=None, dtype=None):
        self.tiles = pair(tiles, "tiles")
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         groups, bias, backend, deterministic, device, dtype)

    def _grid(self):
        return self.tiles

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
                 dilation=1, groups=1, bias=True, *, backend="auto", deterministic=False,
                 device=None, dtype=None):
        self.input_size = pair(input_size, "input_size")
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         groups, bias, backend, deterministic, device, dtype)

    def _grid(self):
        st, pd, word, dl, groups = self._geo
        g = ConvGeometry.make(1, self.in_channels, *self.input_size, self.out_channels,
                              *self.kernel_size, st, word or pd, dl, groups)
        self.output_size = (g.P, g.Q)
        return self.output_size

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


class LocallyConnected1d(LocallyConnected2d):
    """A 1-D locally connected layer (tf-keras's LocallyConnected1D): the 2-D layer with H = 1
    and kernel 1 x kernel_size, x (N, in_channels, input_length) -> (N, out_channels, L_out);
    weight (L_out, out, in, kernel_size), bias (L_out, out): the 2-D parameters without their
    unit axes. The kernels parallelise over positions, so a single row uses every core."""

    def __init__(self, in_channels, out_channels, kernel_size, input_length, stride=1,
                 padding=0, dilation=1, groups=1, bias=True, *, backend="auto",
                 deterministic=False, device=None, dtype=None):
        for name, v in (("kernel_size", kernel_size), ("input_length", input_length)):
            _check_int(name, v)
            pair(v, name)
        super().__init__(in_channels, out_channels, (1, kernel_size), (1, input_length),
                         stride, padding, dilation, groups, bias, backend=backend,
                         deterministic=deterministic, device=device, dtype=dtype)
        self.kernel_size, self.input_length, self.output_length = (kernel_size, input_length,
                                                                   self.output_size[1])
        self.weight = nn.Parameter(self.weight.detach()[0, :, :, :, 0])
        if bias:
            self.bias = nn.Parameter(self.bias.detach()[0])

    @staticmethod
    def _geometry(stride, padding, dilation):
        """The 2-D layer's geometry of (1, stride), (0, padding), (1, dilation); shown as ints."""
        for name, v in (("stride", stride), ("padding", padding), ("dilation", dilation)):
            if not (name == "padding" and isinstance(v, str)):
                _check_int(name, v, ", 'same' or 'valid'" if name == "padding" else "")
        geo, _ = _Layer._geometry((1, stride), padding if isinstance(padding, str)
                                  else (0, padding), (1, dilation))
        return geo, dict(stride=stride, padding=padding, dilation=dilation)

    def _extra(self):
        return f", input_length={self.input_length}"

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 3 or x.shape[-1] != self.input_length:
            raise ValueError(f"LocallyConnected1d was built for inputs (N, {self.in_channels}, "
                             f"{self.input_length}), got {tuple(x.shape)}")
        L, K, C, S = self.weight.shape
        y = self._call(x.unsqueeze(2), self.weight.view(1, L, K, C, 1, S),
                       None if self.bias is None else self.bias.view(1, L, K))
        return y.squeeze(2)


# ------------------------------------------------------------------------- bank averaging
def average_banks_(weight, groups_of="all"):
    """In place, outside autograd: each block of positions of a banked weight tensor (a
    TiledConv2d's or LocallyConnected2d's .weight, (TP, TQ, K, C, R, S)) set to the mean of its
    banks (sharenet_fast.average_banks). CPU tensors. Returns weight."""
    _ops._check_args(weight=weight)
    # a strided tensor's NumPy view is averaged through the API's contiguous copy
    api.average_banks(_ops._array(weight, True), groups_of=groups_of)
    return weight


class BankAverager:
    """Dynamic weight sharing (Pogodin et al., NeurIPS 2021): call step() after each optimizer
    step; every `every`-th call averages the banks of each given layer or weight over blocks of
    `groups_of` positions ("all": the layer is a shared conv at that moment).

        averager = sft.BankAverager([model.lc1, model.lc2], every=10)
        ...; optimizer.step(); averager.step()
    """

    def __init__(self, layers, every, groups_of="all"):
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a positive int, got {every!r}")
        self.weights = [getattr(m, "weight", m) for m in layers]
        for w in self.weights:
            if not isinstance(w, torch.Tensor) or w.dim() != 6:
                raise ValueError("layers must be banked layers (TiledConv2d, "
                                 "LocallyConnected2d) or their (TP, TQ, K, C, R, S) weights")
        self.every, self.groups_of, self.calls = every, groups_of, 0

    def step(self):
        """Count a step; average on every `every`-th. Returns whether it averaged."""
        self.calls += 1
        if self.calls % self.every:
            return False
        for w in self.weights:
            average_banks_(w, self.groups_of)
        return True
