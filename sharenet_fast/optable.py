"""The op table: each layer kind declared once (docs/design.md, "The op table").

A layer is a grid of filter banks (K, C, R, S) and sharing sets the grid's size: 1 x 1 (shared),
TP x TQ (tiled), P x Q (locally connected). Everything that differs between the kinds is a field
of its `Layer` below; the public API (api.py), the reference backend, the backends' required
exports, the GPU host side, the CLI, the test registry and the benchmark suite iterate LAYERS.

Every backend exports, per layer and pass, one host function named `<layer><suffix>` with the
same signature for all three layers (g: the kernels' ConvGeometry, grid: the bank grid (TP, TQ)):

    forward       <layer>(x, weight, bias, g, grid) -> y
    input         <layer>_input_grad(dy, weight, g, grid) -> dx
    weight        <layer>_weight_grad(dy, x, g, grid, out=None, deterministic=False) -> dw
    bias          <layer>_bias_grad(dy, g, grid, out=None) -> db
    input_weight  <layer>_input_weight_grad(dy, x, weight, g, grid, out=None,
                                            deterministic=False) -> (dx, dw)    optional

`out=` buffers are C-contiguous and added into. A backend with 16-bit storage (bfloat16 /
float16 in its DTYPES) takes `out_dtype=None` last in every pass (the accumulation dtype to
return instead of the storage dtype); `out=` may then be a float32 master buffer. A kernel is named `<layer>_<kernel>_kernel` with
the pass's kernel tag (conv2d_wgrad_kernel); its host launcher drops the suffix.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Callable

from . import reference as ref


@dataclass(frozen=True)
class Pass:
    name: str          # "forward", "input", ...: the word in needs=, JSON, CLI and tables
    kernel: str        # kernel tag: <layer>_<kernel>_kernel
    suffix: str        # host function: <layer><suffix>
    required: bool     # every backend exports it (else optional: a fused pass)
    doc: str


PASSES = MappingProxyType({p.name: p for p in (
    Pass("forward", "fwd", "", True, "y = the layer applied to x"),
    Pass("input", "dgrad", "_input_grad", True, "dx: the input gradient, from dy and weight"),
    Pass("weight", "wgrad", "_weight_grad", True, "dw: the weight gradient, from dy and x"),
    Pass("bias", "bgrad", "_bias_grad", True, "db: the bias gradient, from dy"),
    Pass("input_weight", "iwgrad", "_input_weight_grad", False,
         "dx and dw in one pass (a local layer then reads its weight stream once)"),
)})
GRADIENTS = ("input", "weight", "bias")      # the backward passes, as needs= names them


@dataclass(frozen=True)
class Layer:
    """One layer kind. Shapes are given in words and, for a geometry and bank grid, as tuples."""

    name: str              # "conv2d": the API function, JSON, CLI
    sharing: str           # "shared": param_count's word for it
    title: str             # a phrase for tables and docs
    grid_words: str        # "1 x 1", "TP x TQ", "P x Q"
    weight_words: str      # "(K, C, R, S)"
    bias_words: str        # "(K,)"
    banked: bool           # weight has the grid as its leading two axes
    reduction: str         # what the weight gradient sums over
    _bank_grid: Callable   # (geometry, tile) -> (TP, TQ): the grid this kind has at g
    _oracle: Callable      # (pass name) -> float64 oracle function (reference.py)

    @property
    def weight_ndim(self):
        return 6 if self.banked else 4

    @property
    def bias_ndim(self):
        return 3 if self.banked else 1

    def grid(self, weight_shape):
        """The bank grid (TP, TQ) a weight of this kind holds: its leading axes if banked."""
        return tuple(weight_shape[:2]) if self.banked else (1, 1)

    def bank_grid(self, g, tile=None):
        """The grid a weight of this kind needs at geometry g: (1, 1) shared, `tile` (TP, TQ)
        tiled, (P, Q) locally connected."""
        return tuple(self._bank_grid(g, tile))

    def weight_shape(self, g, grid):
        return (tuple(grid) if self.banked else ()) + g.w_shape

    def bias_shape(self, g, grid):
        return (tuple(grid) if self.banked else ()) + (g.K,)

    def check_grid(self, g, grid, weight_shape):
        """ValueError if the weight's grid does not fit the output of g."""
        P, Q = g.P, g.Q
        if self.sharing == "local" and tuple(grid) != (P, Q):
            raise ValueError(
                f"{self.name} weight {self.weight_words} must have one bank per output "
                f"position: its grid {tuple(grid)} does not match the output size (P, Q) = "
                f"({P}, {Q}) for x {g.x_shape}, kernel ({g.R}, {g.S}), stride {g.stride}, "
                f"padding {g.padding}, dilation {g.dilation}; weight has shape {weight_shape}")
        if grid[0] > P or grid[1] > Q:
            raise ValueError(
                f"{self.name} tile (TP, TQ) = {tuple(grid)} (weight shape {weight_shape}) is "
                f"larger than the output (P, Q) = ({P}, {Q}) for x {g.x_shape}: a tile class "
                f"would never be used")

    def banks(self, grid):
        return grid[0] * grid[1]

    def export(self, pass_):
        """The host function a backend exports for one pass."""
        return self.name + PASSES[pass_].suffix

    def exports(self, required=True):
        """{pass: function name}: the required passes, or every pass with required=False."""
        return {p.name: self.export(p.name) for p in PASSES.values() if p.required or not required}

    def oracle(self, pass_):
        """The float64 oracle of one pass, with the backend's uniform arguments:
        forward(x, w, b, **kw), input(dy, x_shape, w, **kw), weight(dy, x, w_shape, **kw),
        bias(dy, grid)."""
        return self._oracle(pass_)

    def reference(self, pass_, x, weight, bias=None, grad_out=None, **kw):
        """The float64 oracle of one pass with one signature for every pass: the layer's
        arrays (what a pass does not read may be None; x of the input pass and weight of the
        weight and bias passes may be given as their shapes) and stride/padding/dilation."""
        f, shape = self._oracle(pass_), (lambda a: getattr(a, "shape", a))
        if pass_ == "forward":
            return f(x, weight, bias, **kw)
        if pass_ == "input":
            return f(grad_out, tuple(shape(x)), weight, **kw)
        if pass_ == "weight":
            return f(grad_out, x, tuple(shape(weight)), **kw)
        return f(grad_out, self.grid(shape(weight)))

    def flops(self, g, pass_):
        """FLOPs of a pass (2 per multiply-add; padding taps counted, as every library does)."""
        return g.flops(pass_)

    def bytes(self, g, pass_, itemsize, grid):
        """Bytes a pass must move at least: each tensor it reads or writes, once."""
        return g.min_bytes(pass_, itemsize, self.banks(grid))


