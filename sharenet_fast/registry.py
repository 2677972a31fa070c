"""The one registry of backends: name -> module, loaded lazily, with the reason a backend is missing.

Every backend module exposes the same host functions, so dispatch is a lookup and tests iterate
over this table. For op in conv2d, local2d, tiled_conv2d (validated arrays, a ConvGeometry g):

    op(x, weight, bias, g) -> y
    op_input_grad(dy, weight, g) -> dx
    op_weight_grad(dy, x, g, out=None, deterministic=False[, tile]) -> dw (added into out)
    op_bias_grad(dy, out=None[, tile]) -> db (added into out)
    op_input_weight_grad(dy, x, weight, g, out=None, ...) -> (dx, dw)   optional: one fused pass

tiled_conv2d's weight and bias gradients take tile=(TP, TQ); local2d's grid is (g.P, g.Q).
"""
import importlib

# name -> (module path, one-line description)
BACKENDS = {
    "cpu": ("sharenet_fast.cpu", "Numba @njit(parallel=True) kernels"),
    "reference": ("sharenet_fast._reference_backend", "float64 NumPy oracle"),
    "numba-cuda": ("sharenet_fast.numba_cuda", "Numba CUDA kernels"),
    "cupy": ("sharenet_fast.cupy_backend", "CUDA C kernels from kernels/ compiled by CuPy"),
}

_loaded = {}


def _try_load(name):
    if name in _loaded:
        return _loaded[name]
    try:
        module = importlib.import_module(BACKENDS[name][0])
        # a backend that imports may still lack its device: it says why
        why = module.unavailable() if hasattr(module, "unavailable") else None
        result = (module, "available") if why is None else (None, why)
    except Exception as exc:  # pragma: no cover - depends on the machine
        result = (None, f"import failed: {type(exc).__name__}: {exc}")
    _loaded[name] = result
    return result


def backends():
    """{name: "available" or the reason it is not}."""
    return {name: _try_load(name)[1] for name in BACKENDS}


def get(name):
    """The backend module for `name`; ValueError for an unknown name, RuntimeError if missing."""
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {sorted(BACKENDS) + ['auto']}, got {name!r}")
    module, why = _try_load(name)
    if module is None:
        raise RuntimeError(f"backend {name!r} is not available: {why}")
    return module
