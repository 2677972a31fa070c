"""pytest-benchmark suite: every step `python -m bench --full` times on the CPU
(bench/harness.py's plan): conv2d, tiled_conv2d 2x2 and local2d, forward and backward, ours and
the installed peers (torch conv2d and unfold + einsum for conv2d, unfold + einsum for the
others, tf-keras LocallyConnected2D and JAX conv_general_dilated_local for local2d); local2d's
backward into a grad_weight= buffer; and local2d's soft-sharing penalty, ours vs PyTorch eager.

    pytest bench -n0 --benchmark-enable                # full docs/design.md shapes, timed
                                                       # (-n0: pytest-benchmark times nothing
                                                       # under pyproject's xdist workers)
    pytest bench -n0 --benchmark-enable --benchmark-group-by=group
    pytest bench                                       # smoke run (pyproject: --benchmark-disable)

The same harness as `python -m bench`: the launchers, the inputs, the warm-up call (JIT
compilation is never timed), the check (sharenet_fast.dtypes.rel_err against dtypes.tol) and the
FLOP and byte counts (the op table's) are bench/harness.py's; pytest-benchmark's loop times the
harness's launcher. In the smoke run each step runs once, untimed, on the suite shapes with the
batch cut to SMOKE_BATCH and the output grid cut to SMOKE_GRID x SMOKE_GRID (a local layer's
weights grow with the grid: alexnet_conv1's are 422 MB), and is checked against the float64
oracle, so the smoke run is a test. GFLOP/s, GB/s and the weight stream's GB/s (from the
median) land in extra_info (`--benchmark-json` keeps them).
"""
import numpy as np
import pytest

from bench import harness, ops
from bench.cpu import CpuTarget
from bench.shapes import SUITE

SMOKE_BATCH = 1
SMOKE_GRID = 6
TARGET = CpuTarget()
BACKENDS = ("cpu",)
STEPS = harness.plan(TARGET, ops.LAYERS, BACKENDS, peers=True)


def suite_shape(benchmark, name):
    """The suite shape, cut down in the smoke run (benchmarks disabled)."""
    shape = SUITE[name]
    return shape.shrunk(SMOKE_BATCH, SMOKE_GRID) if benchmark.disabled else shape


def _id(step):
    return f"{step.layer}-{step.label}-{step.impl}".replace(" ", "_")


@pytest.mark.parametrize("step", STEPS, ids=_id)
@pytest.mark.parametrize("name", SUITE)
def test_step(benchmark, name, step):
    for module in ops.PEERS[step.impl].modules if step.impl not in BACKENDS else ():
        pytest.importorskip(module)
    shape = suite_shape(benchmark, name)
    case = harness.LayerCase(TARGET, shape, step.layer, [step], BACKENDS)
    pen = case.pens.get(step.dtype)
    if step.pass_ == harness.PENALTY:
        ga0, gb0 = (a.astype(np.float64) for a in pen[2:])
    case.warm()  # JIT compile / oneDNN kernel choice, outside the timing; outputs kept
    tol = harness.check_tol(step, BACKENDS)
    if benchmark.disabled:  # one call, checked (peers too: their numbers mean something only
        # if right); the float64 oracle at full size would take minutes
        err, against = case.error(step, case.references(oracle=True))
        assert err is not None and err < tol, (
            f"{name} {step}: relative error {err} >= {tol:.0e} against {against}")
        if step.pass_ == harness.PENALTY:  # the penalty to 1e-6, and both gradients it added
            from sharenet_fast import reference

            # (a peer in bfloat16 rounds a - b to bfloat16 itself: its own precision)
            exact = step.impl in BACKENDS or step.dtype == harness.DTYPE.name
            assert err <= (1e-6 if exact else tol), (name, step, err)
            a, b, ga, gb = pen
            _, da, db = reference.soft_sharing_penalty(a, b, ops.PENALTY_STRENGTH)
            assert harness.check((ga, gb), (ga0 + da, gb0 + db)) < tol, (name, step)
    benchmark.group = f"{name} {step.layer} {step.label}"
    benchmark(case.calls[step])
    median = benchmark.stats.stats.median if benchmark.stats is not None else None
    weight = case.weight_of(step)
    f = harness.figures(step.layer, step.pass_, case.g, case.grid, weight, median,
                        step.accumulate)
    benchmark.extra_info.update({"shape": shape.describe(), "layer": step.layer,
                                 "pass": step.label, "impl": step.impl,
                                 "gflop": f["flops"] / 1e9, "min_mb": f["bytes"] / 1e6,
                                 "weight_mb": weight.nbytes / 1e6, "dtype": step.dtype,
                                 **{k: f[k] for k in ("gflops", "gbps", "weight_gbps") if k in f}})
