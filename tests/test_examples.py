"""The examples run, and learn: examples/digits_torch.py trains on scikit-learn's digits with
sharenet_fast.torch's LocallyConnected2d and TiledConv2d, torch.compile off and on;
examples/topographic_torch.py's neighbour penalty aligns neighbouring banks;
examples/lc_resnet_torch.py learns with its banks averaged every k steps;
examples/position_parallel_torch.py trains over 2 processes a model past one process's cap."""
import os
import sys

import pytest

pytest.importorskip("torch")
pytest.importorskip("sklearn")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "examples"))
import digits_torch  # noqa: E402
import topographic_torch  # noqa: E402


@pytest.mark.parametrize("first,compile", [("local", False), ("tiled", False),
                                           ("local", True)])
def test_digits_example_learns(first, compile):
    acc = digits_torch.train(first, epochs=6, compile=compile, log=None)
    assert acc > 0.85, f"{first} (compile={compile}): test accuracy {acc:.3f}"


def test_topographic_example_learns_and_its_neighbours_align_with_the_penalty():
    free_acc, _, free = topographic_torch.train(0.0, epochs=4, log=None)
    acc, per_step, tied = topographic_torch.train(1.0, epochs=4, log=None)
    assert free_acc > 0.85 and acc > 0.85, (free_acc, acc)
    assert per_step > 0
    # each layer's neighbouring filters: nearly unrelated when free, aligned under the penalty
    assert all(t > f + 0.3 for f, t in zip(free, tied)), (free, tied)


def test_lc_resnet_example_learns_with_dynamic_weight_sharing():
    import lc_resnet_torch

    acc, per_step, averager = lc_resnet_torch.train(1, "all", epochs=3, log=None)
    assert acc > 0.8 and per_step > 0, acc
    for w in averager.weights:            # averaged after the last step: every bank the same
        assert (w - w[:1, :1]).abs().max().item() == 0.0
    acc, _, averager = lc_resnet_torch.train(10, (2, 2), epochs=4, log=None)
    assert acc > 0.85 and averager.calls > 10, acc


def test_lc_resnet_example_is_grouped_and_its_einsum_peer_computes_the_same_model():
    import torch

    import lc_resnet_torch
    torch.manual_seed(0)
    ours = lc_resnet_torch.model(groups=2)
    peer = lc_resnet_torch.model(groups=2, lc=lc_resnet_torch.EinsumLC)
    peer.load_state_dict(ours.state_dict())
    assert ours[2].a.groups == 2 and ours[2].a.weight.shape[-3] == 4
    x = torch.randn(5, 1, 8, 8)
    torch.testing.assert_close(ours(x), peer(x), rtol=1e-5, atol=1e-5)


def test_topographic_example_peer_computes_the_same_model_and_penalty():
    import torch

    import sharenet_fast.torch as sft
    torch.manual_seed(0)
    ours = topographic_torch.model()
    peer = topographic_torch.model(digits_torch.EinsumLC)
    peer.load_state_dict(ours.state_dict())
    x = torch.randn(5, 1, 8, 8)
    torch.testing.assert_close(ours(x), peer(x), rtol=1e-5, atol=1e-5)
    # the plain-torch penalty: the same value and gradient as sft.neighbour_penalty (float64,
    # a zero bank included: the eps branch of the formula)
    w = torch.randn(5, 4, 3, 2, 3, 3, dtype=torch.float64)
    w[1, 2, 0] = 0
    w.requires_grad_(True)
    w2 = w.detach().clone().requires_grad_(True)
    a = sft.neighbour_penalty(w, 0.7, metric="cosine", neighbourhood=8)
    b = topographic_torch.torch_neighbour_penalty(w2, 0.7)
    a.backward()
    b.backward()
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(w.grad, w2.grad, rtol=1e-10, atol=1e-12)


def test_position_parallel_example_trains_a_model_past_one_process_cap(tmp_path):
    import position_parallel_torch as ex

    out, cap_mb = str(tmp_path / "run.pt"), 8
    assert ex.state_bytes(16) > cap_mb * 2**20          # one process would not fit the cap
    ex.train(world=2, size=16, steps=8, cap_mb=cap_mb, out=out)
    import torch
    run = torch.load(out)
    assert run["held"] <= cap_mb * 2**20 < 2 * run["held"], run["held"]
    assert run["losses"][-1] < 0.9 * run["losses"][0], run["losses"]
