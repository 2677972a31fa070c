"""The instruction set the CPU code of a benchmark run is compiled for, as environment variables.

    python -m bench.isa avx2 CMD [ARG...]     run CMD with the AVX2 environment
    python -m bench.isa avx2                  print it, one NAME=VALUE a line

native: everything compiles for the host (AVX-512 where it has it); an AVX2 setting inherited
from the environment (a machine with OPENBLAS_CORETYPE=Haswell set for everyone held NumPy's
sgemm, the FLOP roof, to half of a Zen 5 core's rate) is removed.
avx2: the variables of .ci/avx2.env, which CI owns (its AVX2 test step sources the file; what
each variable holds back is said there). They must be set before the libraries load: a run for
another ISA is a child process (bench/report/build.py).
"""
from __future__ import annotations

import os
import sys

NATIVE, AVX2 = "native", "avx2"
AVX2_ENV = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".ci",
                        "avx2.env")


def _read_env(path):
    """NAME=VALUE lines of a shell environment file (comments and blank lines skipped)."""
    with open(path) as f:
        lines = [line.strip() for line in f]
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


VARS = {NATIVE: {}, AVX2: _read_env(AVX2_ENV)}
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
