"""The cupy backend without a GPU: every kernels/*.cu compiled by NVRTC for compute_90, every
instance the host side can request present, no local memory, and the wheel carrying the
sources. (With a GPU, tests/test_gpu.py runs it against the oracle.)"""
import os
import re
import subprocess
import sys
import zipfile

import numpy as np
import pytest

import sharenet_fast as sf
from sharenet_fast import _gpu_host as host
from sharenet_fast import config

cupy = pytest.importorskip("cupy", reason="cupy not installed (pip install 'sharenet_fast[cupy]')")
from sharenet_fast.cupy_backend import _loader  # noqa: E402
import _cuda_emu  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(sf.__file__)))


@pytest.fixture(scope="module")
def compiled():
    """The production instances (the GPU tile menu, whatever menu this process runs)."""
    try:
        return _loader.compile_ptx("compute_90", _loader.name_expressions(
            config.CUDA_TILE_MENU_GPU, 128, config.CUDA_PENALTY_THREADS_GPU))
    except (OSError, ImportError) as exc:     # libnvrtc missing: say so, do not pass silently
        pytest.skip(f"NVRTC not loadable: {exc}")


def test_every_instance_compiles_for_compute_90(compiled):
    lowered, ptx, log = compiled
    names = _loader.name_expressions(config.CUDA_TILE_MENU_GPU, 128,
                                     config.CUDA_PENALTY_THREADS_GPU)
    assert set(lowered) == set(names) and len(names) == len(set(names))
    entries = _loader.ptx_entries(ptx, lowered)
    assert set(entries) == set(names), "an instance has no kernel entry in the PTX"
    assert ".target sm_90" in (ptx.decode() if isinstance(ptx, bytes) else ptx)
    for name, text in entries.items():
        # fragments, accumulators and the hoisted decodes stay in registers
        assert "__local_depot" not in text, f"{name} uses local memory"
        if name.startswith("conv2d_wgrad_kernel"):
            assert "atom.global.add" in text or "red.global.add" in text, name
        if name.startswith("soft_sharing"):      # deterministic: partials, never atomics
            assert not re.search(r"\b(?:atom|red)\.", text), name
    assert "soft_sharing_penalty_kernel<float,256>" in entries


def test_instances_cover_every_tile_and_dtype():
    names = set(_loader.name_expressions())
    for dtype in ("float32", "float64"):
        for tiles in config.CUDA_TILE_MENU:
            assert _loader.name("dgrad", dtype, tuple(tiles)) in names
            for k in _loader.SIZED:
                for ksize in [(0, 0), (2, 7)] + list(config.CUDA_KERNEL_SIZES):
                    assert _loader.name(k, dtype, tuple(tiles), ksize=ksize) in names
        assert _loader.name("fwd", dtype, (64, 64, 8, 4, 4), ksize=(3, 3)).endswith(",3,3>")
        assert _loader.name("fwd", dtype, (64, 64, 8, 4, 4), ksize=(2, 7)).endswith(",0,0>")
        for k in ("bgrad", "wgrad_reduce", "fill"):
            assert _loader.name(k, dtype, bias_threads=config.CUDA_BIAS_THREADS) in names
        assert _loader.name("penalty", dtype) in names
    assert _loader.name("penalty_reduce", "float64") in names


class _RecordingDevice(_cuda_emu.EmuDevice):
    """The emulator's NumPy `dev` for _gpu_host, recording what would be launched instead of
    running it (no compiler needed)."""

    def __init__(self):
        super().__init__(lib=None, entries={})

    def launch(self, name, dtype, tiles, grid, threads, like, *args, ksize=None):
        self.launched.append((_loader.name(name, np.dtype(dtype).name, tiles,
                                           config.CUDA_BIAS_THREADS, ksize), grid, threads, args))


