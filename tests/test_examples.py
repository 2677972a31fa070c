"""The examples run, and learn: examples/digits_torch.py trains on scikit-learn's digits with
sharenet_fast.torch's LocallyConnected2d and TiledConv2d, torch.compile off and on."""
import os
import sys

import pytest

pytest.importorskip("torch")
pytest.importorskip("sklearn")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "examples"))
import digits_torch  # noqa: E402


@pytest.mark.parametrize("first,compile", [("local", False), ("tiled", False),
                                           ("local", True)])
def test_digits_example_learns(first, compile):
    acc = digits_torch.train(first, epochs=6, compile=compile, log=None)
    assert acc > 0.85, f"{first} (compile={compile}): test accuracy {acc:.3f}"
