"""pytest-benchmark suite: shared conv2d, ours vs PyTorch, forward and backward.

    pytest bench --benchmark-enable                    # full DESIGN.md shapes, timed
    pytest bench --benchmark-enable --benchmark-group-by=group
    pytest bench                                       # smoke run (pyproject: --benchmark-disable)

In the smoke run each function runs once, untimed, on the suite shapes with the batch cut to
SMOKE_BATCH; the result is still checked against a float64 reference, so the smoke run is a test.
Every op is called once before benchmark() so JIT compilation is never timed. GFLOP/s and GB/s
(from the median) land in extra_info (`--benchmark-json` keeps them).
"""
import pytest

from bench import ops
from bench.shapes import SUITE, geometry, make_inputs, rel_error

SMOKE_BATCH = 1
TOL = 1e-4  # relative error vs the float64 reference, float32 inputs


def suite_shape(benchmark, name):
    """The suite shape, with the batch cut to SMOKE_BATCH when benchmarks are disabled."""
    shape = SUITE[name]
    return shape.with_batch(min(shape.N, SMOKE_BATCH)) if benchmark.disabled else shape


def record(benchmark, shape, pass_):
    """FLOP and byte counts into extra_info, and GFLOP/s, GB/s when the run was timed."""
    g = geometry(shape)
    flops, nbytes = g.flops(pass_), g.min_bytes(pass_)
    benchmark.extra_info.update({"shape": shape.describe(), "pass": pass_, "gflop": flops / 1e9,
                                 "min_mb": nbytes / 1e6})
    if benchmark.stats is not None:  # None when --benchmark-disable ran the function once
        t = benchmark.stats.stats.median
        benchmark.extra_info["gflops"] = flops / t / 1e9
        benchmark.extra_info["gbps"] = nbytes / t / 1e9


def check(out, ref, what):
    err = rel_error(out, ref)
    assert err < TOL, f"{what}: relative error {err:.2e} >= {TOL:.0e}"


@pytest.mark.parametrize("name", SUITE)
def test_forward_ours(benchmark, name):
    shape = suite_shape(benchmark, name)
    x, weight, bias, grad_out = make_inputs(shape)
    run = ops.ours_forward(shape, x, weight, bias)
    y = run()  # JIT compile + check, outside the timing
    check(y, ops.reference(shape, x, weight, bias, grad_out)[0], f"{name} forward")
    benchmark.group = f"{name} forward"
    benchmark(run)
    record(benchmark, shape, "forward")


@pytest.mark.parametrize("name", SUITE)
def test_backward_ours(benchmark, name):
    shape = suite_shape(benchmark, name)
    x, weight, bias, grad_out = make_inputs(shape)
    run = ops.ours_backward(shape, x, weight, grad_out)
    grads = run()
    _, dx, dw, db = ops.reference(shape, x, weight, bias, grad_out)
    for what, out, ref in zip(("input", "weight", "bias"), grads, (dx, dw, db)):
        check(out, ref, f"{name} backward {what}")
    benchmark.group = f"{name} backward"
    benchmark(run)
    record(benchmark, shape, "backward")


@pytest.mark.parametrize("name", SUITE)
def test_forward_torch(benchmark, name):
    pytest.importorskip("torch")
    shape = suite_shape(benchmark, name)
    x, weight, bias, _ = make_inputs(shape)
    run = ops.torch_forward(shape, x, weight, bias)
    run()  # warm-up: oneDNN picks and caches its kernel on the first call
    benchmark.group = f"{name} forward"
    benchmark(run)
    record(benchmark, shape, "forward")


@pytest.mark.parametrize("name", SUITE)
def test_backward_torch(benchmark, name):
    pytest.importorskip("torch")
    shape = suite_shape(benchmark, name)
    x, weight, _, grad_out = make_inputs(shape)
    run = ops.torch_backward(shape, x, weight, grad_out)
    run()
    benchmark.group = f"{name} backward"
    benchmark(run)
    record(benchmark, shape, "backward")
