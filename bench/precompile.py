"""Compile the CPU kernels a benchmark run calls, on every core at once, into Numba's on-disk
cache, before anything is timed.

Numba compiles one function at a time in one process: a cold quick run spent about 60 of its
97 s compiling (2-core Zen 5 VM), one core busy and the other idle. Split over one worker
process per core, each calling our launchers once for its share of the (shape, layer) pairs
with SHARENET_FAST_CACHE=1, the compile takes about half the wall time, and the run itself
then loads each kernel from the cache (bench/report/build.py runs it with the cache on unless
SHARENET_FAST_CACHE is set). Compilation is never inside a timing either way: every step is
called once before it is timed.

    python -m bench.precompile SPEC_JSON          one worker (what run() starts)
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from bench.cpu import REPO


def run(shapes, layers, mode, workers=None, dtypes=("float32", "bfloat16")):
    """Compile our CPU kernels for `shapes` ({name: ConvShape}) x `layers` in `workers`
    processes (default: one per core). Returns (wall seconds, [errors]): a worker that fails
    only costs the time it took, the run compiles what is missing itself."""
    workers = max(1, min(workers or os.cpu_count() or 1, len(shapes) * len(layers)))
    items = [(n, list(s), layer) for n, s in shapes.items() for layer in layers]
    env = dict(os.environ, SHARENET_FAST_CACHE="1")
    t0 = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-m", "bench.precompile",
                               json.dumps(dict(items=items[w::workers], mode=mode,
                                               dtypes=list(dtypes)))],
                              env=env, cwd=REPO, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
             for w in range(workers)]
    errors = [err.strip().splitlines()[-1] for p in procs
              for _, err in [p.communicate()] if p.returncode != 0 and err.strip()]
    return time.perf_counter() - t0, errors


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    spec = json.loads(argv[0])
    from bench import harness
    from bench.cpu import CpuTarget
    from bench.shapes import ConvShape

    target = CpuTarget()
    for _, dims, layer in spec["items"]:
        steps = harness.plan(target, [layer], ("cpu",), peers=False,
                             full=spec["mode"] == "full",
                             dtypes=tuple(spec.get("dtypes", ("float32", harness.REDUCED))))
        harness.LayerCase(target, ConvShape(*dims), layer, steps, ("cpu",)).warm()
    return 0


if __name__ == "__main__":
    sys.exit(main())