def _oracles(forward, input_, weight, bias):
    table = {"forward": forward, "input": input_, "weight": weight, "bias": bias}
    return lambda pass_: table[pass_]


LAYERS = MappingProxyType({spec.name: spec for spec in (
    Layer("conv2d", "shared", "shared conv", "1 x 1", "(K, C, R, S)", "(K,)", False,
          "batch and all P*Q positions of each depth slice",
          lambda g, tile: (1, 1),
          _oracles(ref.conv2d, ref.conv2d_input_grad, ref.conv2d_weight_grad,
                   lambda dy, grid: ref.conv2d_bias_grad(dy))),
    Layer("tiled_conv2d", "tiled", "tiled conv", "TP x TQ", "(TP, TQ, K, C, R, S)",
          "(TP, TQ, K)", True, "batch and the positions of one tile class",
          lambda g, tile: tile,
          _oracles(ref.tiled_conv2d, ref.tiled_conv2d_input_grad, ref.tiled_conv2d_weight_grad,
                   ref.tiled_conv2d_bias_grad)),
    Layer("local2d", "local", "locally connected", "P x Q", "(P, Q, K, C, R, S)", "(P, Q, K)",
          True, "batch only (no cross-position reduction)",
          lambda g, tile: (g.P, g.Q),
          _oracles(ref.local2d, ref.local2d_input_grad, ref.local2d_weight_grad,
                   lambda dy, grid: ref.local2d_bias_grad(dy))),
)})
BY_SHARING = MappingProxyType({spec.sharing: spec for spec in LAYERS.values()})

# The other op every backend exports: soft_sharing_penalty(a, b, strength, grad_a=None,
# grad_b=None) on flat C-contiguous arrays -> the float64 penalty (a 1-element array on a GPU).
PENALTY = "soft_sharing_penalty"
# Optional (a backend without it is refused by the API with a message saying which have it):
# neighbour_penalty(weight, strength, metric, neighbourhood, wrap, grad_weight=None) on a
# C-contiguous banked weight (TP, TQ, K, C, R, S) -> the float64 penalty. The GPU kernels of
# it: numba_cuda/sharing.py and kernels/sharing.cu (every backend exports it).
NEIGHBOUR = "neighbour_penalty"
# Optional too: average_banks(weight, groups_of, out) -> out (may be weight) on C-contiguous
# banked arrays, each block of groups_of = (gp, gq) positions set to its mean.
AVERAGE = "average_banks"


def layers():
    """The op table (read-only): {"conv2d": Layer, "tiled_conv2d": Layer, "local2d": Layer}."""
    return LAYERS


def lookup(name):
    """The Layer for an op name ("local2d") or a sharing word ("local"); ValueError otherwise."""
    spec = LAYERS.get(name) or BY_SHARING.get(name)
    if spec is None:
        raise ValueError(f"layer must be one of {tuple(LAYERS)} (or {tuple(BY_SHARING)}), "
                         f"got {name!r}")
    return spec


def required_exports():
    """Every host function name a backend must export."""
    names = [spec.export(p) for spec in LAYERS.values() for p, pass_ in PASSES.items()
             if pass_.required]
    return tuple(names) + (PENALTY,)
