"""neighbour_penalty: the float64 oracle against finite differences, the CPU and reference
backends against the oracle in every storage dtype (gradients added into random buffers),
fixed bits, bad input, and the differentiable torch function."""
import numpy as np
import pytest

import sharenet_fast as sf
from sharenet_fast import dtypes, reference as ref
from _support import random_array, rel_err

GRIDS = [(3, 4), (1, 1), (2, 1), (1, 3), (2, 2), (5, 3)]
CASES = [(m, n, w) for m in ("l2", "cosine") for n in (4, 8) for w in (False, True)]
IDS = [f"{m}-n{n}-{'wrap' if w else 'edge'}" for m, n, w in CASES]


@pytest.mark.parametrize("metric,neighbourhood,wrap", CASES, ids=IDS)
def test_oracle_gradient_is_the_finite_difference(metric, neighbourhood, wrap):
    rng = np.random.default_rng(1)
    for grid in GRIDS:
        w = random_array(rng, grid + (3, 2, 2, 3))
        _, g = ref.neighbour_penalty(w, 0.7, metric, neighbourhood, wrap)
        for _ in range(6):
            i = tuple(int(rng.integers(0, s)) for s in w.shape)
            wp, wm = w.copy(), w.copy()
            wp[i] += 1e-6
            wm[i] -= 1e-6
            fd = (ref.neighbour_penalty(wp, 0.7, metric, neighbourhood, wrap)[0]
                  - ref.neighbour_penalty(wm, 0.7, metric, neighbourhood, wrap)[0]) / 2e-6
            assert abs(fd - g[i]) <= 1e-6 * max(1.0, abs(fd)), (grid, i, fd, g[i])


def test_oracle_counts_pairs_as_documented():
    """A 2 x 3 grid: 4-neighbourhood 3 + 4 = 7 pairs; 8 adds 2 + 2 diagonals; wrap: every
    (position, direction), 12 and 24; l2 of banks equal but one is that bank's distance to
    its neighbours only."""
    assert len(ref.neighbour_pairs((2, 3), 4, False)) == 7
    assert len(ref.neighbour_pairs((2, 3), 8, False)) == 11
    assert len(ref.neighbour_pairs((2, 3), 4, True)) == 12
    assert len(ref.neighbour_pairs((2, 3), 8, True)) == 24
    for grid in GRIDS + [(1, 5), (4, 2)]:
        for n, wrap in ((4, False), (4, True), (8, False), (8, True)):
            assert ref.neighbour_count(grid, n, wrap) == len(ref.neighbour_pairs(grid, n, wrap))
    w = np.ones((2, 3, 1, 1, 1, 2))
    w[0, 0] += 1.0                                   # differs by (1, 1) from the rest
    penalty, _ = ref.neighbour_penalty(w, 2.0, "l2", 4, False)
    assert penalty == pytest.approx(2.0 / 2 * 2 * 2.0)     # 2 neighbours, |d|^2 = 2 each
    cos, _ = ref.neighbour_penalty(w, 1.0, "cosine", 8, False)
    assert cos == pytest.approx(0.0, abs=1e-12)            # parallel filters: cos = 1


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("dtype", dtypes.NAMES)
@pytest.mark.parametrize("metric,neighbourhood,wrap", CASES, ids=IDS)
def test_backend_matches_oracle(backend, dtype, metric, neighbourhood, wrap):
    row = dtypes.lookup(dtype)
    rng = np.random.default_rng(2)
    for grid in ((3, 4), (1, 2), (4, 1)):
        w = random_array(rng, grid + (3, 2, 3, 5)).astype(row.storage)
        want, dw = ref.neighbour_penalty(w, 0.3, metric, neighbourhood, wrap)
        # gradients added into random buffers: float32 master gradients and storage-dtype ones
        for gdtype in {row.accum, row.storage}:
            start = random_array(rng, w.shape).astype(gdtype)
            buf = start.copy()
            got = sf.neighbour_penalty(w, 0.3, metric=metric, neighbourhood=neighbourhood,
                                       wrap=wrap, grad_weight=buf, backend=backend)
            assert isinstance(got, np.float64)
            assert abs(got - want) <= row.tol * max(1.0, abs(want)), (grid, got, want)
            expect = start.astype(np.float64) + dw
            assert rel_err(buf.astype(np.float64), expect) <= dtypes.tol(gdtype), grid
        alone = sf.neighbour_penalty(w, 0.3, metric=metric, neighbourhood=neighbourhood,
                                     wrap=wrap, backend=backend)
        # (the penalty alone runs its own loop: the same sum, vectorised in another order)
        assert alone == pytest.approx(got, rel=row.tol)


