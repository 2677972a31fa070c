"""GPU-only checks (`pytest -m gpu` on a machine with a CUDA GPU; skipped elsewhere).

Real sizes: the benchmark suite's layers (bench/shapes.py) at their real spatial size against
the float64 oracle (batch 2: the oracle is NumPy), both weight-gradient reductions, bit-equal
deterministic runs at batch 64, CuPy arrays in and out, an input past 2**31 elements, and
compute-sanitizer memcheck / racecheck over every kernel.
"""
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import sharenet_fast as sf
from sharenet_fast import config, reference
from _support import assert_close, random_array

ON_GPU = sf.backends()["numba-cuda"] == "available" and not config.CUDASIM
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not ON_GPU, reason="needs a CUDA GPU (not the simulator)")]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(sf.__file__)))
sys.path.insert(0, ROOT)
from bench.shapes import SUITE  # noqa: E402

LAYER_FN = {"conv2d": (1, 1), "tiled_conv2d": (2, 2), "local2d": None}
GPU_BACKENDS = [pytest.param(b, marks=pytest.mark.skipif(
    sf.backends()[b] != "available", reason=f"{b}: {sf.backends()[b]}"))
    for b in ("numba-cuda", "cupy")]


def _inputs(layer, shape, dtype, seed):
    g = sf.ConvGeometry.make(*shape)
    grid = () if layer == "conv2d" else (LAYER_FN[layer] or (g.P, g.Q))
    rng = np.random.default_rng(seed)
    x = random_array(rng, g.x_shape, dtype)
    w = random_array(rng, grid + g.w_shape, dtype) / np.sqrt(g.C * g.R * g.S).astype(dtype)
    b = random_array(rng, grid + (g.K,), dtype)
    dy = random_array(rng, g.y_shape, dtype)
    return g, x, w, b, dy


@pytest.mark.parametrize("deterministic", [False, True], ids=["atomic", "deterministic"])
@pytest.mark.parametrize("layer", list(LAYER_FN))
@pytest.mark.parametrize("name", list(SUITE))
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_suite_layer_against_oracle(backend, name, layer, deterministic):
    shape = SUITE[name].with_batch(2)
    g, x, w, b, dy = _inputs(layer, shape, np.float32, seed=31)
    kw = dict(stride=shape.stride, padding=shape.padding)
    fwd, bwd = getattr(sf, layer), getattr(sf, layer + "_backward")
    y = fwd(x, w, b, backend=backend, **kw)
    assert_close(y, getattr(reference, layer)(x, w, b, **kw), np.float32, "forward")
    got = bwd(dy, x, w, backend=backend, deterministic=deterministic, **kw)
    want = getattr(reference, layer + "_backward")(dy, x, w, **kw)     # (dx, dw, db)
    for what, out, ref in zip(("input", "weight", "bias"), got, want):
        assert_close(out, ref, np.float32, f"{what} grad")


@pytest.mark.parametrize("layer", list(LAYER_FN))
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_float64_at_real_size(backend, layer):
    shape = SUITE["cifar_5x5"].with_batch(2)
    g, x, w, b, dy = _inputs(layer, shape, np.float64, seed=32)
    kw = dict(stride=shape.stride, padding=shape.padding)
    got = getattr(sf, layer + "_backward")(dy, x, w, backend=backend, **kw)
    assert_close(got.weight, getattr(reference, layer + "_weight_grad")(dy, x, w.shape, **kw),
                 np.float64, "weight grad")
    assert_close(got.input, getattr(reference, layer + "_input_grad")(dy, x.shape, w, **kw),
                 np.float64, "input grad")


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_deterministic_is_bitwise_reproducible_at_batch_64(backend):
    cupy = pytest.importorskip("cupy")
    shape = SUITE["alexnet_conv1"].with_batch(64)
    g, x, w, b, dy = _inputs("conv2d", shape, np.float32, seed=33)
    xd, wd, dyd = (cupy.asarray(a) for a in (x, w, dy))
    kw = dict(stride=shape.stride, padding=shape.padding, needs=("weight",), backend=backend)
    det = [sf.conv2d_backward(dyd, xd, wd, deterministic=True, **kw).weight.get()
           for _ in range(3)]
    assert all(np.array_equal(d, det[0]) for d in det[1:])
    atomic = sf.conv2d_backward(dyd, xd, wd, **kw).weight.get()
    assert_close(atomic, det[0], np.float32, "atomic vs deterministic")


