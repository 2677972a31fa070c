"""Tiled convolution on the GPU: the banked kernels of conv2d.py with the tile (TP, TQ)."""
from .._device import on_device
from .conv2d import bias_grad, forward, input_grad, weight_grad


@on_device
def tiled_conv2d(x, weight, bias, g):
    return forward(x, weight, bias, g, weight.shape[:2])


@on_device
def tiled_conv2d_input_grad(dy, weight, g):
    return input_grad(dy, weight, g, weight.shape[:2])


@on_device
def tiled_conv2d_weight_grad(dy, x, g, tile, out=None, deterministic=False):
    return weight_grad(dy, x, g, tuple(tile), tuple(tile) + g.w_shape, out, deterministic)


@on_device
def tiled_conv2d_bias_grad(dy, tile, out=None):
    return bias_grad(dy, tuple(tile), tuple(tile) + (dy.shape[1],), out)
