"""Numba CUDA backend: @cuda.jit kernels (built lazily: importing needs no GPU).

Host functions follow the op table (optable.py). They take device arrays (CuPy or Numba) and
return the same kind; the API copies NumPy arrays to the device and back once per call
(to_device / to_host below), which is also how the kernels run under NUMBA_ENABLE_CUDASIM=1.
All three layers run on the banked kernels of conv2d.py with their tile (shared = 1 x 1, tiled =
(TP, TQ), local = (P, Q)), through the host side shared with the cupy backend (_gpu_host).
"""
try:
    from numba import cuda
except ImportError as exc:     # reported by the registry as this backend's reason
    raise ImportError(f"numba.cuda does not import ({exc}); "
                      f"pip install 'sharenet_fast[cuda]'") from exc

from .. import _gpu_host, config, dtypes
from ..optable import LAYERS
from .conv2d import DEV

KINDS = ("numba", "cupy", "numpy")
GROUPS = True          # groups: every kernel's filter/channel blocks run group by group
# bfloat16 / float16 storage accumulates in float32; device arrays keep the bfloat16 dtype and
# the kernels see its uint16 bits (a view at each launch: _launch._held, numba_cuda/_convert.py)
DTYPES = dtypes.NAMES


def unavailable():
    """None if the kernels can run here (a CUDA GPU, or the simulator), else the reason.
    (numba.cuda itself imported above: without it this package does not import, and the
    registry reports that ImportError with its install hint.)"""
    if config.CUDASIM:
        return None
    try:
        if cuda.is_available():
            return None
    except Exception as exc:  # pragma: no cover - depends on the driver
        return f"CUDA driver error: {type(exc).__name__}: {exc}"
    return ("no CUDA GPU found (numba.cuda.is_available() is False); "
            "NUMBA_ENABLE_CUDASIM=1 runs these kernels on Numba's simulator")


def to_device(a):
    return cuda.to_device(a)


def to_host(d):
    return d.copy_to_host()


def copy_into(d, out):
    d.copy_to_host(out)


conv2d, conv2d_input_grad, conv2d_weight_grad, conv2d_bias_grad = \
    _gpu_host.layer_ops(DEV, LAYERS["conv2d"])
tiled_conv2d, tiled_conv2d_input_grad, tiled_conv2d_weight_grad, tiled_conv2d_bias_grad = \
    _gpu_host.layer_ops(DEV, LAYERS["tiled_conv2d"])
local2d, local2d_input_grad, local2d_weight_grad, local2d_bias_grad = \
    _gpu_host.layer_ops(DEV, LAYERS["local2d"])
soft_sharing_penalty = _gpu_host.penalty_op(DEV)
neighbour_penalty, average_banks = _gpu_host.bank_ops(DEV)
