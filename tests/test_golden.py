"""Golden outputs made once by PyTorch in float64 (tests/data/make_golden.py): they check the oracle
itself, and every available backend, independently of sharenet_fast.reference."""
import glob
import os

import numpy as np
import pytest

import sharenet_fast as sf
from _support import BACKENDS, DTYPE_IDS, DTYPES, TESTS_DIR, assert_close
from sharenet_fast import reference

GOLDEN = sorted(glob.glob(os.path.join(TESTS_DIR, "data", "golden_*.npz")))
GOLDEN_IDS = [os.path.basename(p)[len("golden_"):-len(".npz")] for p in GOLDEN]
KEYS = {"x", "weight", "bias", "grad_out", "y", "dx", "dw", "db", "stride", "padding", "dilation"}


def load(path):
    with np.load(path) as f:
        g = {k: f[k] for k in f.files}
    kw = {k: tuple(int(v) for v in g.pop(k)) for k in ("stride", "padding", "dilation")}
    return g, kw


def test_golden_files_present_and_small():
    assert len(GOLDEN) >= 4, f"expected >= 4 golden files in tests/data, found {GOLDEN}"
    assert sum(os.path.getsize(p) for p in GOLDEN) < 200_000
    for path in GOLDEN:
        with np.load(path) as f:
            assert set(f.files) == KEYS, path
            assert f["x"].dtype == np.float64


@pytest.mark.parametrize("path", GOLDEN, ids=GOLDEN_IDS)
def test_reference_oracle_matches_golden(path):
    g, kw = load(path)
    assert_close(reference.conv2d(g["x"], g["weight"], g["bias"], **kw), g["y"], np.float64, "y")
    dx, dw, db = reference.conv2d_backward(g["grad_out"], g["x"], g["weight"], **kw)
    assert_close(dx, g["dx"], np.float64, "dx")
    assert_close(dw, g["dw"], np.float64, "dw")
    assert_close(db, g["db"], np.float64, "db")


@pytest.mark.parametrize("path", GOLDEN, ids=GOLDEN_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.sim_one_case
def test_backend_matches_golden(backend, dtype, path):
    g, kw = load(path)
    x, w, b, dy = (g[k].astype(dtype) for k in ("x", "weight", "bias", "grad_out"))
    y = sf.conv2d(x, w, b, backend=backend, **kw)
    assert y.dtype == np.dtype(dtype)
    assert_close(y, g["y"], dtype, "y")
    grads = sf.conv2d_backward(dy, x, w, backend=backend, **kw)
    for name, out in zip(("dx", "dw", "db"), grads):
        assert out.dtype == np.dtype(dtype)
        assert_close(out, g[name], dtype, name)


# ------------------------------------------------------------------ untied and partially tied
# PyTorch float64: local = unfold + einsum, tiled = masked full convolutions (make_golden.py).
UNTIED = sorted(glob.glob(os.path.join(TESTS_DIR, "data", "untied_*.npz")))
UNTIED_IDS = [os.path.basename(p)[len("untied_"):-len(".npz")] for p in UNTIED]
UNTIED_FN = {"local": (reference.local2d, reference.local2d_backward, sf.local2d,
                       sf.local2d_backward),
             "tiled": (reference.tiled_conv2d, reference.tiled_conv2d_backward, sf.tiled_conv2d,
                       sf.tiled_conv2d_backward)}


def load_untied(path):
    g, kw = load(path)
    return str(g.pop("layer")), g, kw


def test_untied_golden_files_present_and_small():
    layers = [load_untied(p)[0] for p in UNTIED]
    assert layers.count("local") >= 2 and layers.count("tiled") >= 2, UNTIED
    assert sum(os.path.getsize(p) for p in UNTIED) < 400_000


@pytest.mark.parametrize("path", UNTIED, ids=UNTIED_IDS)
def test_reference_oracle_matches_untied_golden(path):
    layer, g, kw = load_untied(path)
    fwd, bwd, _, _ = UNTIED_FN[layer]
    assert_close(fwd(g["x"], g["weight"], g["bias"], **kw), g["y"], np.float64, "y")
    for name, out in zip(("dx", "dw", "db"), bwd(g["grad_out"], g["x"], g["weight"], **kw)):
        assert_close(out, g[name], np.float64, name)


@pytest.mark.parametrize("path", UNTIED, ids=UNTIED_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.sim_one_case
def test_backend_matches_untied_golden(backend, dtype, path):
    layer, g, kw = load_untied(path)
    _check_backend(UNTIED_FN[layer], g, kw, backend, dtype)


def _check_backend(fns, g, kw, backend, dtype):
    """A golden file's forward and gradients through the public API on `backend`."""
    _, _, fwd, bwd = fns
    x, w, b, dy = (g[k].astype(dtype) for k in ("x", "weight", "bias", "grad_out"))
    y = fwd(x, w, b, backend=backend, **kw)
    assert y.dtype == np.dtype(dtype)
    assert_close(y, g["y"], dtype, "y")
    for name, out in zip(("dx", "dw", "db"), bwd(dy, x, w, backend=backend, **kw)):
        assert out.dtype == np.dtype(dtype)
        assert_close(out, g[name], dtype, name)


# ---------------------------------------------------------------------------------- grouped
# PyTorch float64: conv2d(groups=), grouped unfold + einsum, masked grouped convs (make_golden.py)
GROUPED = sorted(glob.glob(os.path.join(TESTS_DIR, "data", "grouped_*.npz")))
GROUPED_IDS = [os.path.basename(p)[len("grouped_"):-len(".npz")] for p in GROUPED]
GROUPED_FN = dict(UNTIED_FN, conv=(reference.conv2d, reference.conv2d_backward, sf.conv2d,
                                   sf.conv2d_backward))


def load_grouped(path):
    """(layer, arrays, kw with groups) of a grouped golden file."""
    with np.load(path) as f:
        g = {k: f[k] for k in f.files}
    kw = {k: tuple(int(v) for v in g.pop(k)) for k in ("stride", "padding", "dilation")}
    kw["groups"] = int(g.pop("groups"))
    return str(g.pop("layer")), g, kw


def test_grouped_golden_files_cover_every_layer_and_depthwise():
    found = {(load_grouped(p)[0], "depthwise" in p) for p in GROUPED}
    assert found == {(layer, dw) for layer in ("conv", "local", "tiled") for dw in (0, 1)}
    assert sum(os.path.getsize(p) for p in GROUPED) < 400_000


@pytest.mark.parametrize("path", GROUPED, ids=GROUPED_IDS)
def test_reference_oracle_matches_grouped_golden(path):
    layer, g, kw = load_grouped(path)
    fwd, bwd, _, _ = GROUPED_FN[layer]
    assert_close(fwd(g["x"], g["weight"], g["bias"], **kw), g["y"], np.float64, "y")
    for name, out in zip(("dx", "dw", "db"), bwd(g["grad_out"], g["x"], g["weight"], **kw)):
        assert_close(out, g[name], np.float64, name)


@pytest.mark.parametrize("path", GROUPED, ids=GROUPED_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.sim_one_case
def test_backend_matches_grouped_golden(backend, dtype, path):
    layer, g, kw = load_grouped(path)
    _check_backend(GROUPED_FN[layer], g, kw, backend, dtype)
