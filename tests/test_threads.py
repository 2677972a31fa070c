"""The API called from several Python threads at once: no crash, every result correct."""
import threading

import numpy as np
import pytest

import sharenet_fast as sf
from _support import BACKENDS, SHAPES_BY_ID, assert_close, make_inputs, reference_all

THREADS = 4
CALLS_PER_THREAD = 4
THREAD_SHAPES = ["pad1_3x3", "nonsquare_all", "K7_Q5_tails", "wgrad_chunks"]


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

    results, errors = {}, []
    barrier = threading.Barrier(THREADS)

    def worker(t):
        try:
            barrier.wait(timeout=60)
            for n, (owner, case, dtype, d, _) in enumerate(jobs):
                if owner != t:
                    continue
                y = sf.conv2d(d.x, d.w, d.b, backend="cpu", **case.kw)
                acc = np.ones(case.w_shape, dtype)
                g = sf.conv2d_backward(d.dy, d.x, d.w, backend="cpu", grad_weight=acc,
                                       deterministic=bool(n % 2), **case.kw)
                results[n] = (y, g, acc)
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
    for n, (_, case, dtype, d, ref) in enumerate(jobs):
        y, g, acc = results[n]
        assert_close(y, ref["forward"], dtype, f"job {n} forward")
        assert_close(g.input, ref["input_grad"], dtype, f"job {n} input grad")
        assert g.weight is acc
        assert_close(acc, 1.0 + ref["weight_grad"], dtype, f"job {n} weight grad")
        assert_close(g.bias, ref["bias_grad"], dtype, f"job {n} bias grad")
