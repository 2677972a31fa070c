"""Float64 NumPy oracle for every op: written to be obviously right, not fast.

Each function loops over the R*S kernel taps; for one tap (r, s) the input pixels that meet the
output grid are a strided slice of the zero-padded input, so every pass is a sum of R*S einsums.
All arithmetic is float64 whatever the input dtype; results are float64.
"""
import numpy as np

from .geometry import ConvGeometry, pair


def _geometry(x_shape, w_shape, stride, padding, dilation):
    N, C, H, W = x_shape
    K, _, R, S = w_shape
    return ConvGeometry.make(N, C, H, W, K, R, S, stride, padding, dilation)


def _tap(g, r, s):
    """Slices of the padded input that tap (r, s) reads for the whole output grid."""
    (sh, sw), (dh, dw) = g.stride, g.dilation
    rows = slice(r * dh, r * dh + sh * (g.P - 1) + 1, sh)
    cols = slice(s * dw, s * dw + sw * (g.Q - 1) + 1, sw)
    return rows, cols


def _pad(x, g):
    ph, pw = g.padding
    return np.pad(np.asarray(x, dtype=np.float64), ((0, 0), (0, 0), (ph, ph), (pw, pw)))


def conv2d(x, weight, bias=None, *, stride=1, padding=0, dilation=1):
    g = _geometry(x.shape, weight.shape, stride, padding, dilation)
    w = np.asarray(weight, dtype=np.float64)
    xp = _pad(x, g)
    y = np.zeros(g.y_shape)
    for r in range(g.R):
        for s in range(g.S):
            rows, cols = _tap(g, r, s)
            y += np.einsum("ncpq,kc->nkpq", xp[:, :, rows, cols], w[:, :, r, s])
    if bias is not None:
        y += np.asarray(bias, dtype=np.float64)[None, :, None, None]
    return y


def conv2d_input_grad(grad_out, x_shape, weight, *, stride=1, padding=0, dilation=1):
    g = _geometry(x_shape, weight.shape, stride, padding, dilation)
    w = np.asarray(weight, dtype=np.float64)
    dy = np.asarray(grad_out, dtype=np.float64)
    ph, pw = g.padding
    dxp = np.zeros((g.N, g.C, g.H + 2 * ph, g.W + 2 * pw))
    for r in range(g.R):
        for s in range(g.S):
            rows, cols = _tap(g, r, s)
            dxp[:, :, rows, cols] += np.einsum("nkpq,kc->ncpq", dy, w[:, :, r, s])
    return dxp[:, :, ph:ph + g.H, pw:pw + g.W]


def conv2d_weight_grad(grad_out, x, w_shape, *, stride=1, padding=0, dilation=1):
    g = _geometry(x.shape, w_shape, stride, padding, dilation)
    dy = np.asarray(grad_out, dtype=np.float64)
    xp = _pad(x, g)
    dw = np.zeros(g.w_shape)
    for r in range(g.R):
        for s in range(g.S):
            rows, cols = _tap(g, r, s)
            dw[:, :, r, s] = np.einsum("nkpq,ncpq->kc", dy, xp[:, :, rows, cols])
    return dw


def conv2d_bias_grad(grad_out):
    return np.asarray(grad_out, dtype=np.float64).sum(axis=(0, 2, 3))


def conv2d_backward(grad_out, x, weight, *, stride=1, padding=0, dilation=1):
    """(input, weight, bias) gradients, float64."""
    kw = dict(stride=stride, padding=padding, dilation=dilation)
    return (conv2d_input_grad(grad_out, x.shape, weight, **kw),
            conv2d_weight_grad(grad_out, x, weight.shape, **kw),
            conv2d_bias_grad(grad_out))
