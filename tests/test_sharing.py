"""soft_sharing_penalty on every available backend against the float64 oracle, and hard
sharing (one weight, several call sites, gradients accumulated through the API) against the
gradient of the summed loss."""
import numpy as np
import pytest

import sharenet_fast as sf
from sharenet_fast import config, reference
from _support import BACKENDS, DTYPE_IDS, DTYPES, LAYERS, assert_close, random_array

SHAPES = [(1,), (7,), (3, 5, 11), (2, 3, 4, 5, 6, 7), (config.PENALTY_CHUNK + 4321,)]
SHAPE_IDS = ["1", "7", "3x5x11", "6d", "chunk+"]
GRADS = ["both", "a", "b", "none"]
STRENGTH = 0.37


def _penalty_case(rng, shape, dtype, grads):
    a, b = random_array(rng, shape, dtype), random_array(rng, shape, dtype)
    ga = random_array(rng, shape, dtype) if grads in ("both", "a") else None
    gb = random_array(rng, shape, dtype) if grads in ("both", "b") else None
    return a, b, ga, gb


def _skip_slow(backend, shape):
    if backend == "numba-cuda" and config.CUDASIM and np.prod(shape) > 10000:
        pytest.skip("simulator: large sizes run on a GPU (-m gpu)")


@pytest.mark.parametrize("grads", GRADS)
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_penalty_matches_oracle(backend, dtype, shape, grads, rng):
    _skip_slow(backend, shape)
    a, b, ga, gb = _penalty_case(rng, shape, dtype, grads)
    ga0 = None if ga is None else ga.copy()
    gb0 = None if gb is None else gb.copy()
    p = sf.soft_sharing_penalty(a, b, STRENGTH, grad_a=ga, grad_b=gb, backend=backend)
    want, da, db = reference.soft_sharing_penalty(a, b, STRENGTH)
    assert type(p) is np.float64
    # float32: each difference rounds once (2**-24), then the sum is float64
    assert abs(p - want) <= (1e-6 if dtype == np.float32 else 1e-12) * want
    if ga is not None:
        assert_close(ga, ga0 + da, dtype, "grad_a accumulated")
    if gb is not None:
        assert_close(gb, gb0 + db, dtype, "grad_b accumulated")
    assert np.array_equal(a, a) and np.isfinite(a).all()        # inputs untouched


@pytest.mark.parametrize("backend", BACKENDS)
def test_penalty_gradient_is_its_derivative(backend, rng):
    """Central differences of the (quadratic) penalty are exact up to rounding: the gradients
    the kernel adds are d penalty / d a and d penalty / d b."""
    a, b = random_array(rng, (4, 6), np.float64), random_array(rng, (4, 6), np.float64)
    ga, gb = np.zeros_like(a), np.zeros_like(b)
    sf.soft_sharing_penalty(a, b, STRENGTH, grad_a=ga, grad_b=gb, backend=backend)
    h = 1e-4
    for arr, grad in ((a, ga), (b, gb)):
        for idx in [(0, 0), (1, 3), (3, 5)]:
            old = arr[idx]
            arr[idx] = old + h
            up = sf.soft_sharing_penalty(a, b, STRENGTH, backend=backend)
            arr[idx] = old - h
            down = sf.soft_sharing_penalty(a, b, STRENGTH, backend=backend)
            arr[idx] = old
            assert abs((up - down) / (2 * h) - grad[idx]) < 1e-8


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "reference"])
def test_penalty_is_bitwise_reproducible(backend, rng):
    n = 3000 if backend == "numba-cuda" and config.CUDASIM else 3 * config.PENALTY_CHUNK + 11
    a, b = random_array(rng, (n,), np.float32), random_array(rng, (n,), np.float32)
    runs = {sf.soft_sharing_penalty(a, b, 1.5, backend=backend).tobytes() for _ in range(3)}
    assert len(runs) == 1