def test_same_bits_every_run_and_strided_buffer():
    rng = np.random.default_rng(3)
    w = random_array(rng, (6, 5, 4, 3, 3, 3), np.float32)
    runs = [sf.neighbour_penalty(w, 0.1, metric="cosine", neighbourhood=8) for _ in range(3)]
    assert runs[0] == runs[1] == runs[2]
    big = random_array(rng, (6, 5, 8, 3, 3, 3), np.float32)
    view, start = big[:, :, ::2], big[:, :, ::2].copy()      # a strided grad_weight
    sf.neighbour_penalty(w, 0.1, grad_weight=view)
    _, dw = ref.neighbour_penalty(w, 0.1)
    assert rel_err(view.astype(np.float64), start + dw) <= dtypes.tol(np.float32)
    assert np.array_equal(big[:, :, 1::2], big[:, :, 1::2])


def test_penalty_grows_as_neighbours_differ():
    rng = np.random.default_rng(4)
    base = random_array(rng, (1, 1, 2, 2, 3, 3))
    smooth = np.broadcast_to(base, (4, 4) + base.shape[2:]).copy()
    rough = smooth + 0.5 * random_array(rng, smooth.shape)
    for metric in ("l2", "cosine"):
        assert sf.neighbour_penalty(smooth, 1.0, metric=metric) == pytest.approx(0.0, abs=1e-9)
        assert sf.neighbour_penalty(rough, 1.0, metric=metric) > 1e-3


