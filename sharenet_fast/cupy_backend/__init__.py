"""CuPy backend: the CUDA C kernels of kernels/ compiled at run time by NVRTC (cupy.RawModule),
launched with the host logic shared with the Numba CUDA backend (sharenet_fast/_gpu_host.py).

Host functions follow the op table (optable.py; _gpu_host.layer_ops on this backend's DEV). They
take CuPy arrays and return CuPy arrays (the API copies NumPy arrays in and out once per call
through to_device / to_host; Numba device arrays are refused: KINDS); the kernels run on CuPy's
current stream. float32, float64, bfloat16 and float16 (CuPy's bfloat16 is ml_dtypes', as
NumPy's). Status: compiled by NVRTC (tests/test_cupy_backend.py) and run by a g++ emulation
(tests/test_cupy_emulated.py) without a GPU; not yet run on a GPU.
"""
from .. import _gpu_host as host
from .. import config, dtypes
from .._device import flat
from .._gpu_kernels import out_of
from ..optable import LAYERS
from . import _loader

KINDS = ("cupy", "numpy")
GROUPS = True          # groups: every kernel's filter/channel blocks run group by group
DTYPES = dtypes.NAMES       # bfloat16 / float16 storage accumulates in float32 (kernels/*.cu)


def unavailable():
    """None if CuPy can run kernels here, else the reason."""
    try:
        import cupy
    except ImportError as exc:
        return f"cupy does not import ({exc}); pip install 'sharenet_fast[cupy]'"
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        return f"no CUDA GPU for CuPy ({type(exc).__name__}: {exc})"
    if n < 1:
        return "no CUDA GPU for CuPy (device count 0)"
    return None


def to_device(a):
    import cupy

    return cupy.asarray(a)


def to_host(d):
    return d.get()


def copy_into(d, out):
    d.get(out=out)


class _CupyDevice:
    """The `dev` of _gpu_host (a _gpu_host.Device) for CuPy: RawModule kernels, CuPy arrays,
    the current stream."""

    @staticmethod
    def empty(like, shape, dtype):
        import cupy

        return cupy.empty(shape, dtype=dtype)

    @staticmethod
    def zeros(like, shape, dtype):
        import cupy

        return cupy.zeros(shape, dtype=dtype)

    @staticmethod
    def to_device_like(like, a):
        return to_device(a)

    flat = staticmethod(flat)

    @staticmethod
    def launch(tag, dt, tiles, grid, threads, like, args, ksize=None):
        # args: NumPy scalars of the declared types (np.int64 for every i64) and CuPy arrays
        kernel = _loader.module(dt).get_function(
            _loader.name(tag, dt, tiles, config.CUDA_BIAS_THREADS, ksize,
                         out=out_of(tag, dt, args)))
        grid = tuple(grid) if isinstance(grid, tuple) else (grid,)
        kernel(grid, (threads,), args)


DEV = _CupyDevice()


conv2d, conv2d_input_grad, conv2d_weight_grad, conv2d_bias_grad = \
    host.layer_ops(DEV, LAYERS["conv2d"])
tiled_conv2d, tiled_conv2d_input_grad, tiled_conv2d_weight_grad, tiled_conv2d_bias_grad = \
    host.layer_ops(DEV, LAYERS["tiled_conv2d"])
local2d, local2d_input_grad, local2d_weight_grad, local2d_bias_grad = \
    host.layer_ops(DEV, LAYERS["local2d"])
soft_sharing_penalty = host.penalty_op(DEV)
neighbour_penalty, average_banks = host.bank_ops(DEV)
