"""Locally connected layer on the GPU: the banked kernels of conv2d.py with the P x Q tile.

With one position per tile class the kernels take the shape the layer wants: the forward
pass reads each bank once for the whole batch (a block's columns are the N images of one
position, N <= BN), and the weight gradient reduces over the batch only, in one chunk per
position, so each block owns its weights and adds them without atomics (owner-computes).
"""
from .._device import on_device
from .conv2d import bias_grad, forward, input_grad, weight_grad


@on_device
def local2d(x, weight, bias, g):
    return forward(x, weight, bias, g, (g.P, g.Q))


@on_device
def local2d_input_grad(dy, weight, g):
    return input_grad(dy, weight, g, (g.P, g.Q))


@on_device
def local2d_weight_grad(dy, x, g, out=None, deterministic=False):
    return weight_grad(dy, x, g, (g.P, g.Q), (g.P, g.Q) + g.w_shape, out, deterministic)


@on_device
def local2d_bias_grad(dy, out=None):
    return bias_grad(dy, dy.shape[2:], dy.shape[2:] + (dy.shape[1],), out)
