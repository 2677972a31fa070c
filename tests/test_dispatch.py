"""backend="auto": where each kind of array goes (docs/design.md; the GPU choice is config.AUTO_GPU)."""
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


def test_auto_table_names_real_gpu_backends_and_ops():
    """Every op has a GPU choice (the default or an entry), each a real GPU backend; an entry
    for an op the table does not know would be a typo that silently never applies."""
    from sharenet_fast import optable

    ops = set(optable.LAYERS) | {optable.PENALTY}
    assert set(config.AUTO_GPU) <= ops
    assert {config.auto_gpu(op) for op in ops} <= set(registry.GPU) <= set(registry.BACKENDS)



@pytest.mark.parametrize("name", [n for n, s in registry.backends().items() if s == "available"])
def test_every_available_backend_exports_what_the_op_table_names(name):
    """Dispatch is getattr(backend, spec.export(pass)): a missing name would only fail at the
    first call of that layer and pass, so every backend is checked against the table here."""
    import inspect

    from sharenet_fast import optable

    be = registry.get(name)
    missing = [f for f in optable.required_exports() if not callable(getattr(be, f, None))]
    assert not missing, f"{name} lacks {missing}"
    assert be.KINDS and set(be.KINDS) <= {"numpy", "cupy", "numba"}
    if be.KINDS[0] != "numpy":
        assert all(callable(getattr(be, f, None)) for f in ("to_device", "to_host", "copy_into"))
    # the table's signatures (optable.py): g and grid after the arrays, everywhere
    params = {"forward": ["x", "weight", "bias", "g", "grid"], "input": ["dy", "weight", "g", "grid"],
              "weight": ["dy", "x", "g", "grid", "out", "deterministic"],
              "bias": ["dy", "g", "grid", "out"],
              "input_weight": ["dy", "x", "weight", "g", "grid", "out", "deterministic"]}
    # a backend with reduced-precision storage (dtypes.REDUCED in its DTYPES) takes out_dtype=
    # last in every pass
    from sharenet_fast import dtypes

    extra = ["out_dtype"] if set(dtypes.REDUCED) & set(be.DTYPES) else []
    assert set(be.DTYPES) <= set(dtypes.NAMES) and {"float32", "float64"} <= set(be.DTYPES)
    for spec in optable.LAYERS.values():
        for pass_, fname in spec.exports(required=False).items():
            fn = getattr(be, fname, None)
            if fn is not None:
                assert list(inspect.signature(fn).parameters) == params[pass_] + extra, fname


@pytest.mark.skipif(registry.backends()["numba-cuda"] != "available",
                    reason="numba-cuda not available")
def test_numpy_arrays_cross_to_a_gpu_backend_once_per_call(monkeypatch):
    """NumPy inputs given to a GPU backend are copied to the device once per API call, however
    many passes read them (the full backward reads dy three times and x, weight once each), and
    every result comes back once."""
    import numpy as np

    import sharenet_fast as sf

    be = registry.get("numba-cuda")
    sent, returned = [], []
    real_to, real_back = be.to_device, be.to_host
    monkeypatch.setattr(be, "to_device", lambda a: sent.append(a.shape) or real_to(a))
    monkeypatch.setattr(be, "to_host", lambda d: returned.append(d.shape) or real_back(d))
    rng = np.random.default_rng(3)
    x, w = rng.standard_normal((1, 2, 5, 4)), rng.standard_normal((3, 2, 2, 2))
    dy = rng.standard_normal((1, 3, 4, 3))
    for layer, weight in (("conv2d", w), ("local2d", np.broadcast_to(w, (4, 3) + w.shape))):
        sent.clear(), returned.clear()
        g = getattr(sf, layer + "_backward")(dy, x, weight, backend="numba-cuda")
        assert sorted(sent) == sorted([dy.shape, x.shape, weight.shape]), (layer, sent)
        assert sorted(returned) == sorted([x.shape, weight.shape, g.bias.shape]), layer
        ref = sf.layers()[layer].oracle("weight")(dy, x, weight.shape)
        np.testing.assert_allclose(g.weight, ref, rtol=1e-10)
