"""pytest configuration for sharenet_fast.

- Works with the package pip-installed or straight from a checkout: the repository root is put on
  sys.path only if `import sharenet_fast` fails.
- tests/ is put on sys.path so test modules can `import _support` under any import mode.
- Without a GPU the Numba CUDA kernels run on Numba's simulator (with _cudasim.py's block
  scheduler, which runs one thread of a block at a time): the repository's root
  conftest.py sets NUMBA_ENABLE_CUDASIM=1 (for tests/ and bench/ alike).
- The boundscheck fuzz test (test_fuzz.py) runs a subprocess that compiles every kernel again
  with NUMBA_BOUNDSCHECK=1. Compilation is single-threaded, so in a run without workers (-n0)
  that selects the test, the subprocess is started right after collection and overlaps the
  rest of the run; under pytest-xdist (the default: -n auto) the worker that runs the test
  starts it, the other workers go on. Whatever happens, it is stopped when the session ends.
"""
import os
import sys

import pytest

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(TESTS_DIR)

try:
    import sharenet_fast  # noqa: F401
except ImportError:
    sys.path.insert(0, REPO_ROOT)
    import sharenet_fast  # noqa: F401

if TESTS_DIR not in sys.path:
    sys.path.insert(0, TESTS_DIR)

import _support  # noqa: E402
import _cudasim  # noqa: E402

if sharenet_fast.config.CUDASIM:
    _cudasim.install()          # the simulator's blocks one thread at a time (no GIL fight)

collect_ignore = ["_fuzz_boundscheck.py", "_support.py", "data/make_golden.py"]

_FUZZ_KEY = pytest.StashKey()


@pytest.hookimpl(trylast=True)  # after -k / -m deselection: start only if the test will run
def pytest_collection_modifyitems(session, config, items):
    runnable = []
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        table = item.get_closest_marker("sim_kernel_table")
        limit = (table.kwargs.get("max_macs") if table else None) or _support.SIM_MAX_MACS
        why = _support.sim_too_slow(params, limit)
        if why:
            item.add_marker(pytest.mark.skip(reason=why))
            continue
        mark = next((m for m in _support.SIM_MARKS if item.get_closest_marker(m)), None)
        runnable.append((item, (getattr(item, "originalname", item.name), mark, params)))
    repeats = _support.sim_repeats([test for _, test in runnable])
    for i, why in repeats.items():
        runnable[i][0].add_marker(pytest.mark.skip(reason=why))
    if config.option.collectonly or hasattr(config, "workerinput"):
        return
    if any(item.get_closest_marker("fuzz_subprocess") for item in items):
        config.stash[_FUZZ_KEY] = _support.FuzzRun()


def pytest_unconfigure(config):
    run = config.stash.get(_FUZZ_KEY, None)
    if run is not None:
        run.stop()


@pytest.fixture(scope="session")
def fuzz_run(request):
    """The boundscheck fuzz subprocess: the one started after collection, or a new one."""
    run = request.config.stash.get(_FUZZ_KEY, None)
    if run is None:
        run = _support.FuzzRun()
        request.config.stash[_FUZZ_KEY] = run
    return run


@pytest.fixture
def rng(request):
    """A generator seeded from the test's node id: reproducible, different per test."""
    import zlib

    import numpy as np

    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))
