"""The cupy backend without a GPU: every kernels/*.cu compiled by NVRTC for compute_90 (needs
CuPy's NVRTC), every __global__ prototype matching its declaration (_gpu_kernels), instance
names, every instance the host side can request present, no local memory, every `dev` a
_gpu_host.Device, and the wheel carrying the sources. (With a GPU, tests/test_gpu.py runs it
against the oracle.)"""
import inspect
import itertools
import os
import re
import subprocess
import sys
import zipfile

import numpy as np
import pytest

import sharenet_fast as sf
from sharenet_fast import _gpu_host as host
from sharenet_fast import _gpu_kernels as decl
from sharenet_fast import config, dtypes
from sharenet_fast.cupy_backend import _loader  # imports no CuPy
import _cuda_emu

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(sf.__file__)))


def _nvrtc_compile(names):
    pytest.importorskip("cupy", reason="cupy not installed (pip install 'sharenet_fast[cupy]')")
    try:
        return _loader.compile_ptx("compute_90", names)
    except (OSError, ImportError) as exc:     # libnvrtc missing: say so, do not pass silently
        pytest.skip(f"NVRTC not loadable: {exc}")


CHUNKS = 8     # NVRTC runs, one per test: pytest-xdist workers compile them side by side


def _production_names():
    return _loader.name_expressions(config.CUDA_TILE_MENU_GPU, 128,
                                    config.CUDA_PENALTY_THREADS_GPU)


def test_production_instances_are_distinct_and_cover_the_penalty():
    names = _production_names()
    assert len(names) == len(set(names))
    assert "soft_sharing_penalty_kernel<float,float,float,256>" in names
    assert "soft_sharing_penalty_kernel<__nv_bfloat16,float,float,256>" in names


@pytest.mark.parametrize("chunk", range(CHUNKS))
def test_every_instance_compiles_for_compute_90(chunk):
    """The production instances (the GPU tile menu, whatever menu this process runs), every
    CHUNKS-th from `chunk` (eight NVRTC runs take no longer than one over all 559)."""
    names = _production_names()[chunk::CHUNKS]
    lowered, ptx, log = _nvrtc_compile(names)
    assert set(lowered) == set(names)
    entries = _loader.ptx_entries(ptx, lowered)
    assert set(entries) == set(names), "an instance has no kernel entry in the PTX"
    assert ".target sm_90" in (ptx.decode() if isinstance(ptx, bytes) else ptx)
    for name, text in entries.items():
        # fragments, accumulators and the hoisted decodes stay in registers
        assert "__local_depot" not in text, f"{name} uses local memory"
        t = _loader.template_args(name)
        if name.startswith("conv2d_wgrad_kernel"):
            # atomics only where the host launches them: into an accumulation-typed result
            atomics = "atom.global.add" in text or "red.global.add" in text
            assert atomics == (t["O"] == t["A"]), name
            assert not re.search(r"\b(?:atom|red)\.global\.add\.(?:bf16|f16|noftz\.bf16)", text)
        if t.get("T") in ("__nv_bfloat16", "__half") and "O" in t:
            f = "bf16" if t["T"] == "__nv_bfloat16" else "f16"
            if "BM" in t or name.startswith("soft_sharing_pen"):
                assert f"cvt.f32.{f}" in text, f"{name}: 16-bit loads not widened"
            if name.startswith("conv2d_fwd_kernel"):   # the weight stream: 16-byte vectors
                assert re.search(r"ld\.global\.nc\.v4\.(?:u32|b32)", text), name
            if name.startswith("soft_sharing_pen"):    # a pair of a and of b per 32-bit load
                assert re.search(r"ld\.global\.nc\.(?:u32|b32|v2\.u16|v2\.b16)\b", text), name
            # the result rounded once, to nearest even, where it is stored
            assert (f"cvt.rn.{f}.f32" in text) == (t["O"] == t["T"]), name
        if name.startswith("soft_sharing"):      # deterministic: partials, never atomics
            assert not re.search(r"\b(?:atom|red)\.", text), name


def test_accumulation_type_instances_compile_for_compute_90():
    """A row whose accumulation type differs from its storage type (float storage, double
    accumulation: what bfloat16 with float accumulation will be) instantiates every template,
    with nothing in local memory."""
    names = _loader.name_expressions(config.CUDA_TILE_MENU_GPU[:2], 128,
                                     config.CUDA_PENALTY_THREADS_GPU, [_cuda_emu.F32_ACC64])
    assert "conv2d_wgrad_reduce_kernel<float,double,float>" in names
    lowered, ptx, _ = _nvrtc_compile(names)
    entries = _loader.ptx_entries(ptx, lowered)
    assert set(entries) == set(names)
    for name, text in entries.items():
        assert "__local_depot" not in text, f"{name} uses local memory"


