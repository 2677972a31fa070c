"""The cupy backend's CUDA C kernels, run on the CPU (tests/_cuda_emu.py: g++, one OS thread per
CUDA thread, NaN guard bands around every array) through the host side they share with the
Numba CUDA backend, against the float64 oracle. Every layer and pass, both dtypes, both weight-
gradient reductions, the production tile menu, a row whose accumulation type is not its storage
type. On a GPU, tests/test_gpu.py runs the same kernels for real."""
import numpy as np
import pytest

import sharenet_fast as sf
from sharenet_fast import _gpu_host as host
from sharenet_fast import _gpu_kernels as decl
from sharenet_fast import config, dtypes, reference
from sharenet_fast.cupy_backend import _loader  # the kernel names (imports no CuPy)
from _support import (DTYPE_IDS, DTYPES, SHAPES, SHAPES_BY_ID, SHAPE_IDS, UNTIED_BY_ID,
                      UNTIED_CASES, UNTIED_IDS, Case, assert_close, random_array, rel_err)
import _cuda_emu

if _cuda_emu.CXX is None:
    pytest.skip("no C++ compiler to build the emulated kernels", allow_module_level=True)


@pytest.fixture(scope="module")
def emu():
    return _cuda_emu.build(config.CUDA_TILE_MENU_GPU)


@pytest.fixture
def dev(emu, monkeypatch):
    """The emulated device with the production configuration, chunks shortened so the suite's
    small cases still reduce over several chunks (atomics, partials)."""
    monkeypatch.setattr(config, "CUDA_TILE_MENU", config.CUDA_TILE_MENU_GPU)
    monkeypatch.setattr(config, "CUDA_BIAS_THREADS", _cuda_emu.BIAS_THREADS)
    monkeypatch.setattr(config, "CUDA_PENALTY_THREADS", _cuda_emu.PENALTY_THREADS)
    monkeypatch.setattr(config, "CUDA_WGRAD_CHUNK", 24)
    return _cuda_emu.EmuDevice(*emu)


def _check_layer(dev, layer, case, tile, dtype, seed):
    """All passes of one layer through the shared host launchers vs the oracle."""
    g = case.geometry
    kw = case.kw
    rng = np.random.default_rng(seed)
    x = random_array(rng, g.x_shape, dtype)
    dy = random_array(rng, g.y_shape, dtype)
    w = random_array(rng, tile + g.w_shape, dtype)
    b = random_array(rng, tile + (g.K,), dtype)
    # the oracle's shapes: conv2d's weight has no grid
    wr, br = (w.reshape(g.w_shape), b.reshape(g.K)) if layer == "conv2d" else (w, b)
    ref_dx, ref_dw, ref_db = getattr(reference, layer + "_backward")(dy, x, wr, **kw)
    assert_close(host.forward(dev, x, w, b, g, tile),
                 getattr(reference, layer)(x, wr, br, **kw), dtype, f"{layer} forward")
    assert_close(host.forward(dev, x, w, None, g, tile),
                 getattr(reference, layer)(x, wr, None, **kw), dtype, f"{layer} no bias")
    assert_close(host.input_grad(dev, dy, w, g, tile), ref_dx, dtype, f"{layer} input grad")
    for det in (False, True):
        dw = host.weight_grad(dev, dy, x, g, tile, tile + g.w_shape, None, det)
        assert_close(dw.reshape(wr.shape), ref_dw, dtype, f"{layer} weight grad det={det}")
        acc = random_array(rng, tile + g.w_shape, dtype)
        start = acc.copy()
        host.weight_grad(dev, dy, x, g, tile, tile + g.w_shape, acc, det)
        assert_close((acc - start).reshape(wr.shape), ref_dw, dtype,
                     f"{layer} weight grad accumulated det={det}")
    db = host.bias_grad(dev, dy, tile, tile + (g.K,))
    assert_close(db.reshape(ref_db.shape), ref_db, dtype, f"{layer} bias grad")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", SHAPES, ids=SHAPE_IDS)
