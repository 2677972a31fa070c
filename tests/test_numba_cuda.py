"""The numba-cuda backend beyond the registry-driven tests: compilation for a real GPU (PTX for
sm_90, without a GPU), the kernels' arguments against their declaration (_gpu_kernels), the
accumulation dtype as a separate field, 64-bit index arithmetic, device arrays through the
public API, the three weight-gradient reduction modes, the production block tiles under the
simulator, and the package's import graph.

The registry-driven tests (test_conv2d_backends.py, test_untied.py, ...) already run every op of
this backend against the oracle, on the simulator when there is no GPU (conftest.py).
"""
import ast
import importlib
import inspect
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import sharenet_fast as sf
from sharenet_fast import _gpu_kernels as decl
from sharenet_fast import config, reference
from _support import (BACKENDS, DTYPE_IDS, DTYPES, SHAPES_BY_ID, Case, assert_close,
                      make_inputs, random_array)
import _cuda_emu  # the wide-accumulation row and probe (no compiler needed)
import _support

pytestmark = pytest.mark.skipif("numba-cuda" not in BACKENDS,
                                reason=f"numba-cuda: {sf.backends()['numba-cuda']}")

kmod = importlib.import_module("sharenet_fast.numba_cuda.conv2d")
smod = importlib.import_module("sharenet_fast.numba_cuda.sharing")
lmod = importlib.import_module("sharenet_fast.numba_cuda._launch")
host = importlib.import_module("sharenet_fast._gpu_host")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(sf.__file__)))

# ------------------------------------------------------------------- PTX for sm_90, no GPU needed
_PTX_SCRIPT = r"""
import importlib, json, re, sys
from numba import cuda, int32
k = importlib.import_module("sharenet_fast.numba_cuda.conv2d")
report = {}
# (storage dtype, result dtype): 16-bit storage is built for both of its results
LABELS = {"float32": ("float32", None), "float64": ("float64", None),
          "bfloat16": ("bfloat16", None), "float16": ("float16", None),
          "bfloat16:float32": ("bfloat16", "float32"), "float16:float32": ("float16", "float32")}


def facts(ptx, atomic):
    return {"target": ".target sm_90" in ptx, "entry": ".entry" in ptx,
            "local_depot": bool(re.search(r"__local_depot", ptx)), "atomic": atomic,
            "f16_widen": "cvt.f32.f16" in ptx, "f16_narrow": "cvt.rn.f16.f32" in ptx,
            "bits": "mov.b32" in ptx}


label = sys.argv[1]              # one label per process: the workers compile them side by side
dtype, out = LABELS[label]
for (name, tiles), ptx in k.compile_ptx(dtype, cc=(9, 0), out=out).items():
    report[f"{label}/{name}/{tiles}"] = facts(
        ptx, "atom.global.add" in ptx or "red.global.add" in ptx)
s = importlib.import_module("sharenet_fast.numba_cuda.sharing")   # the penalty kernels
for name, ptx in s.compile_ptx(dtype, cc=(9, 0), out=out).items():
    report[f"{label}/{name}/-"] = facts(ptx, bool(re.search(r"\b(?:atom|red)\.", ptx)))
if out is None:                      # fill (device_zeros): no result type
    s = importlib.import_module("sharenet_fast.numba_cuda._launch")
    for name, ptx in s.compile_ptx(dtype, cc=(9, 0)).items():
        report[f"{label}/{name}/-"] = facts(ptx, bool(re.search(r"\b(?:atom|red)\.", ptx)))
if label == "float32":
    # the offset helper with int32 indices and extents: every multiply must be 64-bit
    ptx, _ = cuda.compile_ptx(k.off4, (int32,) * 7, device=True, cc=(9, 0))
    muls = re.findall(r"\bmul\.(?:lo|wide)\.[su](?:32|64)\b|\bmad\.(?:lo|wide)\.[su](?:32|64)\b",
                      ptx)
    report["off4_muls"] = sorted(set(muls))
json.dump(report, sys.stdout)
"""


