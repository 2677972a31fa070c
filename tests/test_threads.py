"""The API called from several Python threads at once: no crash, every result correct."""
import threading

import numpy as np
import pytest

import sharenet_fast as sf
from _support import BACKENDS, SHAPES_BY_ID, assert_close, make_inputs, reference_all

THREADS = 4
CALLS_PER_THREAD = 4
THREAD_SHAPES = ["pad1_3x3", "nonsquare_all", "K7_Q5_tails", "wgrad_chunks"]


def run_in_threads(jobs, call):
    """Start THREADS threads together; thread t runs call(job) for every job it owns (job[0] ==
    t). Returns {job index: result}; fails the test if a thread raised or hung."""
    results, errors = {}, []
    barrier = threading.Barrier(THREADS)

    def worker(t):
        try:
            barrier.wait(timeout=60)
            for n, job in enumerate(jobs):
                if job[0] == t:
                    results[n] = call(n, job)
        except BaseException as exc:  # reported below with the thread number
            errors.append((t, repr(exc)))

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(THREADS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=300)
    assert not any(th.is_alive() for th in threads), "a thread hung"
    assert not errors, errors
    assert len(results) == len(jobs)
    return results


@pytest.mark.skipif("cpu" not in BACKENDS, reason="cpu backend not available")
def test_cpu_backend_from_four_python_threads():
    jobs = []  # (thread, call): inputs and expected results prepared up front
    for t in range(THREADS):
        for i in range(CALLS_PER_THREAD):
            case = SHAPES_BY_ID[THREAD_SHAPES[(t + i) % len(THREAD_SHAPES)]]
            dtype = (np.float32, np.float64)[(t + i) % 2]
            d = make_inputs(case, dtype, seed=100 + t * CALLS_PER_THREAD + i)
            jobs.append((t, case, dtype, d, reference_all(d, case.kw)))
    # warm the kernels so the threads overlap in the kernels, not in the compiler
    for case, dtype, d in {(j[1].id, j[2]): j[1:4] for j in jobs}.values():
        sf.conv2d(d.x, d.w, d.b, backend="cpu", **case.kw)
        sf.conv2d_backward(d.dy, d.x, d.w, backend="cpu", **case.kw)

    def call(n, job):
        _, case, dtype, d, _ = job
        y = sf.conv2d(d.x, d.w, d.b, backend="cpu", **case.kw)
        acc = np.ones(case.w_shape, dtype)
        g = sf.conv2d_backward(d.dy, d.x, d.w, backend="cpu", grad_weight=acc,
                               deterministic=bool(n % 2), **case.kw)
        return y, g, acc

    results = run_in_threads(jobs, call)
    for n, (_, case, dtype, d, ref) in enumerate(jobs):
        y, g, acc = results[n]
        assert_close(y, ref["forward"], dtype, f"job {n} forward")
        assert_close(g.input, ref["input"], dtype, f"job {n} input grad")
        assert g.weight is acc
        assert_close(acc, 1.0 + ref["weight"], dtype, f"job {n} weight grad")
        assert_close(g.bias, ref["bias"], dtype, f"job {n} bias grad")


@pytest.mark.skipif("cpu" not in BACKENDS, reason="cpu backend not available")
def test_untied_layers_from_four_python_threads():
    """local2d and tiled_conv2d too: their scratch buffers (cpu/_workspace.py) are shared
    between calls, so this checks that concurrent callers never see each other's."""
    from _support import (LAYER_NAMES, LAYERS, PASSES, UNTIED_BY_ID, layer_reference,
                          make_layer_inputs)

    jobs = []
    for t in range(THREADS):
        for i in range(CALLS_PER_THREAD):
            layer = LAYER_NAMES[(t + i) % 2]
            uc = UNTIED_BY_ID[THREAD_SHAPES[(t + 2 * i) % len(THREAD_SHAPES)]]
            dtype = (np.float32, np.float64)[t % 2]
            d = make_layer_inputs(layer, uc, dtype, seed=200 + t * CALLS_PER_THREAD + i)
            ref = {p: layer_reference(layer, p, d, uc.case.kw) for p in PASSES}
            jobs.append((t, layer, uc, dtype, d, ref))
    for _, layer, uc, _, d, _ in jobs:  # compile outside the threads
        LAYERS[layer].forward(d.x, d.w, d.b, backend="cpu", **uc.case.kw)
        LAYERS[layer].backward(d.dy, d.x, d.w, backend="cpu", **uc.case.kw)

    def call(n, job):
        _, layer, uc, _, d, _ = job
        L = LAYERS[layer]
        return (L.forward(d.x, d.w, d.b, backend="cpu", **uc.case.kw),
                *L.backward(d.dy, d.x, d.w, backend="cpu", **uc.case.kw))

    results = run_in_threads(jobs, call)
    for n, (_, layer, uc, dtype, d, ref) in enumerate(jobs):
        for p, out in zip(PASSES, results[n]):
            assert_close(out, ref[p], dtype, f"job {n} {layer} {uc.id} {p}")


