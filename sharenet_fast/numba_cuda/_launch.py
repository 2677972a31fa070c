"""Launch plumbing of the Numba CUDA backend: allocation, streams, the simulator, and the
Numba signatures of the declared kernels (_gpu_kernels.KERNELS).

Outputs are allocated as the inputs' kind: CuPy arrays (from CuPy's memory pool) for CuPy
inputs, Numba device arrays otherwise. Kernels run on CuPy's current stream for CuPy inputs,
so they order correctly with the caller's CuPy work, and on the default stream otherwise.
"""
import functools
import sys
import threading

import numpy as np
from numba import cuda  # a module global: the simulator swaps it inside kernels

from .. import config
from .. import _gpu_host as host
from .. import _gpu_kernels as decl
from .._device import flat, kind  # noqa: F401 - flat: the 1-D views the kernels take
from ._convert import held


def numba_type(ty, dt, out=None):
    """The Numba type of a declared argument type ("const T*", "i64", ...) for DType dt and
    result dtype `out`: a pointer is a 1-D C-contiguous array; bfloat16 is held as uint16."""
    from numba import from_dtype

    base, pointer, _ = decl.split(ty)
    t = from_dtype(held(decl.element(base, dt, out)))
    return t[::1] if pointer else t


def signature(tag, dt, out=None):
    """The argument types of kernel `tag` as _gpu_host passes them (_gpu_kernels.pack)."""
    return tuple(numba_type(ty, dt, out) for _, ty in decl.KERNELS[tag].args)


@functools.lru_cache(maxsize=None)
def fill_kernel():
    """a[:size] = value (grid-stride); typed by its arguments at the first launch."""
    @cuda.jit(fastmath=False)
    def fill_kernel(a, value, size):
        start = cuda.grid(1)
        for e in range(start, size, cuda.gridsize(1)):
            a[e] = value
    return fill_kernel


def compile_ptx(dtype, cc=(9, 0)):
    """{"fill": PTX} of the fill kernel; needs NVVM, not a GPU."""
    dt = decl.row(dtype)
    return {"fill": cuda.compile_ptx(fill_kernel().py_func, signature("fill", dt), cc=cc)[0]}


def device_empty(like, shape, dtype):
    """A new array of `shape` and `dtype` of like's kind: CuPy, or a Numba device array (a
    bfloat16 one too: launches view it as its uint16 bits, _held)."""
    if kind(like) == "cupy":
        import cupy

        return cupy.empty(shape, dtype=dtype)
    return cuda.device_array(shape, dtype=dtype)


def device_zeros(like, shape, dtype):
    if kind(like) == "cupy":
        import cupy

        return cupy.zeros(shape, dtype=dtype)
    a = device_empty(like, shape, dtype)
    if a.size:
        args = decl.pack("fill", decl.row(dtype), dict(a=flat(a), value=0, size=a.size))
        # the value as the array holds it (a uint16 zero for bfloat16: the same bits)
        launch(fill_kernel(), *host.elementwise_grid(a.size), stream_for(like),
               args[0], np.zeros(1, held(a.dtype))[0], args[2])
    return a


def stream_for(like):
    if kind(like) == "cupy" and not config.CUDASIM:
        import cupy

        ptr = cupy.cuda.get_current_stream().ptr
        return cuda.external_stream(ptr) if ptr else 0     # 0: the legacy default stream
    return 0


_sim_lock = threading.Lock()
_sim_patched = []


def _fix_simulator_shared_arrays():
    """Make the simulator's cuda.shared.array thread-safe (a bug in Numba's simulator).

    FakeCUDAShared.array looks the caller's (file, line) up in a dict and, if absent, creates
    the block's array and stores it: check-then-set without a lock. Two threads of one block
    switching between the two steps get two different "shared" arrays, and the block computes
    garbage (seen here: 1 bias gradient in 150 wrong, more often with the short switch
    interval below). This replacement does the same lookup under a lock; the caller's frame is
    taken one level up, as the original takes stack[-2].
    """
    if _sim_patched:
        return
    from numba.cuda.simulator import kernelapi

    original = kernelapi.FakeCUDAShared.array
    lock = threading.Lock()

    def array(self, shape, dtype, alignment=None):
        if shape == 0 or alignment is not None:     # dynamic shared memory: no lookup
            return original(self, shape, dtype, alignment)
        caller = sys._getframe(1)
        key = (caller.f_code.co_filename, caller.f_lineno)
        with lock:
            res = self._allocations.get(key)
            if res is None:
                from numba.np import numpy_support
                from numba.core import types

                dt = numpy_support.as_dtype(dtype) if isinstance(dtype, types.Type) else dtype
                res = self._allocations[key] = np.empty(shape, dt)
        return res
    kernelapi.FakeCUDAShared.array = array
    _sim_patched.append(original)


def _held(a):
    """A bfloat16 array (a CuPy one, or a Numba device array made from a bfloat16 NumPy array)
    as the uint16 bits the kernels hold; anything else as it is."""
    dtype = getattr(a, "dtype", None)
    return a.view(held(dtype)) if dtype is not None and held(dtype) != dtype else a


def _arg(a):
    """CuPy arrays become Numba views without the stream synchronisation Numba would do by
    default on importing a CUDA array interface (a host stall per argument per launch): our
    launches run on CuPy's current stream (stream_for), so they are ordered after its work."""
    a = _held(a)
    if kind(a) == "cupy":
        return cuda.as_cuda_array(a, sync=False)
    return a


def launch(kernel, grid, threads, stream, *args):
    """kernel[grid, threads, stream](*args). Under the simulator, whose main thread busy-polls
    its block's Python threads, the interpreter's switch interval is cut to 10 us for the
    launch: the same kernel then simulates about 10x faster (0.39 s instead of 4.3 s)."""
    if not config.CUDASIM:
        kernel[grid, threads, stream](*(_arg(a) for a in args))
        return
    with _sim_lock:
        _fix_simulator_shared_arrays()
        old = sys.getswitchinterval()
        sys.setswitchinterval(1e-5)
        try:
            kernel[grid, threads, stream](*(_held(a) for a in args))
        finally:
            sys.setswitchinterval(old)
