"""The timed calls: ours and the PyTorch peers, forward and backward, for one suite shape and
one layer kind of the op table (sf.layers(): conv2d, tiled_conv2d with a 2x2 tile, local2d).

Each launcher takes the inputs once and returns a zero-argument function, so the timing loops
(bench/harness.py, behind both python -m bench and the pytest-benchmark suite) time exactly the
op and nothing else.

Peers (DESIGN.md): conv2d -> torch.nn.functional.conv2d (oneDNN on the CPU, cuDNN on a GPU) and
aten.convolution_backward; every layer kind -> PyTorch unfold + einsum (the standard way to
write an untied layer in PyTorch; for conv2d, im2col + one matmul), its backward run by
autograd on a graph built once outside the timing.
"""
from __future__ import annotations

import numpy as np

import sharenet_fast as sf
from bench.shapes import geometry

try:
    import torch
except ImportError:  # the peer is optional: report.py prints "-" and the bench tests skip
    torch = None

SPECS = sf.layers()
LAYERS = tuple(SPECS)                       # op names: conv2d, tiled_conv2d, local2d
TILE = (2, 2)                               # the bank grid of a layer kind that takes any grid
API = {name: (getattr(sf, name), getattr(sf, name + "_backward")) for name in LAYERS}


def layer_name(word):
    """The op name for an op name or a sharing word ("local" -> "local2d"); ValueError else."""
    from sharenet_fast import optable

    return optable.lookup(word).name


def grid(layer, g, tile=TILE):
    """Bank grid of a layer kind for geometry g (the op table's bank_grid, `tile` for a tiled
    layer); a tile larger than the output falls back to one bank per output position."""
    want = SPECS[layer].bank_grid(g, tuple(tile))
    if want[0] > g.P or want[1] > g.Q:      # a tile larger than the output: a bank per position
        want = (g.P, g.Q)
    return want


def layer_params(layer, weight, bias, g, seed=1):
    """(weight, bias) shaped for the layer (the op table's weight and bias shapes). An unbanked
    weight is the suite's bank; banked ones are fresh banks, scaled like it (1/sqrt(C*R*S)),
    never zeros."""
    spec = SPECS[layer]
    if not spec.banked:
        return weight, bias
    rng = np.random.default_rng(seed)
    gr = grid(layer, g)
    w = rng.standard_normal(spec.weight_shape(g, gr), dtype=np.float32)
    w *= np.float32(1 / np.sqrt(g.C * g.R * g.S))
    b = rng.standard_normal(spec.bias_shape(g, gr), dtype=np.float32)
    return w, b


# ------------------------------------------------------------------------------------- ours
def ours_forward(shape, layer, x, weight, bias, backend="cpu"):
    fwd = API[layer][0]

    def run():
        return fwd(x, weight, bias, stride=shape.stride, padding=shape.padding, backend=backend)
    return run


def ours_backward(shape, layer, x, weight, grad_out, backend="cpu", needs=("input", "weight",
                                                                          "bias"),
                  deterministic=False):
    """(dx, dw, db) of the layer (or the `needs` subset) on one of our backends."""
    bwd = API[layer][1]

    def run():
        return bwd(grad_out, x, weight, stride=shape.stride, padding=shape.padding,
                   backend=backend, needs=needs, deterministic=deterministic)
    return run


# ------------------------------------------------------------------------------------ peers
def peer_names(layer):
    """The PyTorch peers of a layer kind: torch conv2d (oneDNN / cuDNN) exists only for the
    shared layer; unfold + einsum (im2col + a batched matmul) can express all three."""
    shared = SPECS[layer].sharing == "shared"
    return ("torch-conv2d", "torch-unfold") if shared else ("torch-unfold",)


def peer_label(impl, device="cpu"):
    lib = "cuDNN" if device == "cuda" else "oneDNN"
    return {"torch-conv2d": f"PyTorch conv2d ({lib})",
            "torch-unfold": "PyTorch unfold+einsum", "torch-eager": "PyTorch eager"}[impl]


def _torch_untied(shape, layer, xt, wt, bt):
    """y of a layer in PyTorch: unfold (im2col), then einsum per bank (an unbanked weight is the
    1x1 grid); with a bank per output position, one batched einsum."""
    if not SPECS[layer].banked:
        wt, bt = wt[None, None], bt[None, None]
    N, C, K, R, S = shape.N, shape.C, shape.K, shape.R, shape.S
    cols = torch.nn.functional.unfold(xt, (R, S), stride=shape.stride, padding=shape.padding)
    g = geometry(shape)
    P, Q = g.P, g.Q
    if SPECS[layer].sharing == "local":
        y = torch.einsum("ntl,lkt->nkl", cols, wt.reshape(P * Q, K, C * R * S))
        return y.reshape(N, K, P, Q) + bt.permute(2, 0, 1)
    TP, TQ = wt.shape[:2]
    cols = cols.reshape(N, C * R * S, P, Q)
    y = xt.new_empty((N, K, P, Q))
    for tp in range(TP):
        for tq in range(TQ):
            y[:, :, tp::TP, tq::TQ] = torch.einsum(
                "ntpq,kt->nkpq", cols[:, :, tp::TP, tq::TQ],
                wt[tp, tq].reshape(K, C * R * S)) + bt[tp, tq][None, :, None, None]
    return y


