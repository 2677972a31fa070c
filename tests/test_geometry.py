"""param_count (the cs231n numbers), ConvGeometry output sizes vs PyTorch, FLOP counts."""
import numpy as np
import pytest

import sharenet_fast as sf
from sharenet_fast.geometry import ConvGeometry

CS231N = ((3, 227, 227), 96, 11)


def test_param_count_shared_cs231n():
    pc = sf.param_count("shared", *CS231N, stride=4)
    assert isinstance(pc, sf.ParamCount)
    assert pc.neurons == 290_400 == 55 * 55 * 96
    assert pc.weights_per_neuron == 363 == 11 * 11 * 3
    assert pc.params == 34_944 == 96 * 363 + 96
    assert pc.bytes == pc.params * 4


def test_param_count_local_cs231n():
    pc = sf.param_count("local", *CS231N, stride=4)
    assert pc.neurons == 290_400 and pc.weights_per_neuron == 363
    assert pc.params == 105_705_600 == 55 * 55 * 96 * 364
    assert pc.bytes == pc.params * 4


def test_param_count_tiled_cs231n():
    pc = sf.param_count("tiled", *CS231N, stride=4, tile=(2, 2))
    assert pc.params == 4 * 34_944
    assert pc.neurons == 290_400 and pc.weights_per_neuron == 363
    assert pc.bytes == pc.params * 4
    # the extremes: a 1x1 tile is shared, a PxQ tile is local
    assert sf.param_count("tiled", *CS231N, stride=4, tile=1).params == 34_944
    assert sf.param_count("tiled", *CS231N, stride=4, tile=(55, 55)).params == 105_705_600


@pytest.mark.parametrize("sharing,tile,params", [
    ("shared", None, 96 * 363),
    ("local", None, 55 * 55 * 96 * 363),
    ("tiled", (2, 2), 4 * 96 * 363),
])
def test_param_count_without_bias(sharing, tile, params):
    pc = sf.param_count(sharing, *CS231N, stride=4, tile=tile, bias=False)
    assert pc.params == params
    assert pc.bytes == params * 4
    assert pc.neurons == 290_400


def test_param_count_accepts_nchw_and_pairs():
    a = sf.param_count("shared", (8, 3, 227, 227), 96, (11, 11), stride=(4, 4))
    assert a == sf.param_count("shared", *CS231N, stride=4)
    pc = sf.param_count("shared", (3, 32, 32), 16, (3, 5), padding=(1, 2))
    assert pc.neurons == 16 * 32 * 32 and pc.weights_per_neuron == 3 * 3 * 5
    assert pc.params == 16 * (45 + 1)


def test_param_count_bad_sharing():
    with pytest.raises(ValueError, match=r"sharing must be one of.*'dense'"):
        sf.param_count("dense", *CS231N, stride=4)


def test_param_count_tiled_needs_tile():
    with pytest.raises(ValueError, match=r"tile"):
        sf.param_count("tiled", *CS231N, stride=4)


def test_param_count_tile_too_big():
    with pytest.raises(ValueError, match=r"tile"):
        sf.param_count("tiled", *CS231N, stride=4, tile=(56, 1))


def test_param_count_output_size_lt_1():
    with pytest.raises(ValueError, match=r"output size"):
        sf.param_count("shared", (3, 5, 5), 4, 7)


# N, C, H, W, K, R, S, stride, padding, dilation
GEOMETRIES = [
    (1, 3, 227, 227, 96, 11, 11, 4, 0, 1),
    (2, 3, 35, 35, 8, 11, 11, 4, 0, 1),
    (1, 2, 10, 13, 3, 3, 5, (2, 3), (1, 2), (1, 2)),
    (1, 1, 7, 8, 2, 1, 1, 2, 1, 1),
    (1, 2, 6, 7, 3, 3, 2, 1, (3, 0), (1, 2)),
    (1, 1, 9, 9, 1, 3, 3, 3, 2, 3),
    (1, 1, 4, 4, 1, 5, 5, 1, 1, 1),
]


@pytest.mark.parametrize("geom", GEOMETRIES, ids=[str(i) for i in range(len(GEOMETRIES))])
def test_output_size_matches_torch(geom):
    torch = pytest.importorskip("torch")
    N, C, H, W, K, R, S, stride, padding, dilation = geom
    g = ConvGeometry.make(N, C, H, W, K, R, S, stride, padding, dilation)
    x = torch.randn(N, C, H, W, dtype=torch.float64)
    w = torch.randn(K, C, R, S, dtype=torch.float64)
    y = torch.nn.functional.conv2d(x, w, stride=stride, padding=padding, dilation=dilation)
    assert tuple(y.shape) == g.y_shape
    assert g.x_shape == (N, C, H, W) and g.w_shape == (K, C, R, S)


def test_output_size_alexnet():
    g = ConvGeometry.make(8, 3, 227, 227, 96, 11, 11, stride=4)
    assert (g.P, g.Q) == (55, 55)
    assert g.y_shape == (8, 96, 55, 55)


@pytest.mark.parametrize("geom", GEOMETRIES, ids=[str(i) for i in range(len(GEOMETRIES))])
def test_flops(geom):
    N, C, H, W, K, R, S, stride, padding, dilation = geom
    g = ConvGeometry.make(N, C, H, W, K, R, S, stride, padding, dilation)
    fwd = 2 * N * K * g.P * g.Q * C * R * S
    assert g.macs * 2 == fwd
    assert g.flops() == fwd
    assert g.flops("forward") == fwd
    assert g.flops("input") == fwd and g.flops("weight") == fwd
    assert g.flops("backward") == 2 * fwd


def test_geometry_normalises_arguments():
    g = ConvGeometry.make(1, 1, 8, 8, 1, 3, 3, stride=np.int64(2), padding=(1, np.int32(0)))
    assert g.stride == (2, 2) and g.padding == (1, 0) and g.dilation == (1, 1)
    assert all(type(v) is int for v in g.stride + g.padding)
