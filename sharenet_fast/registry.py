"""The one registry of backends: name -> module, loaded lazily, with the reason a backend is missing.

Every backend module exports the host functions the op table names (optable.required_exports();
signatures in optable.py), so dispatch is a lookup and tests iterate over this table, and says
which arrays it takes: KINDS, its first entry the kind it computes on, and which storage dtypes
(DTYPES, names from dtypes.py; a backend with reduced ones takes out_dtype= in every pass). A
GPU backend (KINDS[0] a device kind) also exports to_device(a), to_host(d) and copy_into(d,
out): the API moves NumPy arrays through them, once per call.
"""
import importlib

# name -> (module path, one-line description)
BACKENDS = {
    "cpu": ("sharenet_fast.cpu", "Numba @njit(parallel=True) kernels"),
    "reference": ("sharenet_fast._reference_backend", "float64 NumPy oracle"),
    "numba-cuda": ("sharenet_fast.numba_cuda", "Numba CUDA kernels"),
    "cupy": ("sharenet_fast.cupy_backend", "CUDA C kernels from kernels/ compiled by CuPy"),
}

GPU = ("numba-cuda", "cupy")

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


def name_of(module):
    """The registry name of a loaded backend module."""
    return next(n for n, (path, _) in BACKENDS.items() if path == module.__name__)
