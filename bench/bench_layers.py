"""pytest-benchmark suite: shared, tiled 2x2 and locally-connected layers, ours vs the PyTorch
peers (conv2d for shared, unfold + einsum for tiled and local), forward and backward; and the
soft-sharing penalty on each layer's local banks, ours vs PyTorch eager.

    pytest bench --benchmark-enable                    # full DESIGN.md shapes, timed
    pytest bench --benchmark-enable --benchmark-group-by=group
    pytest bench                                       # smoke run (pyproject: --benchmark-disable)

In the smoke run each function runs once, untimed, on the suite shapes with the batch cut to
SMOKE_BATCH and the output grid cut to SMOKE_GRID x SMOKE_GRID (a local layer's weights grow
with the grid: alexnet_conv1's are 422 MB); the result is still checked against the float64
oracle, so the smoke run is a test. Every op is called once before benchmark() so JIT
compilation is never timed. GFLOP/s, GB/s and the weight stream's GB/s (from the median) land
in extra_info (`--benchmark-json` keeps them).
"""
import pytest

from bench import ops
from bench.shapes import SUITE, geometry, make_inputs, rel_error

SMOKE_BATCH = 1
SMOKE_GRID = 6
TOL = 1e-4  # relative error vs the float64 reference, float32 inputs


def suite_shape(benchmark, name):
    """The suite shape, cut down in the smoke run (benchmarks disabled)."""
    shape = SUITE[name]
    return shape.shrunk(SMOKE_BATCH, SMOKE_GRID) if benchmark.disabled else shape


def record(benchmark, shape, layer, pass_, weight):
    """FLOP and byte counts into extra_info, and GFLOP/s, GB/s when the run was timed."""
    g = geometry(shape)
    flops = g.flops(pass_)
    nbytes = g.min_bytes(pass_, sharing=layer, tile=ops.TILE)
    wbytes = weight.nbytes * (1 if pass_ == "forward" else 2)
    benchmark.extra_info.update({"shape": shape.describe(), "layer": layer, "pass": pass_,
                                 "gflop": flops / 1e9, "min_mb": nbytes / 1e6,
                                 "weight_mb": weight.nbytes / 1e6})
    if benchmark.stats is not None:  # None when --benchmark-disable ran the function once
        t = benchmark.stats.stats.median
        benchmark.extra_info["gflops"] = flops / t / 1e9
        benchmark.extra_info["gbps"] = nbytes / t / 1e9
        benchmark.extra_info["weight_gbps"] = wbytes / t / 1e9


def inputs(shape, layer):
    x, weight, bias, grad_out = make_inputs(shape)
    weight, bias = ops.layer_params(layer, weight, bias, geometry(shape))
    return x, weight, bias, grad_out


def check(outs, refs, what):
    for out, ref in zip(outs, refs):
        err = rel_error(out, ref)
        assert err < TOL, f"{what}: relative error {err:.2e} >= {TOL:.0e}"


@pytest.mark.parametrize("layer", ops.LAYERS)
@pytest.mark.parametrize("name", SUITE)
def test_forward_ours(benchmark, name, layer):
    shape = suite_shape(benchmark, name)
    x, weight, bias, grad_out = inputs(shape, layer)
    run = ops.ours_forward(shape, layer, x, weight, bias)
    y = run()  # JIT compile + check, outside the timing
    if benchmark.disabled:  # the float64 oracle at full size would take minutes
        check((y,), ops.reference(shape, layer, x, weight, bias, grad_out)[:1], f"{name} fwd")
    benchmark.group = f"{name} {layer} forward"
    benchmark(run)
    record(benchmark, shape, layer, "forward", weight)


@pytest.mark.parametrize("layer", ops.LAYERS)
@pytest.mark.parametrize("name", SUITE)
def test_backward_ours(benchmark, name, layer):
    shape = suite_shape(benchmark, name)
    x, weight, bias, grad_out = inputs(shape, layer)
    run = ops.ours_backward(shape, layer, x, weight, grad_out)
    grads = run()
    if benchmark.disabled:
        check(grads, ops.reference(shape, layer, x, weight, bias, grad_out)[1:], f"{name} bwd")
    benchmark.group = f"{name} {layer} backward"
    benchmark(run)
    record(benchmark, shape, layer, "backward", weight)


@pytest.mark.parametrize("layer", ops.LAYERS)
@pytest.mark.parametrize("name", SUITE)
def test_forward_torch(benchmark, name, layer):
    pytest.importorskip("torch")
    shape = suite_shape(benchmark, name)
    x, weight, bias, grad_out = inputs(shape, layer)
    run = ops.torch_forward(shape, layer, x, weight, bias)
    y = run()  # warm-up: oneDNN picks and caches its kernel on the first call
    if benchmark.disabled:  # the peer is checked too: its numbers mean something only if right
        check((y.numpy(),), ops.reference(shape, layer, x, weight, bias, grad_out)[:1],
              f"{name} torch fwd")
    benchmark.group = f"{name} {layer} forward"
    benchmark(run)
    record(benchmark, shape, layer, "forward", weight)


@pytest.mark.parametrize("layer", ops.LAYERS)
@pytest.mark.parametrize("name", SUITE)
def test_backward_torch(benchmark, name, layer):
    pytest.importorskip("torch")
    shape = suite_shape(benchmark, name)
    x, weight, bias, grad_out = inputs(shape, layer)
    run = ops.torch_backward(shape, layer, x, weight, grad_out, bias)
    grads = run()
    if benchmark.disabled:
        check([t.numpy() for t in grads],
              ops.reference(shape, layer, x, weight, bias, grad_out)[1:], f"{name} torch bwd")
    benchmark.group = f"{name} {layer} backward"
    benchmark(run)
    record(benchmark, shape, layer, "backward", weight)


@pytest.mark.parametrize("impl", ["ours", "torch"])
@pytest.mark.parametrize("name", SUITE)
def test_soft_sharing_penalty(benchmark, name, impl):
    """The local banks of each suite layer pulled toward their mean bank, both gradients: six
    streams of the weights' size (GB/s in extra_info), ours against PyTorch eager."""
    if impl == "torch":
        pytest.importorskip("torch")
    shape = suite_shape(benchmark, name)
    _, weight, _, _ = inputs(shape, "local")
    a, b, ga, gb = ops.penalty_inputs(weight)
    ga0, gb0 = ga.copy(), gb.copy()
    run = (ops.ours_penalty if impl == "ours" else ops.torch_penalty)(a, b, ga, gb)
    p = float(run())
    if benchmark.disabled:  # one call: the penalty and both accumulated gradients, checked
        from sharenet_fast import reference

        want, da, db = reference.soft_sharing_penalty(a, b, ops.PENALTY_STRENGTH)
        assert abs(p - want) <= 1e-6 * want, (p, want)
        check((ga, gb), (ga0 + da, gb0 + db), f"{name} {impl} penalty gradients")
    benchmark.group = f"{name} soft_sharing_penalty"
    benchmark(run)
    benchmark.extra_info.update({"shape": shape.describe(), "elements": int(a.size),
                                 "bytes": 6 * a.nbytes})
    if benchmark.stats is not None:
        benchmark.extra_info["gbps"] = 6 * a.nbytes / benchmark.stats.stats.median / 1e9
