"""The benchmark suite as data: name -> ConvShape, plus inputs and geometry for a shape.

Shapes are float32 and come from docs/design.md ("Benchmarks"):

    alexnet_conv1  x 8x3x227x227,   96 filters 11x11, stride 4   (the cs231n seed example)
    deepface_l4    x 8x16x63x63,    16 filters 9x9               (a real locally-connected layer)
    vgg_3x3        x 16x64x56x56,   64 filters 3x3, pad 1
    cifar_5x5      x 32x16x32x32,   32 filters 5x5, pad 2
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from sharenet_fast.geometry import ConvGeometry


class ConvShape(NamedTuple):
    N: int
    C: int
    H: int
    W: int
    K: int
    R: int
    S: int
    stride: int = 1
    padding: int = 0

    def with_batch(self, n):
        """The same layer with batch size n."""
        return self._replace(N=n)

    def shrunk(self, n, grid):
        """The same layer with batch n and the input cut so the output is at most grid x grid
        (smoke runs: a local layer's weights grow with the output grid)."""
        g = geometry(self)
        P, Q = min(g.P, grid), min(g.Q, grid)
        H = (P - 1) * self.stride + (self.R - 1) + 1 - 2 * self.padding
        W = (Q - 1) * self.stride + (self.S - 1) + 1 - 2 * self.padding
        return self._replace(N=n, H=max(H, 1), W=max(W, 1))

    def describe(self):
        """'8x3x227x227 * 96x3x11x11, stride 4, pad 0'."""
        return (f"{self.N}x{self.C}x{self.H}x{self.W} * {self.K}x{self.C}x{self.R}x{self.S}, "
                f"stride {self.stride}, pad {self.padding}")


SUITE = {
    "alexnet_conv1": ConvShape(8, 3, 227, 227, 96, 11, 11, stride=4, padding=0),
    "deepface_l4": ConvShape(8, 16, 63, 63, 16, 9, 9, stride=1, padding=0),
    "vgg_3x3": ConvShape(16, 64, 56, 56, 64, 3, 3, stride=1, padding=1),
    "cifar_5x5": ConvShape(32, 16, 32, 32, 32, 5, 5, stride=1, padding=2),
}


def geometry(shape: ConvShape) -> ConvGeometry:
    """The kernels' ConvGeometry of a shape (the op table's flops and bytes take it)."""
    return ConvGeometry.make(*shape)


def make_inputs(shape: ConvShape, dtype=np.float32, seed=0):
    """Random (x, weight, bias, grad_out) for a shape, never zeros.

    Weights are scaled by 1/sqrt(C*R*S) so outputs stay O(1) whatever the layer size.
    """
    rng = np.random.default_rng(seed)
    g = geometry(shape)
    x = rng.standard_normal(g.x_shape).astype(dtype)
    weight = (rng.standard_normal(g.w_shape) / np.sqrt(g.C * g.R * g.S)).astype(dtype)
    bias = rng.standard_normal(g.K).astype(dtype)
    grad_out = rng.standard_normal(g.y_shape).astype(dtype)
    return x, weight, bias, grad_out

