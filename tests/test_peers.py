"""The local layer's framework peers of `python -m bench` (bench/ops.py): tf-keras
LocallyConnected2D and JAX conv_general_dilated_local compute the same layer as sf.local2d
(forward) and sf.local2d_backward (input, weight and bias gradients) once their outputs are
brought to our layouts, on a small random layer with stride and padding. Each test skips where
its peer is not installed (pip install -e ".[peers]")."""
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import sharenet_fast as sf  # noqa: E402
from bench import ops  # noqa: E402
from bench.shapes import ConvShape, geometry, make_inputs  # noqa: E402
from sharenet_fast import dtypes  # noqa: E402

# C != K, R != S, H != W, stride 2, padding 1: a transposed axis in a layout would show
SHAPE = ConvShape(N=2, C=3, H=11, W=9, K=5, R=3, S=2, stride=2, padding=1)
MODULES = {"tf-keras": ("tensorflow", "tf_keras"), "jax": ("jax",)}


@pytest.fixture(scope="module")
def layer():
    g = geometry(SHAPE)
    x, w, b, _ = make_inputs(SHAPE)
    weight, bias = ops.layer_params("local2d", w, b, g)
    dy = np.random.default_rng(4).standard_normal(g.y_shape).astype(np.float32)
    kw = dict(stride=SHAPE.stride, padding=SHAPE.padding, backend="cpu")
    ours = (sf.local2d(x, weight, bias, **kw), *sf.local2d_backward(dy, x, weight, **kw))
    return x, weight, bias, dy, ours


def _run(run):
    """The launcher's outputs as the benchmark checks them: on the host, in our layouts."""
    out = run()
    out = out if isinstance(out, (tuple, list)) else (out,)
    return ops.ours_layout(run, tuple(np.asarray(o) for o in out))


@pytest.mark.parametrize("impl", sorted(MODULES))
def test_peer_computes_our_layer(impl, layer):
    for module in MODULES[impl]:
        pytest.importorskip(module)
    assert ops.PEERS[impl].modules == MODULES[impl] and ops.installed(impl)
    assert impl in ops.peer_names("local2d") and impl not in ops.peer_names("local2d",
                                                                             full=False)
    assert impl not in ops.peer_names("conv2d") + ops.peer_names("local2d", "cuda")
    x, weight, bias, dy, ours = layer
    peer = ops.PEERS[impl]
    (y,) = _run(peer.forward(SHAPE, "local2d", x, weight, bias, "cpu"))
    assert y.shape == ours[0].shape and dtypes.rel_err(y, ours[0]) <= 1e-4
    grads = _run(peer.backward(SHAPE, "local2d", x, weight, dy, bias, "cpu"))
    for name, got, want in zip(("input", "weight", "bias"), grads, ours[1:]):
        assert got.shape == want.shape, (impl, name)
        assert dtypes.rel_err(got, want) <= 1e-4, (impl, name)


def test_missing_peers_say_how_to_install(monkeypatch):
    """A peer not installed is left out of the plan and named with its install command."""
    real = ops.importlib.util.find_spec
    monkeypatch.setattr(ops.importlib.util, "find_spec",
                        lambda name, *a: None if name in ("jax", "tf_keras") else real(name, *a))
    assert "jax" not in ops.peer_names("local2d") and "tf-keras" not in ops.peer_names("local2d")
    missing = ops.missing_peers(["local2d"])
    assert set(missing) == {"jax", "tf-keras"}
    assert all("pip install -e '.[peers]'" in why for why in missing.values())
    assert ops.missing_peers(["conv2d"]) == {}        # neither expresses a shared conv
