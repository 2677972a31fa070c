"""Convolution geometry: output size, argument normalisation, parameter, FLOP and byte counts."""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

# The largest integer argument (stride, padding, dilation, tile, sizes) the kernels index with:
# the GPU kernels take int32 geometry, and a bigger Python int would overflow inside a kernel call.
INDEX_MAX = 2**31 - 1


def pair(value, name, low=None):
    """Normalise an int or a pair of ints to a tuple (a, b); TypeError on anything else,
    ValueError naming `name` for a value past the kernels' index range (|v| > INDEX_MAX) or,
    given `low`, below it."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if isinstance(value, int) or (hasattr(value, "__index__") and not hasattr(value, "__len__")):
        a = b = int(value)
    else:
        try:
            a, b = value
        except (TypeError, ValueError):
            raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}") from None
        for v in (a, b):
            if isinstance(v, bool) or not hasattr(v, "__index__"):
                raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
        a, b = int(a), int(b)
    if max(abs(a), abs(b)) > INDEX_MAX:
        raise ValueError(f"{name} must be at most {INDEX_MAX} (the kernels' index range), "
                         f"got {value!r}")
    if low is not None and min(a, b) < low:
        raise ValueError(f"{name} must be {'positive' if low == 1 else 'non-negative'}, got "
                         f"{(a, b)}")
    return (a, b)


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


def check_groups(groups, C, K):
    """groups as an int >= 1 dividing both C and K; TypeError / ValueError naming it."""
    if isinstance(groups, bool) or not hasattr(groups, "__index__"):
        raise TypeError(f"groups must be an int, got {groups!r}")
    G = int(groups)
    if G < 1:
        raise ValueError(f"groups must be >= 1, got {G}")
    if C % G or K % G:
        raise ValueError(f"groups={G} must divide both the input channels C={C} and the "
                         f"filters K={K}")
    return G


@dataclass(frozen=True)
class ConvGeometry:
    """Shapes of one 2D convolution in NCHW: x (N,C,H,W), weight bank (K,C/groups,R,S),
    y (N,K,P,Q). With groups G, filters k of group k // (K/G) see input channels
    [(k // (K/G)) * C/G, ... + C/G) only (torch.nn.Conv2d's rule; depthwise: G == C)."""

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
    # zero rows/columns padded at the end beyond `padding` (padding="same" with an odd total);
    # every backend takes it as it is (see pads()).
    extra: tuple = (0, 0)
    groups: int = 1

    @classmethod
    def make(cls, N, C, H, W, K, R, S, stride=1, padding=0, dilation=1, groups=1):
        """Build and validate; raises ValueError naming the argument on a bad value."""
        st, dl = pair(stride, "stride", low=1), pair(dilation, "dilation", low=1)
        pd, extra = resolve_padding(padding, (R, S), st, dl)
        pair(pd, "padding", low=0)
        G = check_groups(groups, C, K)
        g = cls(N, C, H, W, K, R, S, st, pd, dl, extra, G)
        if max(H + 2 * pd[0], W + 2 * pd[1]) > INDEX_MAX:   # a dilated kernel past it: P < 1
            raise ValueError(f"padding {pd} takes the padded input ({H}, {W}) past the "
                             f"kernels' index range ({INDEX_MAX})")
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

    def pads(self):
        """((top, bottom), (left, right)): the zero rows and columns around x, `extra` included
        at the end: what a kernel that builds a padded copy of x pads it by."""
        (ph, pw), (eh, ew) = self.padding, self.extra
        return (ph, ph + eh), (pw, pw + ew)

    @property
    def Cg(self):
        """Input channels per group: the weight's channel axis."""
        return self.C // self.groups

    @property
    def Kg(self):
        """Filters per group."""
        return self.K // self.groups

    @property
    def depthwise(self):
        """One input channel per group (groups == C): no reduction over channels."""
        return self.Cg == 1 and self.groups > 1

    @property
    def x_shape(self):
        return (self.N, self.C, self.H, self.W)

    @property
    def y_shape(self):
        return (self.N, self.K, self.P, self.Q)

    @property
    def w_shape(self):
        return (self.K, self.Cg, self.R, self.S)

    @property
    def macs(self):
        """Multiply-adds of the forward pass (padding taps counted, as every library does)."""
        return self.N * self.K * self.P * self.Q * self.Cg * self.R * self.S

    def flops(self, pass_="forward"):
        """FLOPs: 2 per MAC per pass. 'backward' = input + weight gradient (bias is negligible)."""
        per = 2 * self.macs
        return {"forward": per, "input": per, "weight": per, "backward": 2 * per,
                "input_weight": 2 * per, "bias": self.N * self.K * self.P * self.Q}[pass_]

    def min_bytes(self, pass_="forward", itemsize=4, banks=1):
        """Bytes a pass must move at least with `banks` filter banks: each tensor it reads or
        writes, once.

        'forward' reads x, w, writes y; 'input' reads dy, w, writes dx; 'weight' reads dy, x,
        writes dw; 'bias' reads dy, writes db; 'backward' (= 'input_weight') both gradients
        (dy, x, w read; dx, dw written)."""
        x = self.N * self.C * self.H * self.W
        y = self.N * self.K * self.P * self.Q
        w = self.K * self.Cg * self.R * self.S * banks
        counts = {"forward": x + w + y, "input": y + w + x, "weight": y + x + w,
                  "bias": y + self.K * banks, "backward": y + 2 * x + 2 * w,
                  "input_weight": y + 2 * x + 2 * w}
        if pass_ not in counts:
            raise ValueError(f"pass_ must be one of {tuple(counts)}, got {pass_!r}")
        return counts[pass_] * itemsize


class ParamCount(NamedTuple):
    neurons: int
    weights_per_neuron: int
    params: int
    bytes: int
