"""experiments/digits.py (python -m experiments.digits): the sharing experiment is
deterministic, counts parameters right, trains, and its hand-written backward pass is the
derivative of its loss."""
import os
import sys

import numpy as np
import pytest

pytest.importorskip("sklearn")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from experiments import digits  # noqa: E402


def test_shift_moves_pixels_and_fills_zeros():
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4) + 1
    right = digits.shift(x, 0, 1)
    np.testing.assert_array_equal(right[0, 0, :, 1:], x[0, 0, :, :3])
    assert (right[0, 0, :, 0] == 0).all()
    up = digits.shift(x, -2, 0)
    np.testing.assert_array_equal(up[0, 0, :2], x[0, 0, 2:])
    assert (up[0, 0, 2:] == 0).all()


def test_experiment_is_deterministic_and_counts_parameters():
    kw = dict(seeds=1, epochs=4, strengths=(1.0,), log=lambda *a: None)
    first, second = digits.run(**kw), digits.run(**kw)
    for a, b in zip(first["runs"], second["runs"]):
        assert a["losses"] == b["losses"] and a["accuracy"] == b["accuracy"], a["name"]
    s = first["summary"]
    assert [s[k]["first_layer_params"] for k in ("shared", "tiled", "local", "soft 1")] == [
        16 * 9 + 16, 4 * (16 * 9 + 16), 64 * (16 * 9 + 16), 64 * (16 * 9 + 16)]
    for r in first["runs"]:
        assert r["losses"][-1] < r["losses"][0], r["name"]            # it trains
        assert all(0 <= a <= 1 for a in r["accuracy"].values())
        assert r["accuracy"]["0"] > 0.2, r                  # twice chance after 4 epochs
    soft = next(r for r in first["runs"] if r["name"] == "soft 1")
    assert all(p > 0 for p in soft["penalties"])
    text = digits.markdown(first)
    assert "| local + soft sharing, strength 1 | 10,240 |" in text


@pytest.mark.parametrize("variant", ["shared", "tiled", "soft"])
def test_backward_is_the_derivative_of_the_loss(variant):
    """Central differences of data loss + penalty against the gradients the network applies,
    for the largest gradient entry of every parameter, on the network built in float64."""
    x, y = digits.load_digits()
    x, y = np.ascontiguousarray(x[:16], dtype=np.float64), y[:16]
    net = digits.Net(variant, np.random.default_rng(3), strength=0.5, dtype=np.float64)
    rng = np.random.default_rng(4)
    for k in ("w1", "b1"):     # make the banks differ so the penalty has a gradient
        net.params[k] += 0.05 * rng.standard_normal(net.params[k].shape)
    loss, penalty, grads = net.loss_and_grads(x, y)
    for key in ("w1", "b1", "w2", "b2", "w3", "b3"):
        p = net.params[key]
        idx = tuple(int(i) for i in np.unravel_index(np.argmax(np.abs(grads[key])), p.shape))
        old = p[idx]
        h = 1e-6
        vals = []
        for v in (old + h, old - h):
            p[idx] = v
            lo, pe, _ = net.loss_and_grads(x, y)
            vals.append(lo + pe)
        p[idx] = old
        fd = (vals[0] - vals[1]) / (2 * h)
        assert abs(fd - grads[key][idx]) <= 1e-5 * abs(grads[key][idx]) + 1e-9, (key, fd,
                                                                                 grads[key][idx])
