"""The timed calls: ours and the PyTorch peers, forward and backward, for one suite shape and
one layer kind of the op table (sf.layers(): conv2d, tiled_conv2d with a 2x2 tile, local2d).

Each launcher takes the inputs once and returns a zero-argument function, so the timing loops
(bench/harness.py, behind both python -m bench and the pytest-benchmark suite) time exactly the
op and nothing else.

Peers (docs/design.md, PEERS below): conv2d -> torch.nn.functional.conv2d (oneDNN on the CPU, cuDNN
on a GPU) and aten.convolution_backward; every layer kind -> PyTorch unfold + einsum (the
standard way to write an untied layer in PyTorch; for conv2d, im2col + one matmul), its backward
run by autograd on a graph built once outside the timing; local2d on the CPU -> tf-keras
LocallyConnected2D (implementation 1) and JAX lax.conv_general_dilated_local, each imported on
first use. A peer whose outputs are in another layout (tf-keras: NHWC, its own kernel layout;
JAX: its own kernel layout) carries a `to_ours` that converts them, applied to the warm-up
call's outputs for the check (ours_layout), never inside a timing.
"""
from __future__ import annotations

import importlib.util
import os
from typing import NamedTuple

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
                  deterministic=False, grad_weight=None):
    """(dx, dw, db) of the layer (or the `needs` subset) on one of our backends; with
    `grad_weight`, dw is added into that buffer (which comes back as dw)."""
    bwd = API[layer][1]

    def run():
        return bwd(grad_out, x, weight, stride=shape.stride, padding=shape.padding,
                   backend=backend, needs=needs, deterministic=deterministic,
                   grad_weight=grad_weight)
    return run


# ------------------------------------------------------------------------------------ peers
class Peer(NamedTuple):
    label: str              # how tables name it ({lib}: oneDNN on the CPU, cuDNN on a GPU)
    sharing: tuple          # the layer kinds (op table sharing words) it can express
    devices: tuple          # torch devices it runs on here
    modules: tuple          # what it imports
    forward: object         # (shape, layer, x, weight, bias, device) -> run
    backward: object        # (shape, layer, x, weight, grad_out, bias, device) -> run
    full_only: bool = False     # slow: timed by python -m bench --full only
    install: str = "pip install torch==2.13.0"
    backward_max_weight: int = 0    # bytes: a larger weight's backward is not timed (0: any)
    max_weight: int = 0             # bytes: a larger weight is not timed at all (0: any)
    dtypes: tuple = ("float32",)    # the storage dtypes it is timed in


# tf-keras's backward of LocallyConnected2D at alexnet_conv1 (a 422 MB weight) peaked at 17.8 GB
# of memory and took 120 s to build its graph (4.1 s a call): with the run's other buffers it
# was killed for memory on a 24 GB machine. Its backward is timed up to this weight size.
TF_KERAS_BACKWARD_MAX_WEIGHT = 64 * 2**20
# At vgg_3x3 (a 441 MiB weight, batch 16) the --full run with the tf-keras and JAX peers was
# killed for memory on the 24 GB VM as well; they are timed up to alexnet_conv1's 402 MiB.
LOCAL_PEER_MAX_WEIGHT = 416 * 2**20


def skipped(impl, pass_, weight_bytes):
    """Why a peer's pass is not timed at this weight size, or None."""
    peer = PEERS.get(impl)
    if peer is None:
        return None
    if peer.max_weight and weight_bytes > peer.max_weight:
        return (f"{impl} {pass_} not timed: weight {weight_bytes / 2**20:.0f} MiB > "
                f"{peer.max_weight / 2**20:.0f} MiB (the run ran out of memory with it)")
    limit = peer.backward_max_weight
    if pass_ == "backward" and limit and weight_bytes > limit:
        return (f"{impl} backward not timed: weight {weight_bytes / 2**20:.0f} MiB > "
                f"{limit / 2**20:.0f} MiB (its graph needs ~40x the weight in memory)")
    return None


def peer_names(layer, device="cpu", full=True, dtype="float32"):
    """The installed peers of a layer kind on a device that take `dtype`, in timing order
    (without `full`: the quick run's, the slow ones left out)."""
    sharing = SPECS[layer].sharing
    return tuple(name for name, p in PEERS.items()
                 if sharing in p.sharing and device in p.devices and installed(name)
                 and (full or not p.full_only) and dtype in p.dtypes)


