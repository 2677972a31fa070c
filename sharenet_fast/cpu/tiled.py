"""Tiled 2D convolution on the CPU: a TP x TQ grid of banks, output (p, q) uses [p % TP, q % TQ].

A tiled layer is the shared layer with its positions split into TP*TQ classes, so it runs on the
shared-conv kernels of conv2d.py, which take the tile as a parameter (shared conv is the 1 x 1
tile): the forward pass gathers each output row's patches class by class and multiplies each
class by its bank; the weight gradient adds each class into its own bank of the per-chunk
partials; the input gradient is, with stride 1, a tiled convolution itself (by input class, see
conv2d._input_grad) and otherwise the gather-form kernel with one bank per class of q.
"""
from .conv2d import (_bias_grad, _layer_forward, _layer_input_grad, _weight_grad,
                     native_forward, native_input_grad)


def tiled_conv2d(x, weight, bias, g, grid, out_dtype=None):
    return _layer_forward(x, weight, bias, g, out_dtype)


def tiled_conv2d_input_grad(dy, weight, g, grid, out_dtype=None):
    return _layer_input_grad(dy, weight, g, out_dtype)


def tiled_conv2d_weight_grad(dy, x, g, grid, out=None, deterministic=False):
    """(TP, TQ, K, C, R, S); with `out`, added into it. Always bitwise reproducible."""
    return _weight_grad(dy, x, g, tuple(grid), tuple(grid) + g.w_shape, out)


def tiled_conv2d_bias_grad(dy, g, grid, out=None):
    return _bias_grad(dy, tuple(grid), tuple(grid) + (g.K,), out)