# Run in a fresh interpreter: the threading layer is chosen once per process, at the first
# parallel kernel. Four threads mix every op; under workqueue (the layer Numba falls back to
# where no OpenMP/TBB exists) two threads inside parallel kernels at once abort the process
# ("Concurrent access has been detected", exit 134) unless every launch is serialised.
_WORKQUEUE_SCRIPT = r"""
import sys, threading
import numpy as np
sys.path.insert(0, sys.argv[1])
import sharenet_fast as sf
import sharenet_fast.reference
from _support import LAYERS, SHAPES_BY_ID, assert_close, make_inputs, random_array

case = SHAPES_BY_ID["pad1_3x3"]
rng = np.random.default_rng(0)
x, dy = (random_array(rng, s, np.float32) for s in (case.x_shape, case.y_shape))
g = case.geometry
weights = {n: random_array(rng, L.spec.weight_shape(g, (2, 2) if n == "tiled_conv2d" else
                                                    (g.P, g.Q)), np.float32)
           for n, L in LAYERS.items()}
a, b = (random_array(rng, (100000,), np.float32) for _ in range(2))

def jobs():
    for name, L in LAYERS.items():
        w = weights[name]
        yield name, (lambda L=L, w=w: L.forward(x, w, backend="cpu", **case.kw)), \
            (lambda L=L, w=w: L.ref_forward(x, w, None, **case.kw))
        yield name + " backward", (lambda L=L, w=w: L.backward(dy, x, w, backend="cpu",
                                                               **case.kw).weight), \
            (lambda L=L, w=w: L.ref_weight(dy, x, w.shape, **case.kw))
    yield "penalty", (lambda: sf.soft_sharing_penalty(a, b, 0.5, backend="cpu")), \
        (lambda: 0.25 * np.sum((a.astype(np.float64) - b) ** 2))
    nw = weights["local2d"]
    for metric in ("l2", "cosine"):
        yield "neighbour " + metric, (lambda m=metric: sf.neighbour_penalty(
            nw, 0.5, metric=m, neighbourhood=8, backend="cpu")), \
            (lambda m=metric: sf.reference.neighbour_penalty(nw, 0.5, m, 8, False)[0])

todo = list(jobs())
for _, run, _ in todo:                     # compile first: the threads then meet in kernels
    run()
import numba
layer = numba.threading_layer()
errors = []
barrier = threading.Barrier(4)

def worker(t):
    try:
        barrier.wait(timeout=60)
        for i in range(25):
            what, run, ref = todo[(t + i) % len(todo)]
            assert_close(run(), ref(), np.float32, what)
    except BaseException as exc:
        errors.append(repr(exc))

threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
for th in threads:
    th.start()
for th in threads:
    th.join(timeout=300)
print("layer", layer, "errors", errors)
sys.exit(1 if errors or any(th.is_alive() for th in threads) else 0)
"""


@pytest.mark.skipif("cpu" not in BACKENDS, reason="cpu backend not available")
def test_every_parallel_kernel_is_safe_under_the_workqueue_layer(tmp_path):
    import os
    import subprocess
    import sys

    from _support import TESTS_DIR

    env = dict(os.environ, NUMBA_THREADING_LAYER="workqueue", NUMBA_NUM_THREADS="2")
    script = tmp_path / "workqueue_threads.py"
    script.write_text(_WORKQUEUE_SCRIPT)
    proc = subprocess.run([sys.executable, str(script), TESTS_DIR], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"exit {proc.returncode}:\n{out[-3000:]}"
    assert "layer workqueue errors []" in out, out[-3000:]


@pytest.mark.skipif("cpu" not in BACKENDS, reason="cpu backend not available")
def test_bfloat16_from_four_python_threads():
    """bfloat16 calls (the local layer's 16-bit kernels, the shared conv through widened copies,
    the penalty) from four threads at once: each result equals the same call made alone, bit for
    bit (every CPU kernel sums in a fixed order)."""
    import ml_dtypes

    bf16 = ml_dtypes.bfloat16
    case = SHAPES_BY_ID["pad1_3x3"]
    g = case.geometry
    jobs, rng = [], np.random.default_rng(7)
    for t in range(THREADS):
        for i in range(CALLS_PER_THREAD):
            x = rng.standard_normal(case.x_shape).astype(bf16)
            wl = rng.standard_normal((g.P, g.Q) + case.w_shape).astype(bf16)
            wc = rng.standard_normal(case.w_shape).astype(bf16)
            dy = rng.standard_normal(case.y_shape).astype(bf16)
            jobs.append((t, x, wl, wc, dy))

    def run(x, wl, wc, dy):
        yl = sf.local2d(x, wl, **case.kw)
        gl = sf.local2d_backward(dy, x, wl, **case.kw)
        yc = sf.conv2d(x, wc, **case.kw)
        gw = np.zeros(wl.shape, np.float32)
        p = sf.soft_sharing_penalty(wl, wl[::-1].copy(), 0.5, grad_a=gw)
        return (yl, *gl, yc, gw, np.float64(p))

    alone = [run(*job[1:]) for job in jobs]
    got = run_in_threads(jobs, lambda n, job: run(*job[1:]))
    for n, want in enumerate(alone):
        for a, b in zip(got[n], want):
            np.testing.assert_array_equal(np.atleast_1d(a).view(np.uint8),
                                          np.atleast_1d(b).view(np.uint8))