def _tensors(device, *arrays):
    return tuple(torch.from_numpy(a).to(device) for a in arrays)


def torch_forward(shape, layer, x, weight, bias, device="cpu", impl=None):
    """y of the peer `impl` (default: torch conv2d for conv2d, unfold+einsum otherwise)."""
    impl = impl or peer_names(layer)[0]
    xt, wt, bt = _tensors(device, x, weight, bias)
    if impl == "torch-conv2d":
        def run():
            with torch.no_grad():
                return torch.nn.functional.conv2d(xt, wt, bt, stride=shape.stride,
                                                  padding=shape.padding)
        return run

    def run():
        with torch.no_grad():
            return _torch_untied(shape, layer, xt, wt, bt)
    return run


def torch_backward(shape, layer, x, weight, grad_out, bias=None, device="cpu", impl=None):
    """conv2d: aten.convolution_backward (no forward inside). unfold+einsum: autograd backward
    on a graph built once (retain_graph), so only the backward is timed."""
    impl = impl or peer_names(layer)[0]
    if impl == "torch-conv2d":
        xt, wt, dyt = _tensors(device, x, weight, grad_out)
        st, pd = [shape.stride] * 2, [shape.padding] * 2

        def run():
            return torch.ops.aten.convolution_backward(
                dyt, xt, wt, [shape.K], st, pd, [1, 1], False, [0, 0], 1, [True, True, True])
        return run
    b = bias if bias is not None else np.zeros(weight.shape[:-3], np.float32)
    xt, wt, bt = (t.requires_grad_() for t in _tensors(device, x, weight, b))
    (dyt,) = _tensors(device, grad_out)
    y = _torch_untied(shape, layer, xt, wt, bt)

    def run():
        return torch.autograd.grad(y, (xt, wt, bt), dyt, retain_graph=True)
    return run


def peers(shape, layer, x, weight, bias, grad_out, device="cpu"):
    """{impl: (forward, backward)} of every PyTorch peer of the layer ({} without PyTorch)."""
    if torch is None:
        return {}
    return {impl: (torch_forward(shape, layer, x, weight, bias, device, impl),
                   torch_backward(shape, layer, x, weight, grad_out, bias, device, impl))
            for impl in peer_names(layer)}


# -------------------------------------------------------------------------------- reference
def reference(shape, layer, x, weight, bias, grad_out):
    """float64 (y, dx, dw, db): the op table's NumPy oracle (PyTorch in float64 for the shared
    layer where it is installed: the same numbers, much sooner at full size)."""
    kw = dict(stride=shape.stride, padding=shape.padding)
    spec = SPECS[layer]
    if spec.sharing == "shared" and torch is not None:
        xt, wt, bt, dyt = (torch.from_numpy(a.astype(np.float64))
                           for a in (x, weight, bias, grad_out))
        y = torch.nn.functional.conv2d(xt, wt, bt, **kw)
        dx, dw, db = torch.ops.aten.convolution_backward(
            dyt, xt, wt, [shape.K], [shape.stride] * 2, [shape.padding] * 2, [1, 1], False,
            [0, 0], 1, [True, True, True])
        return tuple(t.numpy() for t in (y, dx, dw, db))
    oracle = spec.oracle
    return (oracle("forward")(x, weight, bias, **kw),
            oracle("input")(grad_out, x.shape, weight, **kw),
            oracle("weight")(grad_out, x, weight.shape, **kw),
            oracle("bias")(grad_out, grid(layer, geometry(shape))))


# -------------------------------------------------------------------------- soft sharing
PENALTY_STRENGTH = 1e-3


def penalty_inputs(weight):
    """(a, b, grad_a, grad_b) for the soft-sharing benchmark: a locally connected layer's banks
    and their mean bank broadcast to the same shape (the pull toward the shared filter), and
    two gradient buffers the penalty adds into (random, never zeros)."""
    rng = np.random.default_rng(2)
    b = np.ascontiguousarray(np.broadcast_to(weight.mean(axis=(0, 1)), weight.shape))
    ga = rng.standard_normal(weight.shape, dtype=np.float32)
    return weight, b, ga, ga[::-1].copy()


def ours_penalty(a, b, grad_a, grad_b, backend="cpu"):
    def run():
        return sf.soft_sharing_penalty(a, b, PENALTY_STRENGTH, grad_a=grad_a, grad_b=grad_b,
                                       backend=backend)
    return run


def torch_penalty(a, b, grad_a, grad_b, device="cpu"):
    """The same in eager PyTorch: the difference, a reduction and two in-place updates (four
    passes over memory, each stream read or written by its own kernel)."""
    at, bt, gat, gbt = _tensors(device, a, b, grad_a, grad_b)

    def run():
        d = at - bt
        p = 0.5 * PENALTY_STRENGTH * torch.sum(d * d, dtype=torch.float64)
        gat.add_(d, alpha=PENALTY_STRENGTH)
        gbt.sub_(d, alpha=PENALTY_STRENGTH)
        return p
    return run