def test_cpu_penalty_does_not_depend_on_the_thread_count(rng):
    import numba

    a = random_array(rng, (5 * config.PENALTY_CHUNK + 3,), np.float32)
    b = random_array(rng, a.shape, np.float32)
    old = numba.get_num_threads()
    try:
        got = []
        for t in sorted({1, old}):
            numba.set_num_threads(t)
            got.append(sf.soft_sharing_penalty(a, b, 0.5, backend="cpu"))
    finally:
        numba.set_num_threads(old)
    assert len({g.tobytes() for g in got}) == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_strided_inputs_and_buffers(backend, rng):
    """Non-contiguous a, b are read through a copy; a strided grad view is added into, and the
    elements of its parent buffer outside the view stay as they were (NaN poison)."""
    base_a = random_array(rng, (6, 10), np.float32)
    a, b = base_a.T, random_array(rng, (12, 10), np.float32)[::2].T        # (10, 6) views
    parent = np.full((10, 12), np.nan, np.float32)
    ga = parent[:, ::2]
    ga[...] = random_array(rng, ga.shape, np.float32)
    before = ga.copy()
    p = sf.soft_sharing_penalty(a, b, STRENGTH, grad_a=ga, backend=backend)
    want, da, _ = reference.soft_sharing_penalty(a, b, STRENGTH)
    assert abs(p - want) <= 1e-6 * want
    assert_close(ga, before + da, np.float32, "strided grad_a")
    assert np.isnan(parent[:, 1::2]).all(), "wrote outside the grad view"


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_strength_and_empty_arrays(backend, rng):
    a, b = random_array(rng, (9,), np.float64), random_array(rng, (9,), np.float64)
    ga = random_array(rng, (9,), np.float64)
    before = ga.copy()
    assert sf.soft_sharing_penalty(a, b, 0.0, grad_a=ga, backend=backend) == 0.0
    np.testing.assert_array_equal(ga, before)
    e = np.empty((0, 3), np.float32)
    assert sf.soft_sharing_penalty(e, e.copy(), 2.0, backend=backend) == 0.0


def _bad(rng):
    a = random_array(rng, (3, 4), np.float32)
    b = random_array(rng, (3, 4), np.float32)
    return a, b


@pytest.mark.parametrize("case, exc, match", [
    (lambda a, b: dict(b=b[:, :3]), ValueError, r"b must have a's shape \(3, 4\)"),
    (lambda a, b: dict(b=b.astype(np.float64)), TypeError, "mixed dtypes"),
    (lambda a, b: dict(a=a.astype(np.int32), b=b.astype(np.int32)), TypeError, "float32, float64, bfloat16 or float16"),
    (lambda a, b: dict(a=a.tolist()), TypeError, "numpy.ndarray"),
    (lambda a, b: dict(strength=-1.0), ValueError, "finite and >= 0"),
    (lambda a, b: dict(strength=float("nan")), ValueError, "finite and >= 0"),
    (lambda a, b: dict(strength=float("inf")), ValueError, "finite and >= 0"),
    (lambda a, b: dict(strength=True), TypeError, "real number"),
    (lambda a, b: dict(strength="1"), TypeError, "real number"),
    (lambda a, b: dict(strength=np.ones(2)), TypeError, "real number"),
    (lambda a, b: dict(grad_a=np.zeros((4, 3), np.float32)), ValueError, "grad_a must have"),
    (lambda a, b: dict(grad_b=np.zeros((3, 4))), TypeError, "grad_b has dtype float64"),
    (lambda a, b: dict(grad_a=a), ValueError, "grad_a overlaps a"),
    (lambda a, b: dict(grad_b=b.T.T), ValueError, "grad_b overlaps b"),
    (lambda a, b: (lambda g: dict(grad_a=g, grad_b=g))(np.zeros((3, 4), np.float32)),
     ValueError, "grad_a overlaps grad_b"),
    (lambda a, b: (lambda g: (g.setflags(write=False), dict(grad_a=g))[1])(
        np.zeros((3, 4), np.float32)), ValueError, "read-only"),
    (lambda a, b: dict(backend="tpu"), ValueError, "backend must be one of"),
])
def test_bad_input_is_refused_before_any_kernel(case, exc, match, rng):
    a, b = _bad(rng)
    kw = dict(a=a, b=b, strength=1.0)
    kw.update(case(a, b))
    with pytest.raises(exc, match=match):
        sf.soft_sharing_penalty(kw.pop("a"), kw.pop("b"), kw.pop("strength"), **kw)