def installed(impl):
    """Whether the peer's packages are installed (found, not imported: TensorFlow takes
    seconds to import)."""
    if PEERS[impl].modules == ("torch",):
        return torch is not None
    return all(importlib.util.find_spec(m) is not None for m in PEERS[impl].modules)


def missing_peers(layers, device="cpu"):
    """{peer: why it is not timed} for the peers of `layers` on `device` not installed."""
    sharing = {SPECS[layer].sharing for layer in layers}
    return {name: f"not installed ({p.install})" for name, p in PEERS.items()
            if sharing & set(p.sharing) and device in p.devices and not installed(name)}


def peer_label(impl, device="cpu"):
    return PEERS[impl].label.format(lib="cuDNN" if device == "cuda" else "oneDNN")


def converted(run, to_ours):
    """`run`, carrying to_ours(outputs) -> the outputs in our layouts (ours_layout)."""
    run.to_ours = to_ours
    return run


def ours_layout(run, outs):
    """A launcher's host outputs (a tuple of NumPy arrays) in our layouts: NCHW activations,
    weights (P, Q, K, C, R, S), biases (P, Q, K)."""
    to_ours = getattr(run, "to_ours", None)
    return tuple(to_ours(outs)) if to_ours is not None else outs


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


def to_torch(a):
    """A NumPy array as a tensor sharing its memory; ml_dtypes' bfloat16 through its bits."""
    if a.dtype.name == "bfloat16":
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)


def from_torch(t):
    """A (CPU) tensor as a NumPy array; bfloat16 as ml_dtypes' bfloat16."""
    t = t.detach()
    if t.dtype == torch.bfloat16:
        import ml_dtypes

        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


def _tensors(device, *arrays):
    return tuple(to_torch(a).to(device) for a in arrays)


def torch_forward(shape, layer, x, weight, bias, device="cpu", impl=None):
    """y of the PyTorch peer `impl` (default: torch conv2d for conv2d, unfold+einsum
    otherwise)."""
    impl = impl or _torch_peers(layer)[0]
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
    impl = impl or _torch_peers(layer)[0]
    if impl == "torch-conv2d":
        xt, wt, dyt = _tensors(device, x, weight, grad_out)
        st, pd = [shape.stride] * 2, [shape.padding] * 2

        def run():
            return torch.ops.aten.convolution_backward(
                dyt, xt, wt, [shape.K], st, pd, [1, 1], False, [0, 0], 1, [True, True, True])
        return run
    b = bias if bias is not None else np.zeros(weight.shape[:-3], weight.dtype)
    xt, wt, bt = (t.requires_grad_() for t in _tensors(device, x, weight, b))
    (dyt,) = _tensors(device, grad_out)
    y = _torch_untied(shape, layer, xt, wt, bt)

    def run():
        return torch.autograd.grad(y, (xt, wt, bt), dyt, retain_graph=True)
    return run


def _torch_peers(layer):
    return tuple(n for n in ("torch-conv2d", "torch-unfold")
                 if SPECS[layer].sharing in PEERS[n].sharing)


# ------------------------------------------------------------- the local layer's other peers
def _threads():
    import numba

    return numba.get_num_threads()


_tf = None


def _tensorflow():
    """TensorFlow, imported on first use, its intra-op pool as wide as ours (numba's thread
    count) so the comparison is core for core; its log quiet."""
    global _tf
    if _tf is None:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import tensorflow as tf

        try:        # only before TensorFlow's runtime starts (it has if the caller ran an op)
            tf.config.threading.set_intra_op_parallelism_threads(_threads())
        except RuntimeError:
            pass
        _tf = tf
    return _tf


def _tf_keras_local(shape, weight, bias):
    """(layer, pad): a tf-keras LocallyConnected2D (implementation 1, channels_last) holding
    our weights, and the ZeroPadding2D in front of it (the layer itself pads only 'valid').

    Its kernel is (P*Q, R*S*C, K): row p*Q + q is position (p, q) (it walks the outputs in
    row-major order) and a position's R x S x C input patch (NHWC) is flattened (r, s, c); so
    kernel = ours (P, Q, K, C, R, S) transposed to (P, Q, R, S, C, K) and reshaped. Its bias is
    (P, Q, K), ours as it is."""
    _tensorflow()
    import tf_keras

    P, Q, K, C, R, S = weight.shape
    layer = tf_keras.layers.LocallyConnected2D(K, (R, S), strides=shape.stride,
                                               implementation=1, data_format="channels_last")
    pad = tf_keras.layers.ZeroPadding2D(shape.padding)
    p2 = 2 * shape.padding
    layer.build((shape.N, shape.H + p2, shape.W + p2, C))
    layer.set_weights([weight.transpose(0, 1, 4, 5, 3, 2).reshape(P * Q, R * S * C, K), bias])
    return layer, pad


