"""Convolution geometry: output size, argument normalisation, parameter, FLOP and byte counts."""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

SHARINGS = ("shared", "tiled", "local")


def pair(value, name):
    """Normalise an int or a pair of ints to a tuple (a, b); TypeError on anything else."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if isinstance(value, int) or (hasattr(value, "__index__") and not hasattr(value, "__len__")):
        v = int(value)
        return (v, v)
    try:
        a, b = value
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}") from None
    for v in (a, b):
        if isinstance(v, bool) or not hasattr(v, "__index__"):
            raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    return (int(a), int(b))


def out_size(size, kernel, stride, padding, dilation, extra=0):
    return (size + 2 * padding + extra - dilation * (kernel - 1) - 1) // stride + 1


PADDING_WORDS = ("valid", "same")


def resolve_padding(padding, kernel, stride, dilation):
    """(padding pair, extra pair): an int or pair as given (extra 0); "valid" is 0; "same"
    pads dilation*(kernel-1) in all, half before, and an odd total's extra row/column at the
    end (`extra`), so the output has the input's size. ValueError for an unknown string and for
    "same" with a stride other than 1 (torch.nn.Conv2d's rule)."""
    if not isinstance(padding, str):
        return pair(padding, "padding"), (0, 0)
    if padding == "valid":
        return (0, 0), (0, 0)
    if padding != "same":
        raise ValueError(f"padding must be an int, a pair of ints, 'valid' or 'same', "
                         f"got {padding!r}")
    if tuple(stride) != (1, 1):
        raise ValueError(f"padding='same' needs stride 1 (the output keeps the input's size), "
                         f"got stride {tuple(stride)}")
    total = [d * (k - 1) for d, k in zip(dilation, kernel)]
    return tuple(t // 2 for t in total), tuple(t % 2 for t in total)


@dataclass(frozen=True)
class ConvGeometry:
    """Shapes of one 2D convolution in NCHW: x (N,C,H,W), weight bank (K,C,R,S), y (N,K,P,Q)."""

    N: int
    C: int
    H: int
    W: int
    K: int
    R: int
    S: int
    stride: tuple = (1, 1)
    padding: tuple = (0, 0)
    dilation: tuple = (1, 1)
    # zero rows/columns padded at the end beyond `padding` (padding="same" with an odd total).
    # Kernels take symmetric padding only: the API pads x by `extra` first (padded_input()).
    extra: tuple = (0, 0)

    @classmethod
    def make(cls, N, C, H, W, K, R, S, stride=1, padding=0, dilation=1):
        """Build and validate; raises ValueError naming the argument on a bad value."""
        st, dl = pair(stride, "stride"), pair(dilation, "dilation")
        if min(st) < 1:
            raise ValueError(f"stride must be positive, got {st}")
        if min(dl) < 1:
            raise ValueError(f"dilation must be positive, got {dl}")
        pd, extra = resolve_padding(padding, (R, S), st, dl)
        if min(pd) < 0:
            raise ValueError(f"padding must be non-negative, got {pd}")
        g = cls(N, C, H, W, K, R, S, st, pd, dl, extra)
        if g.P < 1 or g.Q < 1:
            raise ValueError(
                f"output size (P, Q) = ({g.P}, {g.Q}) < 1 for input (H, W) = ({H}, {W}), "
                f"kernel (R, S) = ({R}, {S}), stride {st}, padding {pd}, dilation {dl}")
        return g

    @property
    def P(self):
        return out_size(self.H, self.R, self.stride[0], self.padding[0], self.dilation[0],
                        self.extra[0])

    @property
    def Q(self):
        return out_size(self.W, self.S, self.stride[1], self.padding[1], self.dilation[1],
                        self.extra[1])

    def padded_input(self):
        """The same layer on x padded by `extra` at the end: symmetric padding, the same
        output. The kernels' geometry (the API pads x and crops dx to match)."""
        if self.extra == (0, 0):
            return self
        return ConvGeometry(self.N, self.C, self.H + self.extra[0], self.W + self.extra[1],
                            self.K, self.R, self.S, self.stride, self.padding, self.dilation)

    @property
    def x_shape(self):
        return (self.N, self.C, self.H, self.W)

    @property
    def y_shape(self):
        return (self.N, self.K, self.P, self.Q)

    @property
    def w_shape(self):
        return (self.K, self.C, self.R, self.S)

    @property
    def macs(self):
        """Multiply-adds of the forward pass (padding taps counted, as every library does)."""
        return self.N * self.K * self.P * self.Q * self.C * self.R * self.S

    def flops(self, pass_="forward"):
        """FLOPs: 2 per MAC per pass. 'backward' = input + weight gradient (bias is negligible)."""
        per = 2 * self.macs
        return {"forward": per, "input": per, "weight": per, "backward": 2 * per,
                "input_weight": 2 * per, "bias": self.N * self.K * self.P * self.Q}[pass_]

    def min_bytes(self, pass_="forward", itemsize=4, sharing="shared", tile=(1, 1)):
        """Bytes a pass must move at least: each tensor it reads or writes, once.

        'forward' reads x, w, writes y; 'input' reads dy, w, writes dx; 'weight' reads dy, x,
        writes dw; 'bias' reads dy, writes db; 'backward' (= 'input_weight') both gradients
        (dy, x, w read; dx, dw written)."""
        x = self.N * self.C * self.H * self.W
        y = self.N * self.K * self.P * self.Q
        nb = banks(sharing, (self.P, self.Q), tile)
        w = self.K * self.C * self.R * self.S * nb
        counts = {"forward": x + w + y, "input": y + w + x, "weight": y + x + w,
                  "bias": y + self.K * nb, "backward": y + 2 * x + 2 * w,
                  "input_weight": y + 2 * x + 2 * w}
        if pass_ not in counts:
            raise ValueError(f"pass_ must be one of {tuple(counts)}, got {pass_!r}")
        return counts[pass_] * itemsize


def banks(sharing, out_hw, tile=None):
    """Number of filter banks: 1 shared, TP*TQ tiled, P*Q locally connected."""
    if sharing == "shared":
        return 1
    if sharing == "tiled":
        tp, tq = pair(tile if tile is not None else 1, "tile")
        return tp * tq
    if sharing == "local":
        return out_hw[0] * out_hw[1]
    raise ValueError(f"sharing must be one of {SHARINGS}, got {sharing!r}")


class ParamCount(NamedTuple):
    neurons: int
    weights_per_neuron: int
    params: int
    bytes: int


def param_count(sharing, input_shape, filters, kernel, *, stride=1, padding=0, dilation=1,
                tile=None, bias=True, itemsize=4):
    """Neurons, weights per neuron, parameters and their bytes for one layer.

    input_shape is (C, H, W) or (N, C, H, W) (N is ignored: parameters do not depend on it).
    cs231n: param_count("shared", (3, 227, 227), 96, 11, stride=4)
      -> ParamCount(neurons=290400, weights_per_neuron=363, params=34944, bytes=139776)
    """
    if sharing not in SHARINGS:
        raise ValueError(f"sharing must be one of {SHARINGS}, got {sharing!r}")
    shape = tuple(input_shape)
    if len(shape) == 4:
        shape = shape[1:]
    if len(shape) != 3:
        raise ValueError(f"input_shape must be (C, H, W) or (N, C, H, W), got {input_shape!r}")
    C, H, W = (int(v) for v in shape)
    R, S = pair(kernel, "kernel")
    K = int(filters)
    if min(C, H, W, K, R, S) < 1:
        raise ValueError(f"input_shape, filters and kernel must be positive, got "
                         f"input_shape={input_shape!r}, filters={filters!r}, kernel={kernel!r}")
    g = ConvGeometry.make(1, C, H, W, K, R, S, stride, padding, dilation)
    if sharing == "tiled":
        if tile is None:
            raise ValueError("tile=(TP, TQ) is required for sharing='tiled'")
        tp, tq = pair(tile, "tile")
        if tp < 1 or tq < 1 or tp > g.P or tq > g.Q:
            raise ValueError(f"tile {(tp, tq)} must be in [1, (P, Q)] = [1, {(g.P, g.Q)}]")
    nb = banks(sharing, (g.P, g.Q), tile)
    per_neuron = C * R * S
    params = nb * K * (per_neuron + (1 if bias else 0))
    return ParamCount(K * g.P * g.Q, per_neuron, params, params * itemsize)