def test_cupy_in_cupy_out_and_streams():
    cupy = pytest.importorskip("cupy")
    shape = SUITE["deepface_l4"].with_batch(2)
    g, x, w, b, dy = _inputs("local2d", shape, np.float32, seed=34)
    with cupy.cuda.Stream(non_blocking=True):     # ours must order on CuPy's current stream
        xd, wd, bd, dyd = (cupy.asarray(a) for a in (x, w, b, dy))
        y = sf.local2d(xd, wd, bd)                   # auto: CuPy arrays -> a GPU backend
        gw = cupy.ones_like(wd)
        sf.local2d_backward(dyd, xd, wd, needs=("weight",), grad_weight=gw)
        y_h, gw_h = y.get(), gw.get()
    assert isinstance(y, cupy.ndarray)
    assert_close(y_h, reference.local2d(x, w, b), np.float32, "y")
    assert_close(gw_h - 1, reference.local2d_weight_grad(dy, x, w.shape), np.float32, "dw")


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_soft_sharing_penalty_at_real_size(backend):
    """alexnet_conv1's locally connected weights (105.7e6 elements) against their mean filter,
    CuPy in: 0-d CuPy penalty out, both gradients, the same bits twice."""
    cupy = pytest.importorskip("cupy")
    rng = np.random.default_rng(35)
    n = 105_705_600
    a = rng.standard_normal(n, dtype=np.float32)
    b = rng.standard_normal(n, dtype=np.float32)
    ga, gb = rng.standard_normal(n, dtype=np.float32), rng.standard_normal(n, dtype=np.float32)
    want, da, db = reference.soft_sharing_penalty(a, b, 0.25)
    ad, bd, gad, gbd = (cupy.asarray(v) for v in (a, b, ga, gb))
    p = sf.soft_sharing_penalty(ad, bd, 0.25, grad_a=gad, grad_b=gbd, backend=backend)
    assert isinstance(p, cupy.ndarray) and p.shape == () and p.dtype == np.float64
    assert abs(float(p) - want) <= 1e-6 * want
    assert_close(gad.get(), ga + da, np.float32, "grad_a")
    assert_close(gbd.get(), gb + db, np.float32, "grad_b")
    again = sf.soft_sharing_penalty(ad, bd, 0.25, backend=backend)
    assert float(again) == float(sf.soft_sharing_penalty(ad, bd, 0.25, backend=backend))


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("layer", list(LAYER_FN))
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_reduced_storage_at_real_size(backend, layer, dtype):
    """16-bit storage at alexnet_conv1's real size (batch 2), NumPy and CuPy arrays: every pass
    within the dtype's bound of the float64 oracle on the rounded inputs, the float32 result
    (out_dtype=) within float32's, the stored result that float32 result rounded once, and a
    float32 master gradient added into in float32."""
    from sharenet_fast import dtypes

    dt = dtypes.DTYPES[dtype]
    shape = SUITE["alexnet_conv1"].with_batch(2)
    g, x, w, b, dy = (a if isinstance(a, sf.ConvGeometry) else a.astype(dt.storage)
                      for a in _inputs(layer, shape, np.float32, seed=36))
    kw = dict(stride=shape.stride, padding=shape.padding)
    f64 = [a.astype(np.float64) for a in (x, w, b, dy)]
    fwd, bwd = getattr(sf, layer), getattr(sf, layer + "_backward")
    want = (getattr(reference, layer)(*f64[:3], **kw),
            *getattr(reference, layer + "_backward")(f64[3], *f64[:2], **kw))
    got = (fwd(x, w, b, backend=backend, **kw), *bwd(dy, x, w, backend=backend, **kw))
    wide = (fwd(x, w, b, backend=backend, out_dtype=np.float32, **kw),
            *bwd(dy, x, w, backend=backend, out_dtype=np.float32, **kw))
    for what, out, out32, ref in zip(("forward", "input", "weight", "bias"), got, wide, want):
        assert out.dtype == dt.storage and out32.dtype == np.float32, what
        assert dtypes.rel_err(out32, ref) <= dt.out_tol, f"{what} float32 result"
        assert dtypes.rel_err(out, ref) <= dt.tol, what
        np.testing.assert_array_equal(out.view(np.uint16), out32.astype(dt.storage).view(np.uint16),
                                      err_msg=f"{what}: not the float32 result rounded once")
    master = np.ones(w.shape, np.float32)
    bwd(dy, x, w, needs=("weight",), grad_weight=master, backend=backend, **kw)
    assert dtypes.rel_err(master - 1, want[2]) <= 1e-4, "float32 master gradient"
    cupy = pytest.importorskip("cupy")
    yd = fwd(*(cupy.asarray(a) for a in (x, w, b)), backend=backend, **kw)
    assert isinstance(yd, cupy.ndarray) and yd.dtype == dt.storage
    np.testing.assert_array_equal(yd.get().view(np.uint16), got[0].view(np.uint16))


