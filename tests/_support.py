"""Shared tables and helpers for the test suite (imported by conftest.py and the test modules).

One registry drives the tests: every backend that sharenet_fast.backends() reports "available" is
crossed with every op in OPS, both dtypes and every case in SHAPES, and checked through the public
API against the float64 oracle in sharenet_fast.reference.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from typing import Callable, NamedTuple

import numpy as np

import sharenet_fast as sf
from sharenet_fast import dtypes, optable, registry

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))

# ----------------------------------------------------------------------------- backends, dtypes
BACKEND_STATUS = registry.backends()
BACKENDS = [name for name, status in BACKEND_STATUS.items() if status == "available"]
UNAVAILABLE = [name for name, status in BACKEND_STATUS.items() if status != "available"]
DTYPES = [np.float32, np.float64]
DTYPE_IDS = ["f32", "f64"]

# Norm-relative error bound per dtype (docs/design.md, Verification): the package's dtype table.
tol = dtypes.tol


def rel_err(out, expected):
    """||out - expected|| / ||expected|| (dtypes.rel_err), with the reason when it cannot pass."""
    out = np.asarray(out, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert out.shape == expected.shape, f"shape {out.shape} != expected {expected.shape}"
    assert np.all(np.isfinite(out)), "output has non-finite elements (unwritten or garbage?)"
    assert np.linalg.norm(expected) > 0, "degenerate reference (all zeros): choose other inputs"
    return dtypes.rel_err(out, expected)


def assert_close(out, expected, dtype, what=""):
    err = rel_err(out, expected)
    assert err <= tol(dtype), f"{what}: rel err {err:.3g} > {tol(dtype):g} ({np.dtype(dtype).name})"


# ------------------------------------------------------------------------------------- shapes
class Case(NamedTuple):
    id: str
    N: int
    C: int
    H: int
    W: int
    K: int
    R: int
    S: int
    stride: object = 1
    padding: object = 0
    dilation: object = 1
    groups: int = 1

    @property
    def kw(self):
        # groups only where it is not 1: ungrouped cases also feed calls that predate it
        kw = dict(stride=self.stride, padding=self.padding, dilation=self.dilation)
        return kw if self.groups == 1 else dict(kw, groups=self.groups)

    @property
    def geometry(self):
        return sf.ConvGeometry.make(self.N, self.C, self.H, self.W, self.K, self.R, self.S,
                                    self.stride, self.padding, self.dilation, self.groups)

    @property
    def x_shape(self):
        return self.geometry.x_shape

    @property
    def w_shape(self):
        return self.geometry.w_shape

    @property
    def y_shape(self):
        return self.geometry.y_shape


# The CPU microkernel tiles (config.py: up to 8 rows x up to 4 vectors of 8-16 lanes; rows = Q in
# the conv forward, K in weight grads, N in the local input grad; vectors along K, C*R*S, S*C or
# the batch) meet tails at the K, Q and C*R*S values below.
SHAPES = [
    Case("alexnet_s4_k11", 2, 3, 35, 35, 8, 11, 11, stride=4),             # P = Q = 7
    Case("pad1_3x3", 2, 4, 10, 10, 6, 3, 3, padding=1),                     # K=6, Q=10: tails
    Case("dilation2", 2, 3, 13, 12, 5, 3, 3, padding=2, dilation=2),
    Case("nonsquare_all", 1, 3, 11, 14, 7, 3, 5, stride=(2, 1), padding=(1, 2), dilation=(1, 2)),
    Case("batch1_C1", 1, 1, 8, 9, 4, 3, 2),                                 # N=1, C=1
    Case("K1", 3, 2, 7, 7, 1, 3, 3, stride=2, padding=1),                   # K=1
    Case("K7_Q5_tails", 2, 3, 9, 7, 7, 3, 3),                               # K%4=3, Q%3=2
    Case("conv1x1", 2, 5, 6, 7, 9, 1, 1),                                   # 1x1 kernel
    Case("conv1x1_stride2_pad1", 2, 3, 7, 8, 3, 1, 1, stride=2, padding=1),
    Case("kernel_eq_input", 2, 3, 5, 5, 4, 5, 5),                           # P = Q = 1
    Case("stride_gt_kernel", 2, 2, 10, 10, 3, 2, 2, stride=3),              # dx has untouched rows
    Case("pad_gt_input", 1, 2, 4, 4, 3, 3, 3, padding=2),                   # output > input
    # stride 1 runs the input gradient as a forward conv padded by dilation*(R-1) - padding:
    # these make that amount negative (a crop), alone and mixed with a positive one
    Case("conv1x1_pad1_crop", 2, 3, 5, 6, 4, 1, 1, padding=1),
    Case("crop_mixed", 1, 2, 6, 7, 3, 3, 2, padding=(3, 0), dilation=(1, 2)),
    Case("stride_1x2", 2, 3, 8, 9, 5, 2, 3, stride=(1, 2), padding=(0, 1)),
    Case("wgrad_chunks", 2, 2, 30, 30, 3, 3, 3, padding=1),                 # P*Q > WGRAD_CHUNK
    Case("wide_row", 1, 1, 2, 600, 2, 1, 3),                                # Q > WGRAD_CHUNK
    # S*C fills whole vectors (2 of 16 float32 lanes, 4 of 8 float64): the CPU weight
    # gradient's in-place form, with a row stride, a row dilation and K past one row tile
    Case("wgrad_inplace", 2, 16, 12, 11, 10, 3, 2, stride=(2, 1), padding=1, dilation=(2, 1)),
    # alexnet's stride 4 and 11 x 11 kernel small enough for the CUDA simulator: 16 input
    # classes in the GPU input gradient, each with its own taps
    Case("stride4_k11_small", 1, 2, 19, 21, 3, 11, 11, stride=4, padding=(0, 1)),
    # padding="same" with even kernels: an odd total, the extra row/column at the end (the API
    # pads x and crops dx; the oracle pads asymmetrically itself); "valid" is 0
    Case("same_even_kernel", 2, 3, 7, 8, 4, 2, 4, padding="same", dilation=(1, 1)),
    Case("same_dilated", 1, 2, 6, 5, 3, 3, 2, padding="same", dilation=(2, 3)),
    Case("valid_word", 1, 2, 6, 7, 3, 3, 2, padding="valid"),
]
SHAPE_IDS = [c.id for c in SHAPES]
SHAPES_BY_ID = {c.id: c for c in SHAPES}


class Inputs(NamedTuple):
    x: np.ndarray
    w: np.ndarray
    b: np.ndarray
    dy: np.ndarray


def random_array(rng, shape, dtype=np.float64):
    """Random values bounded away from zero: magnitude in [0.5, 1.5), random sign."""
    mag = rng.uniform(0.5, 1.5, shape)
    return (mag * rng.choice([-1.0, 1.0], shape)).astype(dtype)


def make_inputs(case, dtype, seed=0):
    """Fresh random (x, weight, bias, grad_out) for `case`, in `dtype` (never zeros)."""
    rng = np.random.default_rng([seed, SHAPE_IDS.index(case.id) if case.id in SHAPE_IDS else 99])
    return Inputs(random_array(rng, case.x_shape, dtype), random_array(rng, case.w_shape, dtype),
                  random_array(rng, (case.K,), dtype), random_array(rng, case.y_shape, dtype))


# ------------------------------------------------------------------------- layers and passes
# The op table drives the tests: every layer kind (sf.layers()) x pass (forward and the three
# gradients) through the public API against the layer's float64 oracle.
class Layer(NamedTuple):
    spec: optable.Layer
    forward: Callable          # sf.conv2d, sf.tiled_conv2d, sf.local2d
    backward: Callable         # sf.<layer>_backward
    ref_forward: Callable      # the oracle: (x, w, b, **kw)
    ref_input: Callable        # (dy, x_shape, w, **kw)
    ref_weight: Callable       # (dy, x, w_shape, **kw)
    ref_bias: Callable         # (dy, grid)


LAYERS = {name: Layer(spec, getattr(sf, name), getattr(sf, name + "_backward"),
                      *(spec.oracle(p) for p in ("forward", *optable.GRADIENTS)))
          for name, spec in sf.layers().items()}
PASSES = ["forward", *optable.GRADIENTS]
# the layers that relax sharing (tiled, local) run over UNTIED_CASES; conv2d over SHAPES
LAYER_NAMES = [name for name, layer in LAYERS.items() if layer.spec.banked]


def grid(layer, case, tile=None):
    """The bank grid: (1, 1) shared, the tile for tiled_conv2d, (P, Q) for local2d."""
    return LAYERS[layer].spec.bank_grid(case.geometry, tile)


def layer_call(layer, pass_, backend, d, kw, **extra):
    """One pass of a layer through the public API."""
    if pass_ == "forward":
        return getattr(sf, layer)(d.x, d.w, d.b, backend=backend, **kw, **extra)
    g = getattr(sf, layer + "_backward")(d.dy, d.x, d.w, needs=(pass_,), backend=backend, **kw,
                                         **extra)
    return getattr(g, pass_)


def layer_reference(layer, pass_, d, kw):
    """float64 oracle for one pass of a layer (the op table's oracle functions)."""
    return LAYERS[layer].spec.reference(pass_, d.x, d.w, d.b, d.dy, **kw)


class Op(NamedTuple):
    api: Callable      # (backend, inputs, kw) -> array, through the public API
    ref: Callable      # (inputs, kw) -> float64 array from the oracle


def _op(layer, pass_):
    return Op(lambda be, d, kw: layer_call(layer, pass_, be, d, kw),
              lambda d, kw: layer_reference(layer, pass_, d, kw))


# the shared conv's passes over SHAPES (tests/test_conv2d_backends.py)
OPS = {pass_: _op("conv2d", pass_) for pass_ in PASSES}
OP_NAMES = list(OPS)


def reference_all(d, kw):
    """{pass: float64 reference} of conv2d for one set of inputs."""
    return {name: op.ref(d, kw) for name, op in OPS.items()}


# ---------------------------------------------------------- untied layers: local2d, tiled_conv2d
class UntiedCase(NamedTuple):
    case: Case
    tile: tuple   # tiled_conv2d's (TP, TQ); local2d ignores it

    @property
    def id(self):
        return f"{self.case.id}-t{self.tile[0]}x{self.tile[1]}"


# Kernels to cover: stride 1 (tiled dgrad runs as a tiled conv by input class) and > 1 (gather
# kernel), padding larger than the kernel's reach, dilation, N not a multiple of 8 or 4 (the NN
# microkernel takes the batch 8, 4, 1 terms at a time), K and Q tails, tiles not dividing P, Q.
UNTIED_CASES = [
    UntiedCase(SHAPES_BY_ID["alexnet_s4_k11"], (2, 2)),              # P = Q = 7: 7 % 2 = 1
    UntiedCase(SHAPES_BY_ID["pad1_3x3"], (3, 2)),
    UntiedCase(SHAPES_BY_ID["dilation2"], (2, 3)),
    UntiedCase(SHAPES_BY_ID["nonsquare_all"], (2, 1)),
    UntiedCase(SHAPES_BY_ID["batch1_C1"], (1, 3)),
    UntiedCase(SHAPES_BY_ID["K7_Q5_tails"], (3, 5)),                 # TQ = Q
    UntiedCase(SHAPES_BY_ID["kernel_eq_input"], (1, 1)),             # P = Q = 1
    UntiedCase(SHAPES_BY_ID["stride_gt_kernel"], (2, 2)),
    UntiedCase(SHAPES_BY_ID["pad_gt_input"], (6, 4)),                # tile > input, <= output
    UntiedCase(SHAPES_BY_ID["crop_mixed"], (2, 2)),
    UntiedCase(Case("batch13", 13, 2, 7, 6, 5, 3, 2, stride=(1, 2), padding=1), (2, 2)),
    UntiedCase(Case("batch9_dil", 9, 3, 9, 9, 4, 2, 3, stride=2, dilation=(2, 1)), (3, 1)),
    UntiedCase(SHAPES_BY_ID["wgrad_chunks"], (4, 3)),                # P*Q > WGRAD_CHUNK
    UntiedCase(SHAPES_BY_ID["stride4_k11_small"], (2, 3)),
    UntiedCase(SHAPES_BY_ID["same_even_kernel"], (2, 3)),
    UntiedCase(SHAPES_BY_ID["same_dilated"], (3, 2)),
    # S*C fills whole vectors: the tiled weight gradient class by class, in place (cpu)
    UntiedCase(SHAPES_BY_ID["wgrad_inplace"], (2, 3)),
]
UNTIED_IDS = [c.id for c in UNTIED_CASES]
UNTIED_BY_ID = {c.case.id: c for c in UNTIED_CASES}


# ------------------------------------------------------------------------------ CUDA simulator
# Under NUMBA_ENABLE_CUDASIM=1 every CUDA thread is a Python thread: a kernel costs about 20 us
# per multiply-add. Cases above this many forward multiply-adds (N*K*P*Q*C*R*S) are skipped for
# the numba-cuda backend on the simulator (conftest.py); a GPU (-m gpu and the plain suite on a
# GPU machine) runs them all. Every kernel path is still covered by the smaller cases.
SIM_MAX_MACS = 20000
# Tables whose every call runs a pass twice or more (the 16-bit table: a float32 and a stored
# result, per dtype) take a lower bound on the simulator: their marker says so,
# @pytest.mark.sim_kernel_table(max_macs=...).


def case_macs(case):
    return case.geometry.macs


def sim_signature(layer, pass_, case, tile, dtype):
    """What one pass of the main registry tables exercises in the Numba CUDA kernels: the
    kernel, the layer's grid kind, its block tile from the (simulator's) tile menu, the dtype,
    strided or not, and the weight gradient's reduction mode (one chunk: owner adds; several:
    atomics). Two cases with one signature run the same kernel code the same way, so on the
    simulator (about 20 us per multiply-add) the main tables run the first case of each
    signature and skip the rest (a GPU runs them all)."""
    from sharenet_fast import _gpu_host as host
    from sharenet_fast import config

    g = case.geometry
    TP, TQ = grid(layer, case, tile)
    strided = g.stride != (1, 1)
    ncol = host.class_columns(g.N, g.P, g.Q, TP, TQ)        # output classes, as the host cuts
    if pass_ == "forward":
        rows, cols, mode = g.Kg, ncol, None
    elif pass_ == "input":
        LH, LW = g.stride[0] * TP, g.stride[1] * TQ
        rows, cols, mode = g.Cg, host.class_columns(g.N, g.H, g.W, LH, LW), None
    elif pass_ == "weight":
        rows, cols, mode = g.Kg, g.Cg * g.R * g.S, ncol > config.CUDA_WGRAD_CHUNK
    else:
        return (pass_, LAYERS[layer].spec.sharing, np.dtype(dtype).name,
                min(config.CUDA_BIAS_THREADS, 1 << max(0, (ncol - 1).bit_length())))
    return (pass_, LAYERS[layer].spec.sharing, np.dtype(dtype).name, strided, mode,
            tuple(host.pick_tiles(rows, cols)), g.groups > 1, g.Kg < g.K and g.Cg == 1)


# How a test is pruned on the simulator is its marker (pyproject.toml registers them; tests run
# with --strict-markers), never its name:
# - sim_kernel_table: a main registry table; runs the first case of each kernel signature.
# - sim_one_case: a test of relations between layers (identities, accumulation, golden files)
#   rather than of one kernel path; runs its cheapest case and dtype for every other parameter
#   combination (the kernels' dtype and case coverage is the main tables' job).
SIM_MARKS = ("sim_kernel_table", "sim_one_case")
_CASE_KEYS = ("dtype", "case_id", "case", "uc", "path")


def _case_of(params):
    case = params.get("case") or getattr(params.get("uc"), "case", None) or \
        params.get("case_id")
    if isinstance(case, str):
        case = SHAPES_BY_ID.get(case) or getattr(UNTIED_BY_ID.get(case), "case", None)
    return case


def _sim_group(test, mark, params):
    """(group, cost) of a simulator test (function `test`, marker name `mark`) that only needs
    one representative per group, or None: a kernel table's group is its kernel signature, a
    relation test's group is its parameters without case and dtype; the cost is the case's
    multiply-adds."""
    from sharenet_fast import config

    if mark is None or not config.CUDASIM or params.get("backend") != "numba-cuda":
        return None
    case = _case_of(params)
    cost = case_macs(case) if isinstance(case, Case) else 0
    if mark == "sim_one_case":
        rest = tuple(sorted((k, str(v)) for k, v in params.items() if k not in _CASE_KEYS))
        return (test, rest), cost
    if "uc" in params:
        # a test of one pass (pass_) or of them all (no pass_: its signature is every pass's)
        layer, tile = params["layer"], params["uc"].tile
        passes = (params["pass_"],) if "pass_" in params else PASSES
    else:
        layer, passes, tile = "conv2d", (params["op"],), (1, 1)
    return (test, tuple(sim_signature(layer, p, case, tile, params["dtype"])
                        for p in passes)), cost


def sim_repeats(tests):
    """{index: why it is skipped} for the (test, mark, params) triples that repeat a group's
    cheapest representative on the simulator (every case runs on a GPU)."""
    best, groups = {}, [_sim_group(*t) for t in tests]
    for i, got in enumerate(groups):
        if got is not None and (got[0] not in best or got[1] < best[got[0]][1]):
            best[got[0]] = (i, got[1])
    keep = {i for i, _ in best.values()}
    why = {"sim_kernel_table": "CUDA simulator: a cheaper case of this table runs the same "
                               "kernel, tile, dtype and mode (every case runs on a GPU)",
           "sim_one_case": "CUDA simulator: this relation is checked on its cheapest case and "
                           "dtype (every case runs on a GPU)"}
    return {i: why[tests[i][1]] for i, got in enumerate(groups)
            if got is not None and i not in keep}


def sim_too_slow(params, max_macs=SIM_MAX_MACS):
    """Why a test with these parametrize values is too slow for the simulator (cases above
    `max_macs` multiply-adds), or None."""
    from sharenet_fast import config

    if not config.CUDASIM or params.get("backend") != "numba-cuda":
        return None
    for value in params.values():
        if isinstance(value, UntiedCase):
            value = value.case
        if isinstance(value, str):
            value = SHAPES_BY_ID.get(value) or getattr(UNTIED_BY_ID.get(value), "case", None)
        if isinstance(value, Case) and case_macs(value) > max_macs:
            return (f"CUDA simulator: {value.id} has {case_macs(value)} multiply-adds "
                    f"(> {max_macs}); runs on a GPU")
    return None


class LayerInputs(NamedTuple):
    x: np.ndarray
    w: np.ndarray
    b: np.ndarray
    dy: np.ndarray


def make_layer_inputs(layer, uc, dtype, seed=0):
    """Fresh random (x, weight, bias, grad_out) for one layer and case (never zeros)."""
    case, spec = uc.case, LAYERS[layer].spec
    g = case.geometry
    gr = grid(layer, case, uc.tile)
    rng = np.random.default_rng([seed, list(LAYERS).index(layer), sum(map(ord, uc.id))])
    return LayerInputs(random_array(rng, case.x_shape, dtype),
                       random_array(rng, spec.weight_shape(g, gr), dtype),
                       random_array(rng, spec.bias_shape(g, gr), dtype),
                       random_array(rng, case.y_shape, dtype))


# ------------------------------------------------------------------ fuzz subprocess (boundscheck)
FUZZ_SCRIPT = os.path.join(TESTS_DIR, "_fuzz_boundscheck.py")
FUZZ_TIMEOUT_S = 420  # generous: the machine may be shared; it takes about a minute alone


def _package_root():
    return os.path.dirname(os.path.dirname(os.path.abspath(sf.__file__)))


class FuzzRun:
    """The fuzz script running in a subprocess with NUMBA_BOUNDSCHECK=1; output to a temp file."""

    def __init__(self, max_examples=25):
        env = dict(os.environ)
        env["NUMBA_BOUNDSCHECK"] = "1"
        env["SHARENET_FAST_CACHE"] = "0"   # never load kernels compiled without boundscheck
        env["PYTHONPATH"] = os.pathsep.join(
            [_package_root()] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        self.log = tempfile.TemporaryFile(mode="w+")
        # a scratch cwd: hypothesis writes a .hypothesis/ cache into its working directory
        self.workdir = tempfile.TemporaryDirectory(prefix="sharenet_fuzz_")
        self.start = time.perf_counter()
        self.proc = subprocess.Popen([sys.executable, FUZZ_SCRIPT, str(max_examples)], env=env,
                                     stdout=self.log, stderr=subprocess.STDOUT,
                                     cwd=self.workdir.name)

    def result(self, timeout=FUZZ_TIMEOUT_S):
        """(returncode, output, seconds); kills the subprocess if it overruns `timeout`."""
        left = max(1.0, timeout - (time.perf_counter() - self.start))
        try:
            rc = self.proc.wait(timeout=left)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            rc = None
        elapsed = time.perf_counter() - self.start
        self.log.seek(0)
        out = self.log.read()
        self.stop()
        return rc, out, elapsed

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if not self.log.closed:
            self.log.close()
        self.workdir.cleanup()


def once_per_run(name, compute):
    """compute()'s result, computed once per test run by whichever process asks first (under
    pytest-xdist the workers share the run directory the root conftest.py makes); the others
    wait for it and load it. An exception (a skip included) is not kept: the next asker tries."""
    run = os.environ.get("SHARENET_FAST_TEST_RUN")
    if not run:
        return compute()
    import fcntl
    import pickle

    path = os.path.join(run, f"{name}.pickle")
    with open(path + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)         # released when the file closes
        if os.path.exists(path):
            with open(path, "rb") as f:
                return pickle.load(f)
        result = compute()
        with open(path + ".tmp", "wb") as f:
            pickle.dump(result, f)
        os.replace(path + ".tmp", path)
        return result