def test_instance_names_spell_the_templates():
    """name() against instances spelt out by hand: template order T, A, block tile, then the
    kernel size (specialised or 0, 0 generic) or the block size; a row's accumulation type is
    its own argument; and refusals."""
    t = (64, 64, 8, 4, 4)
    assert (_loader.name("fwd", "float32", t, ksize=(3, 3))
            == "conv2d_fwd_kernel<float,float,float,64,64,8,4,4,3,3>")
    assert (_loader.name("fwd", "float64", t, ksize=(2, 7))             # not specialised
            == "conv2d_fwd_kernel<double,double,double,64,64,8,4,4,0,0>")
    assert (_loader.name("fwd", "bfloat16", t, ksize=(3, 3))
            == "conv2d_fwd_kernel<__nv_bfloat16,float,__nv_bfloat16,64,64,8,4,4,3,3>")
    assert (_loader.name("dgrad", "float16", t, out=np.float32)         # out_dtype=float32
            == "conv2d_dgrad_kernel<__half,float,float,64,64,8,4,4>")
    with pytest.raises(ValueError, match="no result type"):
        _loader.name("dgrad", "float32", t, out=np.float64)
    for dtype in ("float32", "float64"):
        assert _loader.name("fwd", dtype, t, ksize=(3, 3)).endswith(",3,3>")
        assert _loader.name("fwd", dtype, t, ksize=(2, 7)).endswith(",0,0>")
    assert (_loader.name("wgrad", dtypes.DTYPES["float32"], (4, 256, 8, 1, 4), ksize=(11, 11))
            == "conv2d_wgrad_kernel<float,float,float,4,256,8,1,4,11,11>")
    assert (_loader.name("dgrad", "float64", t)
            == "conv2d_dgrad_kernel<double,double,double,64,64,8,4,4>")
    assert (_loader.name("wgrad_reduce", "float32")
            == "conv2d_wgrad_reduce_kernel<float,float,float>")
    assert (_loader.name("bgrad", "float64", bias_threads=128)
            == "conv2d_bgrad_kernel<double,double,double,128>")
    assert (_loader.name("penalty", "float32", penalty_threads=256)
            == "soft_sharing_penalty_kernel<float,float,float,256>")
    assert (_loader.name("penalty_reduce", "float64", penalty_threads=256)
            == "soft_sharing_reduce_kernel<256>")
    assert (_loader.name("fwd", _cuda_emu.F32_ACC64, t, ksize=(1, 1))
            == "conv2d_fwd_kernel<float,double,float,64,64,8,4,4,1,1>")
    assert _loader.template_args("conv2d_fwd_kernel<float,double,float,64,32,8,4,2,1,1>") == dict(
        T="float", A="double", O="float", BM="64", BN="32", BK="8", TM="4", TN="2", KR="1",
        KS="1")
    with pytest.raises(ValueError, match="unknown kernel 'fill'"):     # Numba only
        _loader.name("fill", "float32")
    with pytest.raises(ValueError, match="template group tile"):
        _loader.name("fwd", "float32", None, ksize=(3, 3))
    with pytest.raises(ValueError, match="template group NB"):
        _loader.name("bgrad", "float32")
    with pytest.raises(TypeError, match="no GPU kernel takes dtype"):
        _loader.name("bgrad", "int32", bias_threads=128)
    with pytest.raises(ValueError, match="template arguments"):
        _loader.template_args("conv2d_bgrad_kernel<float,float,float>")