@pytest.mark.skipif("numba-cuda" not in BACKENDS, reason="numba-cuda not available")
def test_penalty_on_numba_device_arrays(rng):
    from numba import cuda

    a, b, ga, _ = _penalty_case(rng, (50,), np.float32, "a")
    want, da, _ = reference.soft_sharing_penalty(a, b, 2.0)
    d_a, d_b, d_ga = (cuda.to_device(x) for x in (a, b, ga))
    p = sf.soft_sharing_penalty(d_a, d_b, 2.0, grad_a=d_ga)       # auto -> numba-cuda
    assert type(p) is np.float64 and abs(p - want) <= 1e-6 * want
    assert_close(d_ga.copy_to_host(), ga + da, np.float32, "device grad_a")
    with pytest.raises(TypeError, match="not mixed"):
        sf.soft_sharing_penalty(d_a, b, 2.0)
    with pytest.raises(TypeError, match="takes NumPy arrays"):
        sf.soft_sharing_penalty(d_a, d_b, 2.0, backend="cpu")


# ------------------------------------------------------------------------------ hard sharing
def _layer_weight(layer, rng, g, dtype):
    bank = (4, 3, 3, 3)
    grid = {"conv2d": (), "tiled_conv2d": (2, 2), "local2d": (g.P, g.Q)}[layer]
    return random_array(rng, grid + bank, dtype), random_array(rng, grid + (4,), dtype)


HARD_LAYERS = {"conv2d": (sf.conv2d, sf.conv2d_backward),
               "tiled_conv2d": (sf.tiled_conv2d, sf.tiled_conv2d_backward),
               "local2d": (sf.local2d, sf.local2d_backward)}


@pytest.mark.parametrize("layer", list(HARD_LAYERS))
@pytest.mark.parametrize("backend", BACKENDS)
def test_hard_sharing_siamese_gradient_is_the_summed_loss_gradient(layer, backend, rng):
    """Siamese branches: one weight W applied to x1 and x2, loss = <y1, dy1> + <y2, dy2>.
    Accumulating both branches' gradients into one grad_weight / grad_bias through the API
    gives dL/dW, which equals one call on the two inputs stacked as one batch (the same weight
    at both call sites is the same neurons seeing both images), checked in float64."""
    assert layer in LAYERS or layer in HARD_LAYERS
    fwd, bwd = HARD_LAYERS[layer]
    dtype = np.float64
    x1, x2 = (random_array(rng, (2, 3, 8, 8), dtype) for _ in range(2))
    g = sf.ConvGeometry.make(2, 3, 8, 8, 4, 3, 3, 1, 1, 1)
    w, bias = _layer_weight(layer, rng, g, dtype)
    kw = dict(stride=1, padding=1, backend=backend)
    y1, y2 = fwd(x1, w, bias, **kw), fwd(x2, w, bias, **kw)
    dy1, dy2 = random_array(rng, y1.shape, dtype), random_array(rng, y2.shape, dtype)
    gw = np.zeros_like(w)
    gb = np.zeros_like(bias)
    for x, dy in ((x1, dy1), (x2, dy2)):               # the two call sites, one buffer each
        out = bwd(dy, x, w, grad_weight=gw, grad_bias=gb, **kw)
        assert out.weight is gw and out.bias is gb
    both = bwd(np.concatenate([dy1, dy2]), np.concatenate([x1, x2]), w, backend="reference",
               stride=1, padding=1)
    assert_close(gw, both.weight, dtype, "shared weight gradient")
    assert_close(gb, both.bias, dtype, "shared bias gradient")
    # and it is the derivative of the summed loss: one central difference on one weight
    idx = (0,) * w.ndim
    h = 1e-6

    def loss(wv):
        return sum(float(np.sum(fwd(x, wv, bias, **kw) * dy)) for x, dy in ((x1, dy1), (x2, dy2)))
    wp, wm = w.copy(), w.copy()
    wp[idx] += h
    wm[idx] -= h
    assert abs((loss(wp) - loss(wm)) / (2 * h) - gw[idx]) < 1e-6 * max(1.0, abs(gw[idx]))
