"""The op table (sf.layers()): read-only, and every field agrees with what the layers do."""
import numpy as np
import pytest

import sharenet_fast as sf
from _support import SHAPES_BY_ID, random_array
from sharenet_fast import optable

LAYERS = sf.layers()


def test_table_is_read_only_and_names_the_public_api():
    assert list(LAYERS) == ["conv2d", "tiled_conv2d", "local2d"]
    with pytest.raises(TypeError):
        LAYERS["conv3d"] = LAYERS["conv2d"]
    with pytest.raises(AttributeError):
        LAYERS["conv2d"].name = "other"           # frozen entries
    for name, spec in LAYERS.items():
        assert spec.name == name
        assert callable(getattr(sf, name)) and callable(getattr(sf, name + "_backward"))
        assert optable.lookup(spec.sharing) is spec and optable.lookup(name) is spec
    with pytest.raises(ValueError, match="layer must be one of"):
        optable.lookup("conv3d")


@pytest.mark.parametrize("name", list(LAYERS))
def test_shapes_counts_and_oracles_agree_with_the_layer(name, rng):
    spec = LAYERS[name]
    case = SHAPES_BY_ID["nonsquare_all"]
    g = case.geometry
    grid = {"shared": (1, 1), "tiled": (2, 1), "local": (g.P, g.Q)}[spec.sharing]
    w_shape, b_shape = spec.weight_shape(g, grid), spec.bias_shape(g, grid)
    assert len(w_shape) == spec.weight_ndim and len(b_shape) == spec.bias_ndim
    assert spec.grid(w_shape) == grid
    assert spec.bank_grid(g, (2, 1)) == grid
    assert spec.weight_words.count(",") + 1 == len(w_shape)
    x, dy = random_array(rng, g.x_shape), random_array(rng, g.y_shape)
    w, b = random_array(rng, w_shape), random_array(rng, b_shape)
    # the oracle of each pass is what the public API computes
    y = getattr(sf, name)(x, w, b, backend="cpu", **case.kw)
    np.testing.assert_allclose(y, spec.oracle("forward")(x, w, b, **case.kw), rtol=1e-10)
    grads = getattr(sf, name + "_backward")(dy, x, w, backend="cpu", **case.kw)
    np.testing.assert_allclose(grads.input, spec.oracle("input")(dy, x.shape, w, **case.kw),
                               rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(grads.weight, spec.oracle("weight")(dy, x, w_shape, **case.kw),
                               rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(grads.bias, spec.oracle("bias")(dy, grid), rtol=1e-10)
    # parameter count and bytes from the same shapes
    pc = sf.param_count(name, g.x_shape, g.K, (g.R, g.S), tile=grid if spec.sharing == "tiled"
                        else None, **case.kw)
    assert pc.params == int(np.prod(w_shape)) + int(np.prod(b_shape))
    assert spec.banks(grid) * g.K * g.C * g.R * g.S == int(np.prod(w_shape))
    assert spec.flops(g, "forward") == 2 * g.N * g.K * g.P * g.Q * g.C * g.R * g.S
    moved = x.size + w.size + y.size
    assert spec.bytes(g, "forward", 4, grid) == 4 * moved
    assert spec.bytes(g, "input_weight", 8, grid) == 8 * (dy.size + 2 * x.size + 2 * w.size)


def test_grid_checks_name_the_shapes():
    case = SHAPES_BY_ID["pad1_3x3"]
    g = case.geometry
    with pytest.raises(ValueError, match=r"one bank per output position.*\(9, 10\)"):
        LAYERS["local2d"].check_grid(g, (9, 10), (9, 10) + g.w_shape)
    with pytest.raises(ValueError, match="larger than the output"):
        LAYERS["tiled_conv2d"].check_grid(g, (g.P + 1, 1), (g.P + 1, 1) + g.w_shape)
    LAYERS["tiled_conv2d"].check_grid(g, (g.P, g.Q), (g.P, g.Q) + g.w_shape)   # the largest


def test_exports_follow_the_passes():
    exports = optable.required_exports()
    assert len(exports) == len(set(exports)) == 3 * 4 + 1
    assert LAYERS["local2d"].exports(required=False)["input_weight"] == \
        "local2d_input_weight_grad"
    assert [p.kernel for p in optable.PASSES.values() if p.required] == \
        ["fwd", "dgrad", "wgrad", "bgrad"]