def test_instances_cover_every_tile_dtype_and_kernel_size():
    """name_expressions lists each instance once, and for each CUDA C kernel exactly every
    combination of dtype row, menu tile, kernel size (each specialised one and the generic 0, 0)
    and block size its template takes, read back from the names."""
    menu, nb, nt = config.CUDA_TILE_MENU_GPU, 128, config.CUDA_PENALTY_THREADS_GPU
    names = _loader.name_expressions(menu, nb, nt)
    assert len(names) == len(set(names))
    by_kernel = {}
    for n in names:
        by_kernel.setdefault(n.split("<")[0], set()).add(tuple(_loader.template_args(n).values()))
    # every dtype row, with each of its result types (T; and A for 16-bit storage)
    rows = [(dt.ctype, dt.accum_ctype, o) for dt in dtypes.DTYPES.values()
            for o in dict.fromkeys((dt.ctype, dt.accum_ctype))]
    tiles = [tuple(map(str, t)) for t in menu]
    sizes = [("0", "0")] + [tuple(map(str, z)) for z in config.CUDA_KERNEL_SIZES]
    want = {
        "conv2d_fwd_kernel": {r + t + z for r in rows for t in tiles for z in sizes},
        "conv2d_wgrad_kernel": {r + t + z for r in rows for t in tiles for z in sizes},
        "conv2d_dgrad_kernel": {r + t for r in rows for t in tiles},
        "conv2d_wgrad_reduce_kernel": set(rows),
        "conv2d_bgrad_kernel": {r + (str(nb),) for r in rows},
        "soft_sharing_penalty_kernel": {r + (str(nt),) for r in rows},
        "soft_sharing_reduce_kernel": {(str(nt),)},
        "neighbour_l2_kernel": {r + (str(nt),) for r in rows},
        "neighbour_cosine_kernel": {r + (str(nt),) for r in rows},
        "neighbour_dots_kernel": {(dt.ctype, dt.accum_ctype, str(nt))
                                  for dt in dtypes.DTYPES.values()},
        "average_banks_kernel": {(dt.ctype, dt.accum_ctype) for dt in dtypes.DTYPES.values()},
    }
    assert by_kernel == want


# ---------------------------------------------------------- the .cu prototypes vs the declaration
_PROTOTYPE = re.compile(r"template\s*<([^>]*)>\s*__global__\s+void\s+"
                        r"(?:__launch_bounds__\s*\([^)]*\)\s+)?(\w+)\s*\(([^)]*)\)\s*\{")


def cu_prototypes():
    """{kernel name: (source, template parameters, ((name, type), ...))} of every __global__
    function in kernels/*.cu, types normalised ("const T* __restrict__ x" -> "const T*")."""
    found = {}
    for src in sorted(os.listdir(_loader.kernel_dir())):
        if not src.endswith(".cu"):
            continue
        with open(os.path.join(_loader.kernel_dir(), src)) as f:
            text = re.sub(r"//[^\n]*", "", f.read())
        matches = list(_PROTOTYPE.finditer(text))
        assert len(matches) == text.count("__global__"), f"{src}: a __global__ not parsed"
        for m in matches:
            template = tuple(" ".join(p.split()) for p in m.group(1).split(","))
            args = []
            for param in m.group(3).split(","):
                param = " ".join(param.replace("__restrict__", " ").split())
                ty, name = re.fullmatch(r"(.*?)\s*(\w+)", param).groups()
                args.append((name, re.sub(r"\s*\*", "*", ty)))
            assert m.group(2) not in found, f"{m.group(2)} defined twice"
            found[m.group(2)] = (src, template, tuple(args))
    return found


def test_cu_prototypes_match_the_declaration():
    """Every __global__ kernel of kernels/*.cu is declared in _gpu_kernels.KERNELS with the same
    source, template parameters and argument names, order and types, and every declared CUDA C
    kernel exists: the launch tuple, the Numba signatures and the emulator, all derived from the
    declaration, cannot drift from the CUDA C."""
    protos = cu_prototypes()
    declared = {k.name: k for k in decl.KERNELS.values() if k.source}
    assert set(protos) == set(declared)
    for name, (src, template, args) in protos.items():
        k = declared[name]
        assert src == k.source, name
        assert template == k.template_params(), name
        assert args == k.args, (name, [a for a in itertools.zip_longest(args, k.args)
                                       if a[0] != a[1]])
    assert "fill_kernel" not in protos              # production never launches one


def test_declaration_is_well_formed():
    """Every type parses, names are unique per kernel, the op table's pass kernel tags are
    declared, and only Numba's fill has no CUDA C source."""
    from sharenet_fast.optable import PASSES

    for tag, k in decl.KERNELS.items():
        assert k.tag == tag and len(set(k.names)) == len(k.names), tag
        for _, ty in k.args:
            decl.split(ty)
        assert set(k.template) <= set(decl.TEMPLATE), tag
    assert {p.kernel for p in PASSES.values() if p.required} <= set(decl.KERNELS)
    assert [t for t, k in decl.KERNELS.items() if k.source is None] == ["fill"]
    with pytest.raises(ValueError, match="unknown kernel argument type"):
        decl.split("const i64")


