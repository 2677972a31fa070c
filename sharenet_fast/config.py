"""The one place for compile and launch settings.

Everything that changes how kernels are compiled (fastmath, caching) or how work is cut up
(register tiles, chunk sizes) lives here, so tests and benchmarks can see and override it.
"""
import os

# LLVM fast-math flags for every Numba CPU kernel. reassoc/contract let LLVM vectorise the
# reductions and fuse multiply-adds; nnan/ninf are left out on purpose so NaN/Inf propagate.
FASTMATH = frozenset({"contract", "reassoc", "nsz", "arcp"})

# On-disk caching of compiled kernels is opt-in: SHARENET_FAST_CACHE=1.
CACHE = os.environ.get("SHARENET_FAST_CACHE", "0") == "1"


def _target_vector_bytes():
    """Vector register width (bytes) of the target Numba compiles for: 64 with AVX-512, else 32.

    Numba compiles for NUMBA_CPU_NAME (default: the host) with NUMBA_CPU_FEATURES (default: the
    host's features), so the AVX2 build (NUMBA_CPU_NAME=haswell NUMBA_CPU_FEATURES=...) is seen
    here the same way Numba sees it. SHARENET_FAST_VECTOR_BYTES overrides (32 or 64)."""
    forced = os.environ.get("SHARENET_FAST_VECTOR_BYTES")
    if forced:
        if forced not in ("32", "64"):
            raise ValueError(f"SHARENET_FAST_VECTOR_BYTES must be 32 or 64, got {forced!r}")
        return int(forced)
    import llvmlite.binding as ll
    from numba.core import config as nconfig
    features = nconfig.CPU_FEATURES
    if features is None:
        features = ll.get_host_cpu_features().flatten()
    if "+avx512f" in features.split(","):
        return 64
    if not features:  # the CPU name alone decides
        name = nconfig.CPU_NAME or ll.get_host_cpu_name()
        if any(k in name for k in ("avx512", "icelake", "tigerlake", "cooperlake", "cascadelake",
                                   "sapphirerapids", "emeraldrapids", "graniterapids",
                                   "znver4", "znver5", "rocketlake", "cannonlake")):
            return 64
    return 32


VEC_BYTES = _target_vector_bytes()


def _target_has(feature):
    """Whether the target Numba compiles for has CPU feature `feature` ("avx512bf16"): from
    NUMBA_CPU_FEATURES, else the host's features when Numba compiles for the host (a CPU name
    alone, without features: no)."""
    import llvmlite.binding as ll
    from numba.core import config as nconfig
    features = nconfig.CPU_FEATURES
    if features is None:
        if nconfig.CPU_NAME not in (None, "host"):
            return False
        features = ll.get_host_cpu_features().flatten()
    return f"+{feature}" in features.split(",")


# bfloat16 storage: the local layer's forward multiplies bfloat16 pairs with AVX512_BF16's
# vdpbf16ps (cpu/_simd.py, outer_product_dot) where the target has it; elsewhere, and with
# SHARENET_FAST_DOT_BF16=0, it widens to float32 and uses FMAs (the same sums to 1e-5).
DOT_BF16 = (VEC_BYTES == 64 and os.environ.get("SHARENET_FAST_DOT_BF16", "1") != "0"
            and _target_has("avx512bf16"))
# ... on blocks of this many images (its tile: 8 filters x 8 images x 4 steps per vector)
DOT_BF16_COLUMNS = 8

# Register tiles of the outer-product microkernel (cpu/_simd.py), (MR rows, NV vectors of
# columns), from the target's vector width: AVX-512 has 32 vector registers, AVX2 16.
# local2d forward: rows = filters, columns = the batch. With a split reduction (batch < lanes)
# one vector of columns.
# local2d weight gradient: rows = filters, columns = the reduction T (the batch is the short
# reduction). Input gradient: rows = images, columns = T, reduction over the filters.
if VEC_BYTES == 64:
    FWD_TILE = (8, 2)
    FWD_TILE_SPLIT = (8, 1)
    WGRAD_TILE = (4, 4)
    # 4 images x 4 vectors of T: runs of 256 bytes along each W row (8 x 2 read 128-byte runs:
    # the input gradient alone at alexnet_conv1 20.1 -> 15.9 ms, deepface_l4 14.8 -> 13.9);
    # 16-bit weights: 4 x 6 (192-byte runs; 13.8 -> 10.4 and 11.2 -> 9.3 ms in bfloat16)
    DGRAD_TILE = (4, 4)
    DGRAD_TILE_16 = (4, 6)
    # shared/tiled conv (all passes): accumulator budget and most vectors along the columns
    CONV_ACC, CONV_NVMAX = 24, 4
    # the shared conv's in-place weight gradient: most vectors along a tap's S*C inputs
    WGRAD_DIRECT_NVMAX = 6
    # the direct (rows form) forward: accumulators and vectors along q
    CONV_ROWS_ACC, CONV_ROWS_NVMAX = 24, 4
    # ... in bfloat16 pairs (vdpbf16ps): 8 filters x 2 vectors (6 x 4 ties with it at
    # deepface_l4 and vgg_3x3, and was 1.4x slower while B's tail loads were masked)
    CONV_ROWS_PAIRS_NVMAX = 2
    # the shared conv's weight gradient in bfloat16 pairs: 8 filters x 3 vectors of taps
    # (alexnet_conv1 3.37 ms, deepface_l4 1.35 against 4.4-4.5 and 1.5-1.9 at 6 x 4 and 8 x 2)
    WGRAD_PAIRS_TILE = (8, 3)