def test_conv2d_emulated(dev, case, dtype):
    _check_layer(dev, "conv2d", case, (1, 1), dtype, seed=41)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("layer", ["tiled_conv2d", "local2d"])
@pytest.mark.parametrize("uc", UNTIED_CASES, ids=UNTIED_IDS)
def test_untied_emulated(dev, uc, layer, dtype):
    g = uc.case.geometry
    tile = tuple(uc.tile) if layer == "tiled_conv2d" else (g.P, g.Q)
    _check_layer(dev, layer, uc.case, tile, dtype, seed=42)


# groups: filter and channel blocks run group by group (a block never spans two groups), the
# reduction over one group's channels (or, in the input gradient, its filters)
GROUPED = [
    (Case("g2_pad1", 2, 4, 9, 8, 6, 3, 3, padding=1, groups=2), (2, 2)),
    (Case("depthwise_m2_s2", 2, 3, 11, 11, 6, 3, 3, stride=2, padding=1, groups=3), (2, 3)),
    (Case("g4_Kg1_dil", 3, 8, 9, 9, 4, 3, 2, padding=2, dilation=2, groups=4), (3, 2)),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("layer", ["conv2d", "tiled_conv2d", "local2d"])
@pytest.mark.parametrize("case, tile", GROUPED, ids=[c.id for c, _ in GROUPED])
def test_grouped_emulated(dev, case, tile, layer, dtype):
    g = case.geometry
    tile = {"conv2d": (1, 1), "tiled_conv2d": tile, "local2d": (g.P, g.Q)}[layer]
    _check_layer(dev, layer, case, tile, dtype, seed=43)


# (layer, shape) pairs that make pick_tiles choose every tile of the production menu
TILE_CASES = [
    ("conv2d", Case("k96_wide", 2, 3, 39, 39, 96, 11, 11, stride=4)),   # K = 96, C = 3
    ("conv2d", Case("k16", 2, 16, 12, 12, 16, 3, 3, padding=1)),        # K = C = 16
    ("conv2d", Case("k64", 2, 8, 12, 12, 64, 3, 3, padding=1)),         # the general tile
    ("local2d", Case("local_b8", 8, 3, 15, 15, 96, 11, 11, stride=4)),  # 8 columns
    ("local2d", Case("local_b16", 16, 3, 15, 15, 96, 11, 11, stride=4)),
]


def test_every_production_tile_runs_correctly(dev):
    for layer, case in TILE_CASES:
        g = case.geometry
        _check_layer(dev, layer, case, (1, 1) if layer == "conv2d" else (g.P, g.Q),
                     np.float32, seed=43)
    used = set()
    for n in dev.launched:
        t = _loader.template_args(n)
        if "BM" in t:
            used.add(",".join(t[p] for p in ("BM", "BN", "BK", "TM", "TN")))
    menu = {",".join(map(str, t)) for t in config.CUDA_TILE_MENU_GPU}
    assert used == menu, f"tiles never run: {sorted(menu - used)}"


@pytest.mark.parametrize("grads", ["both", "a", "none"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_soft_sharing_penalty_emulated(dev, dtype, grads, monkeypatch):
    """kernels/sharing.cu at the production block size, with 3 blocks so the grid-stride loop
    wraps several times and the partials reduce across blocks."""
    monkeypatch.setattr(config, "CUDA_PENALTY_BLOCKS", 3)
    rng = np.random.default_rng(44)
    n = 3 * _cuda_emu.PENALTY_THREADS * 4 + 37
    a, b = (rng.standard_normal(n).astype(dtype) for _ in range(2))
    ga = rng.standard_normal(n).astype(dtype) if grads != "none" else None
    gb = rng.standard_normal(n).astype(dtype) if grads == "both" else None
    ga0, gb0 = (None if g is None else g.copy() for g in (ga, gb))
    out = host.soft_sharing_penalty(dev, a, b, 0.8, ga, gb)
    want, da, db = reference.soft_sharing_penalty(a, b, 0.8)
    assert abs(out[0] - want) <= (1e-6 if dtype == np.float32 else 1e-12) * want
    if ga is not None:
        assert_close(ga, ga0 + da, dtype, "grad_a")
    if gb is not None:
        assert_close(gb, gb0 + db, dtype, "grad_b")
    again = host.soft_sharing_penalty(dev, a, b, 0.8)
    assert again[0] == host.soft_sharing_penalty(dev, a, b, 0.8)[0]      # same bits
    assert any(n.startswith("soft_sharing_reduce_kernel<256>") for n in dev.launched)


def test_guard_bands_catch_an_out_of_bounds_write(dev):
    """The emulator's own check: a launch with more blocks than partials (each block writes
    partials[block]) fails."""
    dt = decl.row("float32")
    a = np.ones(10, np.float32)
    args = decl.pack("penalty", dt, dict(a=a, b=a, strength=1.0, grad_a=a, grad_b=a, has_a=0,
                                         has_b=0, n=a.size, partials=np.zeros(2)))
    with pytest.raises(AssertionError, match="wrote outside an array"):
        dev.launch("penalty", dt, None, 3, _cuda_emu.PENALTY_THREADS, a, args)
    assert sf.backends()  # the package is untouched by the failure


def test_emulator_refuses_arguments_unlike_their_declaration(dev):
    """Each argument is handed over as its declared type: an array of the wrong element dtype
    where the declaration says double* is refused before the kernel runs."""
    dt = decl.row("float32")
    a = np.ones(10, np.float32)
    args = list(decl.pack("penalty", dt, dict(a=a, b=a, strength=1.0, grad_a=a, grad_b=a,
                                              has_a=0, has_b=0, n=a.size,
                                              partials=np.zeros(1))))
    args[-1] = np.zeros(1, np.float32)
    with pytest.raises(AssertionError, match="partials"):
        dev.launch("penalty", dt, None, 1, _cuda_emu.PENALTY_THREADS, a, tuple(args))


def test_accumulation_type_is_a_template_argument(monkeypatch):
    """The CUDA C kernels instantiated for float storage with double accumulation (the shape of
    a bfloat16 row: a DType row, no new code) sum 2**24 + 16 exactly in every pass where the
    float row gives 2**24."""
    tile = config.CUDA_TILE_MENU_GPU[0]
    monkeypatch.setattr(config, "CUDA_TILE_MENU", (tile,))
    monkeypatch.setattr(config, "CUDA_BIAS_THREADS", _cuda_emu.BIAS_THREADS)
    monkeypatch.setattr(config, "CUDA_PENALTY_THREADS", _cuda_emu.PENALTY_THREADS)
    f32 = decl.row("float32")
    dev = _cuda_emu.EmuDevice(*_cuda_emu.build((tile,), rows=[_cuda_emu.F32_ACC64, f32]))
    assert _cuda_emu.accumulation_probe(dev, _cuda_emu.F32_ACC64) == _cuda_emu.EXACT
    assert any(n.startswith("conv2d_wgrad_reduce_kernel<float,double,float>") for n in dev.launched)
    assert _cuda_emu.accumulation_probe(dev, f32)["forward"] == 2.0**24


# ------------------------------------------------------------ reduced storage: bfloat16, float16
REDUCED = [dtypes.DTYPES["bfloat16"], dtypes.DTYPES["float16"]]
REDUCED_CASES = [
    ("conv2d", SHAPES_BY_ID["alexnet_s4_k11"], None),
    ("conv2d", SHAPES_BY_ID["pad1_3x3"], None),
    # C*R*S = 72, a multiple of 8: the forward reads W as 16-byte vectors of 8
    ("conv2d", Case("vec8", 2, 8, 9, 9, 6, 3, 3, padding=1), None),
    ("local2d", Case("vec8", 2, 8, 9, 9, 6, 3, 3, padding=1), None),
    ("local2d", SHAPES_BY_ID["alexnet_s4_k11"], None),
    ("tiled_conv2d", SHAPES_BY_ID["wgrad_chunks"], (4, 3)),
    ("tiled_conv2d", UNTIED_BY_ID["batch13"].case, (2, 2)),
]


def _check_reduced(dev, layer, case, tile, dt, seed):
    """Every pass of one layer in a 16-bit storage dtype: the float32 result (O = A) within
    float32's bound of the float64 oracle on the rounded inputs; the stored result (O = T) that
    float32 result rounded to nearest even, bit for bit; float32 master gradients added into in
    float32, 16-bit ones rounded once (owner blocks, staged atomics and partials alike)."""
    g, kw = case.geometry, case.kw
    rng = np.random.default_rng(seed)
    x, dy = (random_array(rng, s).astype(dt.storage) for s in (g.x_shape, g.y_shape))
    w = random_array(rng, tile + g.w_shape).astype(dt.storage)
    b = random_array(rng, tile + (g.K,)).astype(dt.storage)
    f64 = lambda a: a.astype(np.float64)
    wr, br = (w.reshape(g.w_shape), b.reshape(g.K)) if layer == "conv2d" else (w, b)
    ref_y = getattr(reference, layer)(f64(x), f64(wr), f64(br), **kw)
    ref_dx, ref_dw, ref_db = getattr(reference, layer + "_backward")(f64(dy), f64(x), f64(wr),
                                                                      **kw)

    def both(run, ref, what):
        wide, out = run(np.float32), run(None)
        assert wide.dtype == np.float32 and out.dtype == dt.storage, what
        err = rel_err(wide.reshape(ref.shape), ref)
        assert err <= dt.out_tol, f"{what} float32 result: rel err {err:.3g}"
        np.testing.assert_array_equal(out.view(np.uint16), wide.astype(dt.storage).view(np.uint16),
                                      err_msg=f"{what}: not the float32 result rounded once")
        return wide

    both(lambda o: host.forward(dev, x, w, b, g, tile, o), ref_y, f"{layer} forward")
    both(lambda o: host.input_grad(dev, dy, w, g, tile, o), ref_dx, f"{layer} input")
    both(lambda o: host.bias_grad(dev, dy, tile, tile + (g.K,), None, o), ref_db, f"{layer} bias")
    shape = tile + g.w_shape
    for det in (False, True):
        what = f"{layer} weight det={det}"
        wide = both(lambda o: host.weight_grad(dev, dy, x, g, tile, shape, None, det, o), ref_dw,
                    what)
        master = rng.uniform(-1, 1, shape).astype(np.float32)
        start = master.copy()
        host.weight_grad(dev, dy, x, g, tile, shape, master, det)
        err = rel_err(master, f64(start) + ref_dw.reshape(shape))
        assert err <= dt.out_tol, f"{what} into a float32 master buffer: rel err {err:.3g}"
        red = start.astype(dt.storage)
        want = (red.astype(np.float32) + wide).astype(dt.storage)
        host.weight_grad(dev, dy, x, g, tile, shape, red, det)
        np.testing.assert_array_equal(red.view(np.uint16), want.view(np.uint16),
                                      err_msg=f"{what} into a {dt.name} buffer: not one rounding")


@pytest.mark.parametrize("dt", REDUCED, ids=[d.name for d in REDUCED])
@pytest.mark.parametrize("layer,case,tile", REDUCED_CASES,
                         ids=[f"{layer}-{c.id}" for layer, c, _ in REDUCED_CASES])
def test_reduced_storage_emulated(dev, layer, case, tile, dt):
    g = case.geometry
    tile = tile or ((1, 1) if layer == "conv2d" else (g.P, g.Q))
    _check_reduced(dev, layer, case, tile, dt, seed=45)
    modes = {_loader.template_args(n)["O"] for n in dev.launched if "wgrad_kernel" in n}
    assert modes == {dt.ctype, dt.accum_ctype}


@pytest.mark.parametrize("grads", ["same", "master", "mixed", "none"])
@pytest.mark.parametrize("dt", REDUCED, ids=[d.name for d in REDUCED])
def test_soft_sharing_penalty_reduced_emulated(dev, dt, grads, monkeypatch):
    """16-bit a and b: the penalty in float64 from float32 differences; gradients in the
    storage dtype, in float32 (master), or one of each (the 16-bit one staged)."""
    monkeypatch.setattr(config, "CUDA_PENALTY_BLOCKS", 3)
    rng = np.random.default_rng(46)
    n = 3 * _cuda_emu.PENALTY_THREADS * 2 + 11
    a, b = (rng.standard_normal(n).astype(dt.storage) for _ in range(2))
    kinds = {"same": (dt.storage, dt.storage), "master": (np.float32, np.float32),
             "mixed": (dt.storage, np.float32), "none": (None, None)}[grads]
    ga, gb = (None if k is None else rng.standard_normal(n).astype(k) for k in kinds)
    ga0, gb0 = (None if v is None else v.astype(np.float64) for v in (ga, gb))
    out = host.soft_sharing_penalty(dev, a, b, 0.8, ga, gb)
    want, da, db = reference.soft_sharing_penalty(a.astype(np.float64), b.astype(np.float64), 0.8)
    assert abs(out[0] - want) <= 1e-6 * want
    for got, start, step in ((ga, ga0, da), (gb, gb0, db)):
        if got is not None:
            tol = dt.tol if got.dtype == dt.storage else dt.out_tol
            assert rel_err(got, start + step) <= tol, got.dtype


# neighbour soft sharing and bank averaging: the CUDA C kernels through the shared host side
@pytest.mark.parametrize("dtype", ["float32", "float64", "bfloat16"])
@pytest.mark.parametrize("metric,neighbourhood,wrap",
                         [("l2", 4, False), ("l2", 8, True), ("cosine", 4, True),
                          ("cosine", 8, False)], ids=["l2-4", "l2-8-wrap", "cos-4-wrap", "cos-8"])
def test_neighbour_penalty_emulated(dev, metric, neighbourhood, wrap, dtype):
    row = dtypes.lookup(dtype)
    rng = np.random.default_rng(44)
    for grid in ((3, 4), (2, 1)):
        w = random_array(rng, grid + (2, 2, 3, 2), row.storage)
        w[0, 0, 1] = 0                                     # a zero filter
        want, dw = reference.neighbour_penalty(w, 0.4, metric, neighbourhood, wrap)
        for gdtype in dict.fromkeys((row.storage, row.accum)):
            start = random_array(rng, w.shape, gdtype)
            buf = start.copy()
            got = host.neighbour_penalty(dev, w, 0.4, metric, neighbourhood, wrap, buf)
            assert abs(float(got[0]) - want) <= row.tol * max(1.0, abs(want))
            assert rel_err(buf, start.astype(np.float64) + dw) <= dtypes.tol(gdtype)
        alone = host.neighbour_penalty(dev, w, 0.4, metric, neighbourhood, wrap, None)
        assert float(alone[0]) == float(got[0])           # the same sum, the same order


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("groups_of", [(5, 7), (2, 3), (1, 1)], ids=["all", "2x3", "1x1"])
def test_average_banks_emulated(dev, groups_of, dtype):
    row = dtypes.lookup(dtype)
    w = random_array(np.random.default_rng(45), (5, 7, 2, 3, 2, 1), row.storage)
    want = reference.average_banks(w, groups_of)
    out = np.full_like(w, np.nan)
    assert host.average_banks(dev, w, groups_of, out) is out
    assert rel_err(out, want) <= row.tol
    inplace = w.copy()
    host.average_banks(dev, inplace, groups_of, inplace)
    assert np.array_equal(inplace, out)


def test_cosine_eps_is_the_oracles():
    import os
    import re
    src = open(os.path.join(_loader.kernel_dir(), "sharing.cu")).read()
    eps = float(re.search(r"#define SHARENET_COSINE_EPS (\S+)", src).group(1))
    assert eps == reference.COSINE_EPS