def test_bad_input_names_the_argument():
    w = np.ones((2, 2, 1, 1, 2, 2), np.float32)
    cases = [
        (dict(weight=np.ones((2, 2, 2, 2), np.float32)), ValueError, "banked"),
        (dict(strength=-1.0), ValueError, "strength"),
        (dict(strength=float("nan")), ValueError, "strength"),
        (dict(strength="1"), TypeError, "strength"),
        (dict(metric="l1"), ValueError, "metric"),
        (dict(neighbourhood=6), ValueError, "neighbourhood"),
        (dict(neighbourhood=True), ValueError, "neighbourhood"),
        (dict(wrap=1), TypeError, "wrap"),
        (dict(grad_weight=np.zeros((2, 2, 1, 1, 2, 3), np.float32)), ValueError, "grad_weight"),
        (dict(grad_weight=np.zeros(w.shape, np.float64)), TypeError, "grad_weight"),
        (dict(grad_weight=w), ValueError, "overlaps"),
        (dict(weight=w.astype(np.int32)), TypeError, "weight"),
        (dict(weight=[[1.0]]), TypeError, "weight"),
        (dict(backend="nope"), ValueError, "backend"),
    ]
    for change, exc, word in cases:
        kw = dict(weight=w, strength=1.0) | change
        weight, strength = kw.pop("weight"), kw.pop("strength")
        with pytest.raises(exc, match=word):
            sf.neighbour_penalty(weight, strength, **kw)
    ro = np.zeros(w.shape, np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        sf.neighbour_penalty(w, 1.0, grad_weight=ro)


GPU_BACKENDS = [n for n, why in sf.backends().items()
                if why == "available" and n in sf.registry.GPU]


@pytest.mark.parametrize("backend", GPU_BACKENDS or ["none"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("metric,neighbourhood,wrap", CASES, ids=IDS)
def test_gpu_backend_matches_oracle(backend, dtype, metric, neighbourhood, wrap):
    """The GPU kernels (numba-cuda here on the simulator; cupy's CUDA C on the g++ emulator:
    test_cupy_emulated.py) on a grid with a zero filter, edges and a 1-wide axis; float32 and
    bfloat16 with float32 master gradients (every dtype runs on a GPU: tests/test_gpu.py)."""
    if backend == "none":
        pytest.skip("no GPU backend importable here")
    row = dtypes.lookup(dtype)
    rng = np.random.default_rng(3)
    for grid in ((3, 4), (1, 3)):
        w = random_array(rng, grid + (2, 2, 2, 3)).astype(row.storage)
        w[0, 0, 1] = 0                                     # a zero filter: cosine defined
        want, dw = ref.neighbour_penalty(w, 0.3, metric, neighbourhood, wrap)
        start = random_array(rng, w.shape).astype(row.accum)
        buf = start.copy()
        got = sf.neighbour_penalty(w, 0.3, metric=metric, neighbourhood=neighbourhood,
                                   wrap=wrap, grad_weight=buf, backend=backend)
        assert isinstance(got, np.float64)
        assert abs(got - want) <= row.tol * max(1.0, abs(want)), (grid, got, want)
        assert rel_err(buf.astype(np.float64), start.astype(np.float64) + dw) <= row.out_tol


def test_torch_function_is_differentiable():
    torch = pytest.importorskip("torch")
    sft = pytest.importorskip("sharenet_fast.torch")
    rng = np.random.default_rng(5)
    w = torch.tensor(random_array(rng, (3, 2, 2, 2, 2, 2)), requires_grad=True)
    for metric in ("l2", "cosine"):
        assert torch.autograd.gradcheck(
            lambda t: sft.neighbour_penalty(t, 0.4, metric=metric, neighbourhood=8, wrap=True),
            (w,))
        p = sft.neighbour_penalty(w, 0.4, metric=metric)
        (g,) = torch.autograd.grad(3.0 * p, w)
        want, dw = ref.neighbour_penalty(w.detach().numpy(), 0.4, metric)
        assert float(p.detach()) == pytest.approx(want, rel=1e-12)
        assert np.allclose(g.numpy(), 3.0 * dw, rtol=1e-12, atol=1e-14)


def test_benchmark_runs_and_checks(capsys):
    from bench import neighbour

    assert neighbour.main(["--grid", "3", "4", "--bank", "2", "2", "3", "3", "--repeat", "1",
                           "--read-mb", "8"]) == 0
    out = capsys.readouterr().out.splitlines()
    rows = [line for line in out if line.startswith("| l2") or line.startswith("| cosine")]
    averages = [line for line in out if line.startswith("| all") or line.startswith("| (2, 2)")]
    assert len(averages) == 2 and all(float(r.split("|")[-2]) < 1e-6 for r in averages)
    assert len(rows) == 8
    assert all(float(r.split("|")[-2]) < 1e-5 for r in rows)


# ------------------------------------------------------------------------- average_banks
@pytest.mark.parametrize("backend", ["cpu", "reference"] + GPU_BACKENDS)
@pytest.mark.parametrize("dtype", dtypes.NAMES)
@pytest.mark.parametrize("groups_of", ["all", (2, 3), (1, 1), (3, 1), (10, 10)],
                         ids=["all", "2x3", "1x1", "3x1", "past-grid"])
def test_average_banks_matches_oracle(backend, dtype, groups_of):
    row = dtypes.lookup(dtype)
    rng = np.random.default_rng(6)
    w = random_array(rng, (5, 7, 3, 2, 3, 3)).astype(row.storage)
    want = ref.average_banks(w, (5, 7) if groups_of == "all" else groups_of)
    out = np.full_like(w, np.nan)                                  # poisoned
    assert sf.average_banks(w, groups_of=groups_of, out=out, backend=backend) is out
    assert rel_err(out.astype(np.float64), want) <= row.tol
    inplace = w.copy()
    assert sf.average_banks(inplace, groups_of=groups_of, backend=backend) is inplace
    assert np.array_equal(inplace, out, equal_nan=True)


def test_average_banks_in_place_on_a_strided_weight_and_the_layer_becomes_a_conv():
    rng = np.random.default_rng(7)
    big = random_array(rng, (4, 4, 4, 2, 3, 3), np.float32)
    w = big[:, :, ::2]                                   # a strided view, averaged in place
    untouched = big[:, :, 1::2].copy()
    sf.average_banks(w)
    assert np.array_equal(big[:, :, 1::2], untouched)
    x = random_array(rng, (2, 2, 6, 6), np.float32)      # 6x6 input, 3x3 kernel: P = Q = 4
    y_local = sf.local2d(x, np.ascontiguousarray(w))
    y_conv = sf.conv2d(x, np.ascontiguousarray(w[0, 0]))
    assert rel_err(y_local, y_conv) <= dtypes.tol(np.float32)


def test_average_banks_bad_input():
    w = np.ones((2, 2, 1, 1, 2, 2), np.float32)
    for kw, exc, word in [(dict(groups_of="some"), ValueError, "groups_of"),
                          (dict(groups_of=(0, 1)), ValueError, "groups_of"),
                          (dict(groups_of=1.5), TypeError, "groups_of"),
                          (dict(out=np.zeros((2, 2, 1, 1, 2, 3), np.float32)), ValueError,
                           "out"),
                          (dict(out=np.zeros(w.shape, np.float64)), TypeError, "out"),
                          (dict(out=w.reshape(-1)[::-1].reshape(w.shape)), ValueError,
                           "overlaps")]:
        with pytest.raises(exc, match=word):
            sf.average_banks(w, **kw)
    with pytest.raises(ValueError, match="banked"):
        sf.average_banks(np.ones((2, 2, 2, 2), np.float32))
    ro = w.copy()
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        sf.average_banks(ro)


def test_torch_bank_averager_every_k_steps():
    torch = pytest.importorskip("torch")
    sft = pytest.importorskip("sharenet_fast.torch")
    torch.manual_seed(0)
    lc = sft.LocallyConnected2d(2, 3, 3, input_size=(6, 6))
    tiled = sft.TiledConv2d(2, 3, 3, tiles=(2, 2))
    averager = sft.BankAverager([lc, tiled.weight], every=3, groups_of=(2, 2))
    before = lc.weight.detach().clone()
    assert [averager.step() for _ in range(3)] == [False, False, True]
    want = ref.average_banks(before.numpy(), (2, 2))
    assert np.allclose(lc.weight.detach().numpy(), want, rtol=1e-6, atol=1e-7)
    assert lc.weight.requires_grad and lc.weight.grad is None
    with pytest.raises(ValueError, match="every"):
        sft.BankAverager([lc], every=0)
    with pytest.raises(ValueError, match="banked"):
        sft.BankAverager([torch.nn.Conv2d(2, 3, 3)], every=1)