else:
    FWD_TILE = (4, 2)
    FWD_TILE_SPLIT = (8, 1)
    WGRAD_TILE = (4, 2)
    DGRAD_TILE = DGRAD_TILE_16 = (4, 2)
    CONV_ACC, CONV_NVMAX = 12, 3
    WGRAD_DIRECT_NVMAX = 3
    # a 4 x 3 or 6 x 2 tile in the direct forward's 3-level loop spilled on 16 ymm: deepface_l4
    # (K = 16) 15.5 ms, 2.5x the gathered form; 4 x 2: 3.3 ms at K = 8 (gathered 3.7)
    CONV_ROWS_ACC, CONV_ROWS_NVMAX = 8, 2
    CONV_ROWS_PAIRS_NVMAX = 2       # (no pairs kernels without AVX-512)
    WGRAD_PAIRS_TILE = (8, 3)
# ... used where S*C fills at least this fraction of its vectors' lanes (else the gathered form)
WGRAD_DIRECT_FILL = 0.8
# cache lines of the next bank the input gradient prefetches per reduction step
DGRAD_PREFETCH = 4
# local2d input gradient (images innermost): rows = consecutive taps t of a bank, columns =
# up to DGRAD_NVMAX vectors of images, reduction over the filters
DGRAD_ROWS = 8
DGRAD_NVMAX = 2

# local2d forward: the weights are prefetched into L2 this many tiles of MR filters ahead
# (alexnet_conv1, one core: 1 tile ahead 15.6-15.8 us per position, 4 ahead 14.8, none 24).
FWD_PREFETCH = 4

# Parallel CPU kernels over positions run this many tasks (runs of consecutive positions): many
# more than cores, so the last task is short, and each a contiguous stretch of the weights.
POSITION_BLOCKS = 64
# The input gradient's tasks are tiles of positions; along q at least this many per tile.
POSITION_TILE = 8
# ... and write their NCHW outputs in runs of up to QB positions along a row (64 bytes of float32).
QB = 16

# Weight-gradient reduction: positions (N*P*Q) are cut into chunks of about this many output
# positions; each chunk writes a private partial (K x C*R*S), summed in a fixed order.
WGRAD_CHUNK = 512
# At most this many partials: bounds the workspace (partials x K x C*R*S) for large batches
# while leaving many more partials than cores. Fixed, so the summation order never depends on
# the thread count.
WGRAD_MAX_PARTIALS = 64

# soft_sharing_penalty on the CPU: elements are cut into chunks of this many, each chunk's sum of
# squares a float64 partial, the partials summed in chunk order: the same bits on any number of
# threads. 64 Ki elements (256 KB of float32 per array) keeps a chunk's four streams in L2.
PENALTY_CHUNK = 1 << 16

# average_banks on the CPU: a task sums a chunk of this many elements of each bank of a block
# (runs of 8 KB of float32: long enough for the prefetchers; twice that where there are tasks
# enough) and streams the mean back. alexnet_conv1's banks, 2-core Zen 5, % of copy: every
# position one block 38 / 60 / 66 / 61 / 54% at 256 / 1024 / 2048 / 4096 / 8192 elements, 2x2
# blocks 33 / 50 / 55 / 60 / 58%.
AVERAGE_CHUNK = 2048

NJIT_OPTIONS = dict(fastmath=set(FASTMATH), cache=CACHE, nogil=True)


def njit_options(parallel=False):
    opts = dict(NJIT_OPTIONS)
    if parallel:
        opts["parallel"] = True
    return opts
# Workspace budget for those partials (bytes): a tiled layer's partial holds every bank, so
# with many banks fewer partials are used (never fewer than 4, so both cores stay busy).
WGRAD_MAX_WORKSPACE = 256 * 2**20

# CPU scratch buffers up to this size are kept between calls (cpu/_workspace.py) instead of
# being allocated afresh: each one is reused by the next call of the same kernel.
WORKSPACE_CACHE_BYTES = 64 * 2**20

