"""The instruction set the CPU code of a benchmark or test run is compiled for, as environment
variables: the one place `python -m bench --isa`, the tests and CI take them from.

    python -m bench.isa avx2 CMD [ARG...]     run CMD with the AVX2 environment (.ci/run does)
    python -m bench.isa avx2                  print it, one NAME=VALUE a line

native: everything compiles for the host (AVX-512 where it has it); an AVX2 setting inherited
from the environment (a machine with OPENBLAS_CORETYPE=Haswell set for everyone held NumPy's
sgemm, the FLOP roof, to half of a Zen 5 core's rate) is removed.
avx2: our Numba kernels for Haswell, AVX2 + FMA only (NUMBA_CPU_NAME=haswell with an empty
NUMBA_CPU_FEATURES, so the features are the name's own: with NUMBA_CPU_NAME alone Numba keeps
the host's features, AVX-512 included, and a plain float32 loop then uses zmm registers), and
the peers and limits held to AVX2 where their libraries allow: oneDNN (PyTorch's conv2d and
TensorFlow's), MKL (PyTorch's matmuls), ATen's own vectorised kernels, OpenBLAS (NumPy's sgemm:
the FLOP roof) and XLA (JAX). These must be set before the libraries load: a run for another
ISA is a child process (bench/report.py).
"""
from __future__ import annotations

import os
import sys

NATIVE, AVX2 = "native", "avx2"
VARS = {
    NATIVE: {},
    AVX2: {
        "NUMBA_CPU_NAME": "haswell",
        "NUMBA_CPU_FEATURES": "",
        "ONEDNN_MAX_CPU_ISA": "AVX2",
        "OPENBLAS_CORETYPE": "Haswell",
        "MKL_ENABLE_INSTRUCTIONS": "AVX2",
        "ATEN_CPU_CAPABILITY": "avx2",
        "XLA_FLAGS": "--xla_cpu_max_isa=AVX2",
    },
}
ISAS = tuple(VARS)
_APPENDED = ("XLA_FLAGS",)          # a list of flags: ours goes after the caller's own


def _held(base):
    """The AVX2 settings `base` holds (the appended XLA flag is left to the caller's list)."""
    return [name for name, value in VARS[AVX2].items()
            if name not in _APPENDED and base.get(name) == value]


def env(isa, base=None):
    """A copy of `base` (default os.environ) with the variables of `isa` set."""
    out = dict(os.environ if base is None else base)
    if isa == NATIVE:
        for name in _held(out):
            del out[name]
    for name, value in VARS[isa].items():
        old = out.get(name, "")
        if name in _APPENDED and old:
            value = old if value in old.split() else f"{old} {value}"
        out[name] = value
    return out


def active(isa, base=None):
    """Whether `base` (default os.environ) already has every variable of `isa`."""
    base = os.environ if base is None else base
    if isa == NATIVE and _held(base):
        return False
    return all(base.get(name) == value or (name in _APPENDED and value in
                                            base.get(name, "").split())
               for name, value in VARS[isa].items())


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in VARS:
        print(f"usage: python -m bench.isa {{{','.join(ISAS)}}} [CMD ARG...]", file=sys.stderr)
        return 2
    isa, cmd = argv[0], argv[1:]
    if not cmd:
        for name, value in VARS[isa].items():
            print(f"{name}={value}")
        for name in (_held(os.environ) if isa == NATIVE else ()):
            print(f"{name}=  (unset)")
        return 0
    os.execvpe(cmd[0], cmd, env(isa))


if __name__ == "__main__":
    sys.exit(main())