def test_accumulation_dtype_is_a_separate_field_on_the_gpu():
    """numba-cuda on the GPU: a float32-storage row accumulating in float64 (a DType row, no
    new code: what bfloat16 with float32 accumulation will be) sums 2**24 + 16 exactly in every
    pass (tests/_cuda_emu.accumulation_probe)."""
    from numba import cuda

    import _cuda_emu
    from sharenet_fast import numba_cuda

    got = _cuda_emu.accumulation_probe(numba_cuda.DEV, _cuda_emu.F32_ACC64, put=cuda.to_device,
                                       get=lambda d: d.copy_to_host())
    assert got == _cuda_emu.EXACT, got


@pytest.mark.slow
def test_input_past_2_31_elements():
    """x with 2.15e9 elements (8.6 GB): the second channel starts past 2**31, so a 32-bit
    offset would wrap. A 1 x 1 conv mixes the channels; spot rows are checked exactly."""
    cupy = pytest.importorskip("cupy")
    free, _ = cupy.cuda.runtime.memGetInfo()
    if free < 16 * 2**30:
        pytest.skip(f"needs 16 GiB free on the GPU, {free / 2**30:.1f} GiB free")
    H, W = 32768, 32800
    x = cupy.empty((1, 2, H, W), dtype=cupy.float32)
    assert x.size > 2**31
    x[0, 0] = cupy.arange(W, dtype=cupy.float32)[None, :] % 7 + 1
    x[0, 1] = cupy.arange(H, dtype=cupy.float32)[:, None] % 5 + 1
    w = cupy.asarray(np.array([2.0, -3.0], np.float32).reshape(1, 2, 1, 1))
    y = sf.conv2d(x, w)
    for row in (0, 1, H // 2, H - 2, H - 1):
        want = 2 * (np.arange(W) % 7 + 1) - 3 * (row % 5 + 1)
        np.testing.assert_array_equal(y[0, 0, row].get(), want.astype(np.float32))
    del x, y


# -------------------------------------------------------------------------- compute-sanitizer
_SANITIZE = r"""
import numpy as np, sharenet_fast as sf
rng = np.random.default_rng(0)
backends = [b for b in ("numba-cuda", "cupy") if sf.backends()[b] == "available"]
cases = [((2, 3, 23, 25), (5, 3, 11, 11), dict(stride=4, padding=(0, 1))),
         ((3, 4, 9, 10), (7, 4, 3, 3), dict(padding=1)),
         ((1, 2, 12, 11), (3, 2, 3, 2), dict(stride=(2, 1), dilation=(2, 1), padding=(1, 0)))]
for xs, ws, kw in cases:
    g = sf.ConvGeometry.make(*xs, ws[0], ws[2], ws[3], kw.get("stride", 1),
                             kw.get("padding", 0), kw.get("dilation", 1))
    for layer, grid in (("conv2d", ()), ("tiled_conv2d", (2, 3)), ("local2d", (g.P, g.Q))):
        for dt in (np.float32, np.float64):
            x = rng.standard_normal(xs).astype(dt)
            w = rng.standard_normal(grid + ws).astype(dt)
            b = rng.standard_normal(grid + ws[:1]).astype(dt)
            dy = rng.standard_normal(g.y_shape).astype(dt)
            for be in backends:
                getattr(sf, layer)(x, w, b, backend=be, **kw)
                for det in (False, True):
                    getattr(sf, layer + "_backward")(dy, x, w, deterministic=det, backend=be,
                                                     **kw)
for n in (1, 1000, 300001):
    a, b, ga, gb = (rng.standard_normal(n).astype(np.float32) for _ in range(4))
    for be in backends:
        sf.soft_sharing_penalty(a, b, 0.5, grad_a=ga, grad_b=gb, backend=be)
        sf.soft_sharing_penalty(a, b, 0.5, backend=be)
print("ok")
"""


def _sanitizer():
    found = shutil.which("compute-sanitizer")
    for p in ("/usr/local/cuda/bin/compute-sanitizer",
              "/usr/local/cuda/compute-sanitizer/compute-sanitizer"):
        if not found and os.path.exists(p):
            found = p
    return found


@pytest.mark.slow
@pytest.mark.parametrize("tool", ["memcheck", "racecheck"])
def test_compute_sanitizer_clean(tool):
    exe = _sanitizer()
    if exe is None:
        pytest.skip("compute-sanitizer not found")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([exe, "--tool", tool, "--error-exitcode", "99", sys.executable, "-c",
                           _SANITIZE], env=env, capture_output=True, text=True, timeout=1800)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "ok" in proc.stdout, out[-6000:]
    assert "ERROR SUMMARY: 0 errors" in out or "RACECHECK SUMMARY: 0 hazards" in out, out[-3000:]