def ptx_report(label):
    """Compile every kernel of one storage (and result) dtype label, at every production tile,
    to PTX in a subprocess without the simulator: the real type-checking and code generation
    path a GPU would run. Once per run and label: pytest-xdist workers compile different
    labels side by side and share each report."""
    def compile_label():
        env = dict(os.environ, NUMBA_ENABLE_CUDASIM="0",
                   PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
        proc = subprocess.run([sys.executable, "-c", _PTX_SCRIPT, label], env=env,
                              capture_output=True, text=True, timeout=600)
        if proc.returncode and "NVVM" in proc.stderr and "not found" in proc.stderr.lower():
            pytest.skip(f"NVVM not installed: {proc.stderr.strip().splitlines()[-1]}")
        assert proc.returncode == 0, proc.stderr[-4000:]
        return json.loads(proc.stdout)
    return _support.once_per_run(f"numba_cuda_ptx_{label.replace(':', '_')}", compile_label)


KERNEL_NAMES = list(decl.KERNELS)      # every declared kernel has a Numba twin
PRODUCTION_MENU = config.CUDA_TILE_MENU_GPU


@pytest.mark.parametrize("name", KERNEL_NAMES)
@pytest.mark.parametrize("dtype", ["float32", "float64", "bfloat16", "float16",
                                   "bfloat16:float32", "float16:float32"])
def test_kernel_compiles_to_ptx_for_sm90(dtype, name):
    """Every kernel, at every production block tile (the subprocess runs without the simulator,
    so config holds the real menu), for every storage dtype and, for 16-bit storage, both
    result dtypes ("bfloat16:float32": bfloat16 storage, float32 results)."""
    found = {key: r for key, r in ptx_report(dtype).items()
             if key.startswith(f"{dtype}/{name}/")}
    kind = {n: decl.split(ty) for n, ty in decl.KERNELS[name].args}
    if "O" not in decl.KERNELS[name].template and ":" in dtype:
        assert not found                     # no result type: built once, for the storage
        return
    tiled = name in kmod.TILED
    assert len(found) == (len(PRODUCTION_MENU) if tiled else 1), sorted(found)
    for key, r in found.items():
        assert r["target"] and r["entry"], (key, r)
        # accumulators, tile decodes and a, b fragments all live in registers: a local-memory
        # depot would mean a per-thread array spilled to (slow, off-chip) local memory
        assert not r["local_depot"], f"{key} uses local memory"
        if name == "wgrad":
            # atomics only into an accumulation-typed result (a 16-bit one is staged)
            accum_out = dtype in ("float32", "float64") or dtype.endswith(":float32")
            assert r["atomic"] == accum_out, f"{key}: atomic add {r['atomic']}"
        if dtype.startswith("float16") and name != "fill":
            # half inputs (T) widened; 16-bit results (a written T or O array) rounded once
            if any(base == "T" and ptr for base, ptr, _ in kind.values()):
                assert r["f16_widen"], f"{key}: half loads not converted by cvt.f32.f16"
            writes = any(base in ("T", "O") and ptr and not const
                         for base, ptr, const in kind.values())
            assert r["f16_narrow"] == (writes and dtype == "float16"), \
                f"{key}: results rounded once"
        if dtype.startswith("bfloat16") and name in ("fwd", "penalty"):
            assert r["bits"], f"{key}: bfloat16 not widened through the float's bits"
        if name.startswith(("penalty", "neighbour", "average")):
            assert not r["atomic"], f"{key}: summed in a fixed order, no atomics"


def _numba_kernels():
    """{tag: the Numba kernel} of every declared kernel (production-free: the first menu tile)."""
    dt = decl.row("float32")
    ks = dict(kmod.kernels(dt, dt.storage, tuple(config.CUDA_TILE_MENU[0]),
                           config.CUDA_BIAS_THREADS))
    ks.update(smod.kernels(dt, dt.storage, config.CUDA_PENALTY_THREADS))
    ks["fill"] = lmod.fill_kernel()
    return ks


def test_numba_kernels_take_the_declared_arguments():
    """Each Numba kernel is named as declared and its Python parameters are the declared
    argument names in order; the signatures compile_ptx uses are the declared types (a pointer
    a 1-D C-contiguous array of its element dtype, for a row whose accumulation dtype differs
    from its storage dtype too)."""
    from numba import float32, float64, int64

    ks = _numba_kernels()
    assert set(ks) == set(decl.KERNELS)
    assert set(kmod.TAGS) | set(smod.TAGS) | {"fill"} == set(decl.KERNELS)
    for tag, k in decl.KERNELS.items():
        fn = ks[tag].py_func
        assert fn.__name__ == k.name, tag
        assert tuple(inspect.signature(fn).parameters) == k.names, tag
    sigs = {**kmod.signatures("float64"), **smod.signatures("float64")}
    assert set(sigs) == set(decl.KERNELS) - {"fill"}
    assert sigs["fwd"][:4] == (float64[::1],) * 4 and set(sigs["fwd"][4:]) == {int64}
    assert sigs["dgrad"][3:7] == (int64[::1],) * 4
    assert sigs["penalty_reduce"] == (float64[::1], int64, float64, float64[::1])
    wide = _cuda_emu.F32_ACC64
    assert lmod.signature("wgrad", wide)[2:4] == (float32[::1], float64[::1])   # out T, ws A
    assert lmod.signature("penalty", wide)[2] == float64                        # strength A
    assert lmod.signature("fill", wide) == (float32[::1], float32, int64)


def test_launch_arguments_are_packed_by_name():
    """_gpu_host launches by name: the wgrad launch's mode is where the declaration puts it."""
    k = decl.KERNELS["wgrad"]
    assert k.index("mode") == len(k.args) - 1 and k.index("ws") == 3


def test_accumulation_dtype_is_a_separate_field():
    """A float32-storage row accumulating in float64 (what a bfloat16 row will be: float32
    accumulation) is data: the same host side and kernels, keyed on the row, sum 2**24 + 16
    exactly in every pass where float32 accumulation gives 2**24."""
    io = dict(put=_device, get=lambda d: d.copy_to_host())
    got = _cuda_emu.accumulation_probe(kmod.DEV, _cuda_emu.F32_ACC64, **io)
    assert got == _cuda_emu.EXACT, got
    got = _cuda_emu.accumulation_probe(kmod.DEV, decl.row("float32"), **io)
    assert got["forward"] == 2.0**24, got      # the probe does tell the two apart


def test_offsets_are_64_bit_in_ptx():
    """off4 on int32 indices compiles to 64-bit (wide) multiplies only, so an offset past 2**31
    cannot wrap, whatever the integer types the indices arrive in."""
    muls = ptx_report("float32")["off4_muls"]
    assert muls, "no multiplies found: the probe did not compile as expected"
    assert all(m.endswith("64") or ".wide." in m for m in muls), muls


def test_offsets_past_2_31_on_int32_inputs():
    """The same helper compiled for the CPU with int32 arguments (Numba's integer typing is the
    same on both targets: int32 * int32 -> int64) gives exact offsets past 2**31; the indices
    are those of alexnet_conv1's locally connected layer at batch 64 (6.7e9 patch products)."""
    from numba import int32, int64, njit

    off4 = njit(int64(int32, int32, int32, int32, int32, int32, int32))(kmod.off4)
    # flat (P*Q*K, C, R, S) weight index of the last tap of the last bank, times batch 64
    P = Q = 55
    K, C, R, S = 96, 3, 11, 11
    cases = [
        (64 * P * Q * K - 1, C - 1, R - 1, S - 1, C, R, S),   # > 2**31 if it were int32
        (63, 95, 54, 54, 2**20, 2**10, 2**10),                 # = 63 * 2**40 + ...
        (2**31 - 1, 2**31 - 1, 0, 0, 2**31 - 1, 1, 1),
    ]
    for args in cases:
        a, b, c, d, B, C_, D = args
        exact = ((a * B + b) * C_ + c) * D + d
        assert exact > 2**31
        assert off4(*args) == exact, args


def test_class_extent():
    for size in range(1, 12):
        for step in range(1, 6):
            for first in range(0, 14):
                assert host.class_extent(size, first, step) == len(range(first, size, step))


# ------------------------------------------------------------------ device arrays through the API
def _device(a):
    from numba import cuda

    return cuda.to_device(a)


def test_device_arrays_in_device_arrays_out(rng):
    """Numba device arrays in -> Numba device arrays out (backend="auto" picks the GPU), the
    values those of the oracle; accumulators on the device are added into in place."""
    case = SHAPES_BY_ID["nonsquare_all"]
    d = make_inputs(case, np.float32, seed=21)
    y = sf.conv2d(_device(d.x), _device(d.w), _device(d.b), **case.kw)
    assert sf._device.kind(y) == "numba"
    assert_close(y.copy_to_host(), reference.conv2d(d.x, d.w, d.b, **case.kw), np.float32, "y")
    gw0 = random_array(rng, case.w_shape, np.float32)
    gw = _device(gw0)
    g = sf.conv2d_backward(_device(d.dy), _device(d.x), _device(d.w), grad_weight=gw,
                           **case.kw)
    assert g.weight is gw
    want = gw0 + reference.conv2d_weight_grad(d.dy, d.x, d.w.shape, **case.kw)
    assert_close(gw.copy_to_host(), want, np.float32, "grad_weight accumulated on the device")
    assert_close(g.input.copy_to_host(),
                 reference.conv2d_input_grad(d.dy, d.x.shape, d.w, **case.kw), np.float32, "dx")


def test_numpy_with_gpu_backend_gives_numpy_and_accumulates_in_place(rng):
    case = SHAPES_BY_ID["K7_Q5_tails"]
    d = make_inputs(case, np.float64, seed=22)
    gw = random_array(rng, (2, 3) + case.w_shape, np.float64)
    gw0 = gw.copy()
    w = random_array(rng, (2, 3) + case.w_shape, np.float64)
    g = sf.tiled_conv2d_backward(d.dy, d.x, w, needs=("weight",), grad_weight=gw,
                                 backend="numba-cuda", **case.kw)
    assert g.weight is gw and isinstance(gw, np.ndarray)
    want = gw0 + reference.tiled_conv2d_weight_grad(d.dy, d.x, w.shape, **case.kw)
    assert_close(gw, want, np.float64, "tiled grad_weight")


def test_mixing_numpy_and_device_arrays_is_a_type_error():
    case = SHAPES_BY_ID["batch1_C1"]
    d = make_inputs(case, np.float32)
    with pytest.raises(TypeError, match="not mixed.*weight is numba"):
        sf.conv2d(d.x, _device(d.w), backend="numba-cuda")
    with pytest.raises(TypeError, match="not mixed"):
        sf.conv2d(_device(d.x), _device(d.w), d.b)
    with pytest.raises(TypeError, match="not mixed.*grad_weight is numba"):
        sf.conv2d_backward(d.dy, d.x, d.w, grad_weight=_device(np.zeros(case.w_shape,
                                                                       np.float32)))


def test_host_backends_refuse_device_arrays():
    case = SHAPES_BY_ID["batch1_C1"]
    d = make_inputs(case, np.float32)
    for backend in ("cpu", "reference"):
        with pytest.raises(TypeError, match=f"backend '{backend}' takes NumPy arrays"):
            sf.conv2d(_device(d.x), _device(d.w), backend=backend)


def test_non_contiguous_device_array_is_a_value_error():
    case = SHAPES_BY_ID["batch1_C1"]
    d = make_inputs(case, np.float32)
    wide = _device(np.concatenate([d.x, d.x], axis=-1))
    x = wide[:, :, :, ::2]
    assert not x.is_c_contiguous()
    with pytest.raises(ValueError, match="x: a Numba device array must be C-contiguous"):
        sf.conv2d(x, _device(d.w))


# --------------------------------------------------------------- weight-gradient reduction modes
MODE_CASES = [
    Case("modes_n2_6x6", 2, 2, 6, 6, 3, 3, 3, padding=1),        # 72 positions: 5 chunks
    Case("modes_stride2", 3, 2, 9, 8, 4, 2, 3, stride=2, dilation=(2, 1)),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", MODE_CASES, ids=[c.id for c in MODE_CASES])
def test_atomic_and_deterministic_weight_grad(case, dtype, monkeypatch):
    """Both reductions agree with the oracle and each other; deterministic runs are bitwise
    equal; each really takes its path (spied on the launch mode); accumulating works in each."""
    d = make_inputs(case, dtype, seed=23)
    ref = reference.conv2d_weight_grad(d.dy, d.x, d.w.shape, **case.kw)
    modes = []
    real_launch = kmod.launch

    def spy(kernel, grid, threads, stream, *args):
        if kernel is kmod._kernels_for(d.x)["wgrad"]:
            modes.append(args[decl.KERNELS["wgrad"].index("mode")])
        return real_launch(kernel, grid, threads, stream, *args)
    monkeypatch.setattr(kmod, "launch", spy)
    monkeypatch.setattr(config, "CUDA_TILE_MENU", config.CUDA_TILE_MENU[:1])
    out = {}
    for det in (False, True, True):
        acc = np.full(case.w_shape, 0.25, dtype)
        g = sf.conv2d_backward(d.dy, d.x, d.w, needs=("weight",), deterministic=det,
                               grad_weight=acc, backend="numba-cuda", **case.kw)
        assert_close(g.weight - dtype(0.25), ref, dtype, f"deterministic={det}")
        out.setdefault(det, []).append(g.weight)
    assert modes == [1, 2, 2], modes      # atomic, then partials + fixed-order sum
    assert np.array_equal(out[True][0], out[True][1])
    monkeypatch.setattr(config, "CUDA_WGRAD_CHUNK", 10**6)     # one chunk: owner-computes
    g = sf.conv2d_backward(d.dy, d.x, d.w, needs=("weight",), backend="numba-cuda", **case.kw)
    assert modes[-1] == 0
    assert_close(g.weight, ref, dtype, "one chunk")


def test_deterministic_workspace_cap_reduces_chunks(monkeypatch):
    """A workspace cap smaller than the partials shrinks the number of chunks, never the
    result: the sum is still the oracle's."""
    case = MODE_CASES[0]
    d = make_inputs(case, np.float64, seed=24)
    size = int(np.prod(case.w_shape)) * 8
    monkeypatch.setattr(config, "CUDA_WGRAD_MAX_WORKSPACE", 2 * size)
    g = sf.conv2d_backward(d.dy, d.x, d.w, needs=("weight",), deterministic=True,
                           backend="numba-cuda", **case.kw)
    assert_close(g.weight, reference.conv2d_weight_grad(d.dy, d.x, d.w.shape, **case.kw),
                 np.float64, "capped workspace")


# ------------------------------------------------------------------------------ tile choice
def test_pick_tiles_pads_least():
    """The choice for the suite's passes: rows are K (forward, weight grad) or C (input grad),
    columns the positions of a class (a local layer's: the batch) or C*R*S."""
    menu = PRODUCTION_MENU
    pick = host.pick_tiles
    import unittest.mock as mock
    with mock.patch.object(config, "CUDA_TILE_MENU", tuple(map(tuple, menu))):
        assert pick(64, 10**6) == (64, 64, 8, 4, 4)       # vgg forward
        assert pick(96, 10**6)[0] == 32                   # alexnet forward: 3 x 32 rows
        assert pick(16, 10**6)[0] == 16                   # deepface
        assert pick(3, 10**6)[0] == 4                     # alexnet input grad (C = 3)
        assert pick(96, 8)[:2] == (128, 8)                # local layer at batch 8
        assert pick(96, 64) == (64, 64, 8, 4, 4)          # ... at batch 64
        for rows in range(1, 200, 7):                     # never worse than the general tile
            for cols in (1, 5, 8, 33, 64, 1000):
                def padded(t):
                    return -(-rows // t[0]) * t[0] * -(-cols // t[1]) * t[1]
                assert padded(pick(rows, cols)) <= padded(menu[0]) * 1.5


# ------------------------------------------------------------ the production tiles, simulated
@pytest.mark.slow
@pytest.mark.parametrize("tiles", PRODUCTION_MENU, ids=lambda t: "x".join(map(str, t)))
def test_production_tiles_on_tiny_shapes(tiles, monkeypatch):
    """The simulator normally runs a shrunk tile menu (config.CUDA_TILE_MENU); this runs each
    real tile (128-256 threads a block) on one tiny layer of each kind, so the block-level index
    arithmetic a GPU would execute is checked against the oracle for every tile."""
    if not config.CUDASIM:
        pytest.skip("on a GPU the whole suite runs the production tiles")
    monkeypatch.setattr(config, "CUDA_TILE_MENU", (tuple(tiles),))
    monkeypatch.setattr(config, "CUDA_WGRAD_CHUNK", 8)          # several chunks: atomics
    # P, Q = 2, 3: the smallest output the (2, 3) tiled grid fits (a local layer launches a
    # block of 128-256 simulated threads per bank); N*P*Q = 12 columns still span two chunks
    case = Case("tiny", 2, 2, 3, 3, 3, 2, 3, stride=(2, 1), padding=1)
    g = case.geometry
    rng = np.random.default_rng(25)
    x = random_array(rng, g.x_shape, np.float32)
    dy = random_array(rng, g.y_shape, np.float32)
    for layer, grid in (("conv2d", ()), ("tiled_conv2d", (2, 3)), ("local2d", (g.P, g.Q))):
        w = random_array(rng, grid + g.w_shape, np.float32)
        b = random_array(rng, grid + (g.K,), np.float32)
        fwd, bwd = getattr(sf, layer), getattr(sf, layer + "_backward")
        assert_close(fwd(x, w, b, backend="numba-cuda", **case.kw),
                     getattr(reference, layer)(x, w, b, **case.kw), np.float32, layer)
        got = bwd(dy, x, w, backend="numba-cuda", needs=("input", "weight"),
                  deterministic=layer == "tiled_conv2d", **case.kw)
        assert_close(got.input,
                     getattr(reference, layer + "_input_grad")(dy, x.shape, w, **case.kw),
                     np.float32, f"{layer} input grad")
        assert_close(got.weight,
                     getattr(reference, layer + "_weight_grad")(dy, x, w.shape, **case.kw),
                     np.float32, f"{layer} weight grad")


# ------------------------------------------------------------------ the simulator's shared arrays
def test_simulator_shared_array_is_one_array_per_block():
    """Numba's simulator creates a block's cuda.shared.array with an unlocked check-then-set,
    so two threads could get two arrays (seen: 1 bias gradient in 150 wrong). _launch installs a
    locked lookup on the first simulated launch; 64 threads asking at once get one array."""
    if not config.CUDASIM:
        pytest.skip("simulator only")
    import threading

    from numba.cuda.simulator import kernelapi

    from sharenet_fast.numba_cuda import _launch

    _launch._fix_simulator_shared_arrays()
    shared = kernelapi.FakeCUDAShared(0)
    barrier = threading.Barrier(64)
    got = []

    def ask():
        barrier.wait()
        got.append(shared.array((4, 5), np.float32))   # one source line: one array
    threads = [threading.Thread(target=ask) for _ in range(64)]
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old)
    assert len(got) == 64 and all(a is got[0] for a in got)
    assert got[0].shape == (4, 5) and got[0].dtype == np.float32


# ------------------------------------------------------------------------ the import graph
def _import_graph(package_dir):
    """{module: the package modules it imports}, read from the source (every import statement,
    at module level or inside a function: a lazy import still closes a cycle)."""
    top = os.path.dirname(package_dir)
    mods = {}
    for dirpath, _, files in os.walk(package_dir):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(dirpath, f)
                name = os.path.relpath(path[:-3], top).replace(os.sep, ".")
                mods[name[:-len(".__init__")] if name.endswith(".__init__") else name] = path
    graph = {}
    for name, path in mods.items():
        pkg = name if path.endswith("__init__.py") else name.rpartition(".")[0]
        deps = set()
        with open(path) as fh:
            tree = ast.parse(fh.read())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                parts = pkg.split(".")
                base = node.module if node.level == 0 else ".".join(
                    parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
                subs = {f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in mods}
                # "from . import x" imports the module x; "from .m import f" the module m
                deps |= subs if len(subs) == len(node.names) else subs | {base}
        graph[name] = {d for d in deps if d in mods and d != name}
    return graph


def test_no_module_is_part_of_an_import_cycle():
    """No cycle in the package's import graph (numba_cuda/_launch.py and conv2d.py imported
    each other: conv2d for the launch helpers, _launch for the fill kernel)."""
    graph = _import_graph(os.path.dirname(os.path.abspath(sf.__file__)))
    assert "sharenet_fast.numba_cuda._launch" in graph["sharenet_fast.numba_cuda.conv2d"]
    for start in graph:
        stack, seen = [(start, (start,))], set()
        while stack:
            mod, path = stack.pop()
            for dep in graph[mod]:
                assert dep != start, f"import cycle: {' -> '.join(path + (start,))}"
                if dep not in seen:
                    seen.add(dep)
                    stack.append((dep, path + (dep,)))


def test_missing_numba_cuda_is_reported_with_the_install_hint():
    """Without numba.cuda the backend does not import, and sf.backends() gives that reason
    with the install hint (a subprocess in which `from numba import cuda` fails)."""
    code = ("import sys; sys.modules['numba.cuda'] = None; import sharenet_fast as sf; "
            "print(sf.backends()['numba-cuda'])")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=300, check=True).stdout
    assert "numba.cuda does not import" in out and "pip install 'sharenet_fast[cuda]'" in out, out