# Results (arrays handed to the caller) of at least RESULT_POOL_MIN_BYTES come from a pool of
# recycled buffers (cpu/_workspace.py, result()): a buffer goes back to the pool when the
# caller's last view of it dies, and the pool keeps at most RESULT_POOL_BYTES of such free
# buffers (env SHARENET_FAST_RESULT_POOL_MB; 0 turns it off). A locally-connected weight
# gradient is the weight's size (422 MB at alexnet_conv1): fresh memory each call cost page
# faults and, after other programs had freed memory, the kernel's compaction for huge pages:
# 46-57 ms per call in a clean process and 130-570 ms after TensorFlow or JAX ran, for a
# kernel taking 36.
RESULT_POOL_BYTES = int(float(os.environ.get("SHARENET_FAST_RESULT_POOL_MB", 1024)) * 2**20)
RESULT_POOL_MIN_BYTES = 16 * 2**20

# ----------------------------------------------------------------------- Numba CUDA launch geometry
# Under NUMBA_ENABLE_CUDASIM=1 every CUDA thread is a Python thread, so the tests shrink the
# blocks here, in the one place, instead of in the kernels (which read these when first built).
CUDASIM = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") == "1"

# Block tiles of the implicit-GEMM kernels (numba_cuda/conv2d.py, kernels/conv2d.cu), (BM, BN,
# BK, TM, TN): a
# block computes BM rows x BN columns of the output with (BM/TM) x (BN/TN) threads, each holding
# TM x TN accumulators in registers, and steps through the reduction BK at a time, staging a
# BM x BK and a BK x BN tile in shared memory. Each launch picks the menu entry that pads its
# (rows, columns) least (_gpu_host.pick_tiles; both GPU backends): the suite's rows are 3 to 96 filters or
# channels (a fixed 64-row tile would leave 95% of alexnet's input-gradient block idle) and a
# local layer's columns are the batch. The first entry, 64 x 64 with 4 x 4 per thread (16 FMAs
# per 8 shared loads, 256 threads), is the general one. Every entry keeps 128-256 threads and
# at most 8 staged elements per thread, so nothing spills (the PTX tests check).
CUDA_TILE_MENU_GPU = (
    (64, 64, 8, 4, 4),      # general
    (32, 128, 8, 4, 4),     # K = 32, 96
    (16, 128, 8, 2, 4),     # K or C = 16
    (4, 256, 8, 1, 4),      # C = 3 (alexnet's input gradient)
    (128, 16, 8, 8, 2),     # a local layer at batch 16
    (128, 8, 8, 8, 1),      # ... at batch 8
)
CUDA_TILE_MENU_SIM = ((8, 8, 4, 2, 2), (4, 16, 4, 2, 2), (2, 16, 4, 1, 2), (16, 4, 4, 4, 1))
CUDA_TILE_MENU = CUDA_TILE_MENU_SIM if CUDASIM else CUDA_TILE_MENU_GPU

# Kernel sizes (R, S) the CUDA C forward and weight-gradient kernels are compiled for with R and
# S as constants (kernels/conv2d.cu); any other size runs the generic instance.
CUDA_KERNEL_SIZES = ((1, 1), (3, 3), (5, 5), (7, 7), (9, 9), (11, 11))

# Weight gradient: a block reduces this many output positions of its tile class before its one
# atomic add per weight (or its partial, deterministic=True). Enough chunks to fill 132 SMs at
# the suite's sizes; at most CUDA_WGRAD_MAX_CHUNKS, which bounds the deterministic workspace.
CUDA_WGRAD_CHUNK = 16 if CUDASIM else 1024
CUDA_WGRAD_MAX_CHUNKS = 256
# Deterministic workspace cap (bytes): fewer, longer chunks beyond it.
CUDA_WGRAD_MAX_WORKSPACE = 256 * 2**20

# Threads of a bias-gradient block (at most: the host launches a power of two up to this).
CUDA_BIAS_THREADS = 16 if CUDASIM else 128
# Threads per block of the elementwise kernels (fill, partial sums).
CUDA_THREADS = 32 if CUDASIM else 256

# soft_sharing_penalty: a fixed grid of at most this many blocks of CUDA_PENALTY_THREADS threads
# strides over the elements (8 blocks of 256 per SM on a 132-SM H100 keeps enough loads in flight
# to stream at full bandwidth); each block's float64 sum of squares goes to a partial, and one
# block sums the partials in order: the same bits on every run. A power of two (tree reduction).
CUDA_PENALTY_THREADS_GPU = 256
CUDA_PENALTY_THREADS = 32 if CUDASIM else CUDA_PENALTY_THREADS_GPU
CUDA_PENALTY_BLOCKS = 4 if CUDASIM else 1056

# backend="auto" for CuPy arrays: the GPU backend each op goes to (an op table name or
# soft_sharing_penalty; AUTO_GPU_DEFAULT for any op not listed). To be set from the GPU
# benchmark (python -m bench --gpu: the faster backend per op and pass); no GPU has run it yet,
# so every op goes to numba-cuda, the backend that also runs (on the simulator) without one.
# A choice that is not available here falls back to the other GPU backend. Numba device arrays
# always go to numba-cuda (the cupy backend takes CuPy arrays).
AUTO_GPU_DEFAULT = "numba-cuda"
AUTO_GPU = {}


def auto_gpu(op):
    return AUTO_GPU.get(op, AUTO_GPU_DEFAULT)