def test_pack_takes_every_argument_by_name_and_type():
    """pack: the declared order whatever order the names come in; scalars as their declared
    NumPy type (the accumulation dtype for A); a missing or unknown name, a wrong element dtype
    or a 2-D array is a TypeError."""
    dt = _cuda_emu.F32_ACC64
    a, g = np.zeros(4, np.float32), np.zeros(4, np.float32)
    parts = np.zeros(2, np.float64)
    values = dict(partials=parts, n=4, has_b=False, has_a=True, grad_b=g, grad_a=g,
                  strength=0.5, b=a, a=a)
    args = decl.pack("penalty", dt, values)
    assert [type(v) for v in args] == [np.ndarray, np.ndarray, np.float64, np.ndarray,
                                       np.ndarray, np.int64, np.int64, np.int64, np.ndarray]
    assert args[0] is a and args[-1] is parts and args[5] == 1 and args[6] == 0
    with pytest.raises(TypeError, match=r"missing \['n'\]"):
        decl.pack("penalty", dt, {k: v for k, v in values.items() if k != "n"})
    with pytest.raises(TypeError, match=r"unknown \['nn'\]"):
        decl.pack("penalty", dt, dict(values, nn=1))
    with pytest.raises(TypeError, match="partials .* must be a 1-D float64 array"):
        decl.pack("penalty", dt, dict(values, partials=np.zeros(2, np.float32)))
    with pytest.raises(TypeError, match="grad_a"):
        decl.pack("penalty", dt, dict(values, grad_a=np.zeros((2, 2), np.float32)))


def test_every_dev_is_a_gpu_host_device():
    """Both backends' DEV, the emulator's and the recording device satisfy the Device protocol
    of _gpu_host, with its parameter names."""
    from sharenet_fast import cupy_backend, numba_cuda

    methods = [m for m, v in vars(host.Device).items()
               if callable(v) and not m.startswith("_")]
    assert set(methods) == {"empty", "zeros", "to_device_like", "flat", "launch"}
    for dev in (numba_cuda.DEV, cupy_backend.DEV, _cuda_emu.EmuDevice(None, {}),
                _RecordingDevice()):
        assert isinstance(dev, host.Device), dev
        for m in methods:
            want = list(inspect.signature(getattr(host.Device, m)).parameters)[1:]   # no self
            assert list(inspect.signature(getattr(dev, m)).parameters) == want, (dev, m)


class _RecordingDevice(_cuda_emu.EmuDevice):
    """The emulator's NumPy `dev` for _gpu_host, recording what would be launched instead of
    running it (no compiler needed)."""

    def __init__(self):
        super().__init__(lib=None, entries={})

    def launch(self, tag, dt, tiles, grid, threads, like, args, ksize=None):
        self.launched.append((_loader.name(tag, dt, tiles, config.CUDA_BIAS_THREADS, ksize,
                                           out=decl.out_of(tag, dt, args)),
                              grid, threads, args))


@pytest.mark.parametrize("menu", ["gpu", "sim"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, dtypes.BFLOAT16])
def test_host_side_requests_only_compiled_instances(dtype, menu, monkeypatch):
    """Drive the shared host launchers over layers, tiles and batch sizes that select every
    tile of the menu; every kernel they ask for is an instance the module compiles, and every
    block size matches that instance's template (threads = BM/TM * BN/TN, bias <= NB).
    bfloat16 also with float32 results and float32 master gradients."""
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
            outs = (None, np.float32) if dtypes.lookup(dtype).reduced else (None,)
            for od in outs:
                host.forward(dev, x, w, None, g, tile, od)
                host.input_grad(dev, dy, w, g, tile, od)
                for det in (False, True):
                    host.weight_grad(dev, dy, x, g, tile, tile + g.w_shape, None, det, od)
                host.bias_grad(dev, dy, tile, tile + (g.K,), None, od)
    used = {n for n, *_ in dev.launched}
    assert used <= names, sorted(used - names)
    tile_of = {n: tuple(int(_loader.template_args(n)[p]) for p in ("BM", "BN", "BK", "TM", "TN"))
               for n in used if "BM" in _loader.template_args(n)}
    assert set(tile_of.values()) == set(map(tuple, config.CUDA_TILE_MENU)), \
        "some menu tile was never chosen"
    assert {n.split("<")[0] for n in tile_of} == {
        decl.KERNELS[t].name for t in _loader.TILED}
    for n, grid, threads, _ in dev.launched:
        if n in tile_of:
            BM, BN, _, TM, TN = tile_of[n]
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