def _nhwc(a):
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1))


def _nchw(a):
    return np.ascontiguousarray(a.transpose(0, 3, 1, 2))


def tf_keras_forward(shape, layer, x, weight, bias, device="cpu"):
    """y of tf-keras LocallyConnected2D on x in its layout (NHWC, converted once, outside the
    timing), as one tf.function (a graph: the layer's per-position slices in eager mode would
    time Python)."""
    tf = _tensorflow()
    lc, pad = _tf_keras_local(shape, weight, bias)
    xt = tf.constant(_nhwc(x))
    fwd = tf.function(lambda x: lc(pad(x)))

    def run():
        return fwd(xt)
    return converted(run, lambda outs: (_nchw(outs[0]),))


def tf_keras_backward(shape, layer, x, weight, grad_out, bias=None, device="cpu"):
    """(dx, dw, db) of tf-keras LocallyConnected2D: a GradientTape in one tf.function, the
    output gradient given (its forward, which the tape records, runs too: TensorFlow has no
    backward without one; the matmul whose output nothing reads is pruned from the graph)."""
    tf = _tensorflow()
    b = bias if bias is not None else np.zeros(weight.shape[:3], np.float32)
    lc, pad = _tf_keras_local(shape, weight, b)
    xt, dyt = tf.constant(_nhwc(x)), tf.constant(_nhwc(grad_out))

    @tf.function
    def bwd(x, dy):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = lc(pad(x))
        return tape.gradient(y, [x, lc.kernel, lc.bias], output_gradients=dy)

    P, Q, K, C, R, S = weight.shape

    def to_ours(outs):
        dx, dk, db = outs
        return (_nchw(dx),
                np.ascontiguousarray(dk.reshape(P, Q, R, S, C, K).transpose(0, 1, 5, 4, 2, 3)),
                db)

    def run():
        return bwd(xt, dyt)
    return converted(run, to_ours)


_jax_mod = None


def _jax():
    """jax on the CPU, imported on first use (x64 off, its default: float32 as ours)."""
    global _jax_mod
    if _jax_mod is None:
        os.environ.setdefault("JAX_PLATFORMS", "cpu")      # no probing for GPU plugins
        import jax

        _jax_mod = jax
    return _jax_mod


def _jax_local(shape, weight, bias):
    """(f(x, rhs, b) -> y, rhs, b) with lax.conv_general_dilated_local in NCHW / OIHW / NCHW.

    Its rhs is (K, C*R*S, P, Q) for OIHW: O = K, the spatial dims are the OUTPUT position, and
    I fuses the input channel with the filter window in the order C, then the rhs spec's
    spatial letters (H, W), i.e. (c, r, s): ours (P, Q, K, C, R, S) -> (P, Q, K, C*R*S) ->
    transposed (2, 3, 0, 1). Bias: ours (P, Q, K) as (1, K, P, Q), added."""
    jax = _jax()
    from jax import lax

    P, Q, K, C, R, S = weight.shape
    st, pd = shape.stride, shape.padding

    def f(x, rhs, b):
        y = lax.conv_general_dilated_local(
            x, rhs, (st, st), [(pd, pd), (pd, pd)], (R, S),
            dimension_numbers=("NCHW", "OIHW", "NCHW"), precision=lax.Precision.HIGHEST)
        return y + b

    rhs = np.ascontiguousarray(weight.reshape(P, Q, K, C * R * S).transpose(2, 3, 0, 1))
    b = np.ascontiguousarray(bias.transpose(2, 0, 1)[None])
    return f, jax.device_put(rhs), jax.device_put(b)


