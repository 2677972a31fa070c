"""backend="auto": where each kind of array goes (DESIGN.md; the GPU choice is config.AUTO_GPU)."""
import pytest

from sharenet_fast import api, config, registry


def _status(**available):
    def backends():
        return {name: "available" if available.get(name.replace("-", "_")) else "missing"
                for name in registry.BACKENDS}
    return backends


@pytest.mark.parametrize("op", ["conv2d", "tiled_conv2d", "local2d"])
def test_auto_choice(op, monkeypatch):
    monkeypatch.setattr(registry, "backends", _status(cpu=True, numba_cuda=True, cupy=True))
    assert api._auto("numpy", op) == "cpu"
    assert api._auto("numba", op) == "numba-cuda"          # the cupy backend takes CuPy only
    for choice in ("cupy", "numba-cuda"):
        monkeypatch.setitem(config.AUTO_GPU, op, choice)
        assert api._auto("cupy", op) == choice
    # the configured GPU backend missing here: the other one
    monkeypatch.setattr(registry, "backends", _status(cpu=True, numba_cuda=True))
    assert api._auto("cupy", op) == "numba-cuda"
    monkeypatch.setitem(config.AUTO_GPU, op, "numba-cuda")
    monkeypatch.setattr(registry, "backends", _status(cpu=True, cupy=True))
    assert api._auto("cupy", op) == "cupy"


def test_auto_table_names_real_gpu_backends():
    assert set(config.AUTO_GPU) == {"conv2d", "tiled_conv2d", "local2d", "soft_sharing_penalty"}
    assert set(config.AUTO_GPU.values()) <= {"numba-cuda", "cupy"}