@pytest.mark.parametrize("menu", ["gpu", "sim"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_host_side_requests_only_compiled_instances(dtype, menu, monkeypatch):
    """Drive the shared host launchers over layers, tiles and batch sizes that select every
    tile of the menu; every kernel they ask for is an instance the module compiles, and every
    block size matches that instance's template (threads = BM/TM * BN/TN, bias <= NB)."""
    monkeypatch.setattr(config, "CUDA_TILE_MENU", getattr(config, f"CUDA_TILE_MENU_{menu.upper()}"))
    names = set(_loader.name_expressions())
    dev = _RecordingDevice()
    shapes = [(8, 3, 227, 227, 96, 11, 11, 4, 0), (2, 16, 20, 20, 16, 9, 9, 1, 0),
              (4, 64, 12, 12, 64, 3, 3, 1, 1), (64, 3, 23, 23, 5, 11, 11, 4, 0),
              (16, 3, 23, 23, 96, 11, 11, 4, 0), (1, 2, 5, 6, 3, 2, 3, 2, 1)]
    for N, C, H, W, K, R, S, st, pd in shapes:
        g = sf.ConvGeometry.make(N, C, H, W, K, R, S, st, pd, 1)
        for tile in ((1, 1), (2, 2), (g.P, g.Q)):
            x, dy = np.empty(g.x_shape, dtype), np.empty(g.y_shape, dtype)
            w = np.empty(tile + g.w_shape, dtype)
            host.forward(dev, x, w, None, g, tile)
            host.input_grad(dev, dy, w, g, tile)
            for det in (False, True):
                host.weight_grad(dev, dy, x, g, tile, tile + g.w_shape, None, det)
            host.bias_grad(dev, dy, tile, tile + (g.K,))
    used = {n for n, *_ in dev.launched}
    assert used <= names, sorted(used - names)
    tiled_used = {",".join(n.split("<")[1].rstrip(">").split(",")[1:6]) for n in used
                  if n.split("<")[0].endswith(("fwd_kernel", "wgrad_kernel", "dgrad_kernel"))}
    assert len(tiled_used) == len(config.CUDA_TILE_MENU), "some menu tile was never chosen"
    for n, grid, threads, _ in dev.launched:
        if n.startswith(("conv2d_fwd", "conv2d_wgrad_kernel", "conv2d_dgrad")):
            BM, BN, _, TM, TN = map(int, n[:-1].split(",")[1:6])
            assert threads == (BM // TM) * (BN // TN), n
        if n.startswith("conv2d_bgrad"):
            assert threads <= config.CUDA_BIAS_THREADS and threads & (threads - 1) == 0


def test_sources_found_in_the_checkout():
    assert os.path.samefile(_loader.kernel_dir(), os.path.join(ROOT, "kernels"))


@pytest.mark.slow
def test_wheel_carries_the_kernels(tmp_path):
    """The wheel ships kernels/ as sharenet_fast/_kernels, and the installed package's loader
    finds them there (not in a repository)."""
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                           str(tmp_path), ROOT], capture_output=True, text=True, timeout=600)
    if proc.returncode and ("Could not find a version" in proc.stderr
                            or "No matching distribution" in proc.stderr):
        pytest.skip(f"cannot fetch the build backend: {proc.stderr.strip()[-300:]}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel,) = tmp_path.glob("sharenet_fast-*.whl")
    with zipfile.ZipFile(wheel) as z:
        files = set(z.namelist())
        z.extractall(tmp_path / "site")
    for f in _loader.SOURCES + _loader.HEADERS:
        assert f"sharenet_fast/_kernels/{f}" in files, sorted(files)
    out = subprocess.run(
        [sys.executable, "-c", "from sharenet_fast.cupy_backend import _loader; "
         "print(_loader.kernel_dir())"], cwd=tmp_path, capture_output=True, text=True,
        env=dict(os.environ, PYTHONPATH=str(tmp_path / "site")), check=True).stdout.strip()
    assert out == str(tmp_path / "site" / "sharenet_fast" / "_kernels")
