"""The timed calls: ours and the PyTorch peer, forward and backward, for one suite shape.

Each launcher takes the inputs once and returns a zero-argument function, so the timing loops
(pytest-benchmark and bench/report.py) time exactly the op and nothing else.
"""
from __future__ import annotations

import numpy as np

import sharenet_fast as sf

try:
    import torch
except ImportError:  # the peer is optional: report.py prints "-" and bench_conv2d.py skips
    torch = None


# ------------------------------------------------------------------------------------- ours
def ours_forward(shape, x, weight, bias):
    """y = conv2d(x, weight, bias) on the Numba CPU backend."""
    def run():
        return sf.conv2d(x, weight, bias, stride=shape.stride, padding=shape.padding,
                         backend="cpu")
    return run


def ours_backward(shape, x, weight, grad_out):
    """(dx, dw, db) = conv2d_backward(grad_out, x, weight) on the Numba CPU backend."""
    def run():
        return sf.conv2d_backward(grad_out, x, weight, stride=shape.stride,
                                  padding=shape.padding, backend="cpu")
    return run


# ------------------------------------------------------------------------------------- peer
def torch_forward(shape, x, weight, bias):
    """torch.nn.functional.conv2d (oneDNN on the CPU) under no_grad."""
    xt, wt, bt = (torch.from_numpy(a) for a in (x, weight, bias))

    def run():
        with torch.no_grad():
            return torch.nn.functional.conv2d(xt, wt, bt, stride=shape.stride,
                                              padding=shape.padding)
    return run


def torch_backward(shape, x, weight, grad_out):
    """aten.convolution_backward: the input, weight and bias gradients, no forward inside."""
    xt, wt, dyt = (torch.from_numpy(a) for a in (x, weight, grad_out))
    st, pd = [shape.stride] * 2, [shape.padding] * 2

    def run():
        return torch.ops.aten.convolution_backward(
            dyt, xt, wt, [shape.K], st, pd, [1, 1], False, [0, 0], 1, [True, True, True])
    return run


# -------------------------------------------------------------------------------- reference
def reference(shape, x, weight, bias, grad_out):
    """float64 (y, dx, dw, db): PyTorch when installed, else the package's NumPy oracle."""
    kw = dict(stride=shape.stride, padding=shape.padding)
    if torch is not None:
        xt, wt, bt, dyt = (torch.from_numpy(a.astype(np.float64))
                           for a in (x, weight, bias, grad_out))
        y = torch.nn.functional.conv2d(xt, wt, bt, **kw)
        dx, dw, db = torch.ops.aten.convolution_backward(
            dyt, xt, wt, [shape.K], [shape.stride] * 2, [shape.padding] * 2, [1, 1], False,
            [0, 0], 1, [True, True, True])
        return tuple(t.numpy() for t in (y, dx, dw, db))
    from sharenet_fast import reference as ref
    dx, dw, db = ref.conv2d_backward(grad_out, x, weight, **kw)
    return ref.conv2d(x, weight, bias, **kw), dx, dw, db