def jax_forward(shape, layer, x, weight, bias, device="cpu"):
    """y of lax.conv_general_dilated_local, jax.jit compiled (in the warm-up call), waited for
    (block_until_ready) in the timing."""
    jax = _jax()
    f, rhs, b = _jax_local(shape, weight, bias)
    fwd, xj = jax.jit(f), jax.device_put(x)

    def run():
        return fwd(xj, rhs, b).block_until_ready()
    return run


def jax_backward(shape, layer, x, weight, grad_out, bias=None, device="cpu"):
    """(dx, dw, db) of lax.conv_general_dilated_local by jax.vjp, jitted (XLA drops the part of
    the forward the gradients do not need), waited for in the timing."""
    jax = _jax()
    bias = bias if bias is not None else np.zeros(weight.shape[:3], np.float32)
    f, rhs, b = _jax_local(shape, weight, bias)
    bwd = jax.jit(lambda x, rhs, b, dy: jax.vjp(f, x, rhs, b)[1](dy))
    xj, dyj = jax.device_put(x), jax.device_put(grad_out)
    P, Q, K, C, R, S = weight.shape

    def to_ours(outs):
        dx, drhs, db = outs
        return (dx, np.ascontiguousarray(drhs.reshape(K, C, R, S, P, Q)
                                         .transpose(4, 5, 0, 1, 2, 3)),
                np.ascontiguousarray(db[0].transpose(1, 2, 0)))

    def run():
        return jax.block_until_ready(bwd(xj, rhs, b, dyj))
    return converted(run, to_ours)


ALL = ("shared", "tiled", "local")
PEERS = {
    # PyTorch takes bfloat16 too (oneDNN's bf16 convolution on CPUs with AVX512_BF16)
    "torch-conv2d": Peer("PyTorch conv2d ({lib})", ("shared",), ("cpu", "cuda"), ("torch",),
                         lambda *a: torch_forward(*a, impl="torch-conv2d"),
                         lambda *a: torch_backward(*a, impl="torch-conv2d"),
                         dtypes=("float32", "bfloat16")),
    "torch-unfold": Peer("PyTorch unfold+einsum", ALL, ("cpu", "cuda"), ("torch",),
                         lambda *a: torch_forward(*a, impl="torch-unfold"),
                         lambda *a: torch_backward(*a, impl="torch-unfold"),
                         dtypes=("float32", "bfloat16")),
    "tf-keras": Peer("tf-keras LocallyConnected2D", ("local",), ("cpu",),
                     ("tensorflow", "tf_keras"), tf_keras_forward, tf_keras_backward,
                     full_only=True, install="pip install -e '.[peers]'",
                     backward_max_weight=TF_KERAS_BACKWARD_MAX_WEIGHT,
                     max_weight=LOCAL_PEER_MAX_WEIGHT),
    "jax": Peer("JAX conv_general_dilated_local", ("local",), ("cpu",), ("jax",),
                jax_forward, jax_backward, full_only=True, install="pip install -e '.[peers]'",
                max_weight=LOCAL_PEER_MAX_WEIGHT),
    # the soft-sharing penalty's peer (torch_penalty): a pass, not a layer
    "torch-eager": Peer("PyTorch eager", (), ("cpu", "cuda"), ("torch",), None, None,
                        dtypes=("float32", "bfloat16")),
}


def peers(shape, layer, x, weight, bias, grad_out, device="cpu"):
    """{impl: (forward, backward)} of every installed peer of the layer on the device."""
    return {impl: (PEERS[impl].forward(shape, layer, x, weight, bias, device),
                   PEERS[impl].backward(shape, layer, x, weight, grad_out, bias, device))
            for impl in peer_names(layer, device)}


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
    return tuple(spec.reference(p, x, weight, bias, grad_out, **kw)
                 for p in ("forward", "input", "weight", "bias"))


# -------------------------------------------------------------------------- soft sharing
PENALTY_STRENGTH = 1e-3


def penalty_inputs(weight):
    """(a, b, grad_a, grad_b) for the soft-sharing benchmark: a locally connected layer's banks
    and their mean bank broadcast to the same shape (the pull toward the shared filter), and
    two gradient buffers the penalty adds into (random, never zeros)."""
    rng = np.random.default_rng(2)
    mean = weight.astype(np.float32).mean(axis=(0, 1)).astype(weight.dtype)
    b = np.ascontiguousarray(np.broadcast_to(mean, weight.shape))
    ga = rng.standard_normal(weight.shape, dtype=np.float32).astype(weight.dtype)
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
