"""sharenet_fast.torch.parallel.PositionParallel: 2 and 4 processes (gloo, loopback) and a 2 x 2
("dp", "pos") mesh end Adam and SGD steps with the parameters of one process on the whole batch;
a checkpoint saved by 2 ranks loads into 4 ranks and into one process and training goes on as
if uninterrupted; every bad input raises on every rank, with no hang. Each process is bounded
in time (tests/_parallel_worker.py holds the model and the steps). The processes share one
on-disk kernel cache: the first compiles, the others load."""
import os
import sys

import pytest

from bench.cpu import free_port, run_ranks

torch = pytest.importorskip("torch")
import torch.distributed as dist  # noqa: E402

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "_parallel_worker.py")
TIMEOUT_S = 420          # the first run compiles every kernel the model uses, both dtypes
ERRORS = ["more than the layer's", "tiles", "different device mesh",
          "LocallyConnected2d or TiledConv2d", "built for inputs", "output_layouts",
          "meta replicas agree"]


def _launcher(base):
    env = dict(os.environ, SHARENET_FAST_CACHE="1", NUMBA_CACHE_DIR=str(base / "numba"),
               NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1")

    def run(world, mode, name, *options):
        out, port = str(base / f"{name}.pt"), free_port()
        ranks = run_ranks(lambda rank: [sys.executable, WORKER, str(rank), str(world),
                                        str(port), out, mode, *options], world, TIMEOUT_S,
                          env=env)
        for rank, (rc, log) in enumerate(ranks):
            assert rc == 0, f"{name}: rank {rank} of {world}:\n{log[-3000:]}"
        return torch.load(out)

    return run


def _same(got, want, config):
    """float64: 1e-12 of each tensor's largest value, elementwise. float32 with SGD: 1e-6 of it.
    float32 with Adam: its first steps are ~lr * sign(gradient), so a rounding difference in a
    near-zero gradient element moves that element by up to lr: 1e-6 of the tensor's norm, and
    elementwise 1e-3 of its largest value (lr = 1e-2)."""
    assert got.keys() == want.keys()
    for k in want:
        a, b = want[k], got[k]
        scale = a.abs().max().item()
        if config.startswith("torch.float64"):
            torch.testing.assert_close(b, a, rtol=0, atol=1e-12 * scale, msg=k)
        elif config.endswith("sgd"):
            torch.testing.assert_close(b, a, rtol=0, atol=1e-6 * scale, msg=k)
        else:
            assert (b - a).norm() <= 1e-6 * a.norm(), (k, ((b - a).norm() / a.norm()).item())
            torch.testing.assert_close(b, a, rtol=0, atol=1e-3 * scale, msg=k)


def _check(got, want, suffix=""):
    configs = [k for k in want if not k.endswith("+")]
    assert len(configs) == 3
    for config in configs:
        start = __import__("_parallel_worker").model(getattr(torch, config[6:13])).state_dict()
        for k, v in got[config].items():
            assert not torch.equal(v, start[k].to(v.dtype)), f"{config} {k} did not train"
        _same(got[config], want[config + suffix], config)


def test_position_parallel_equals_one_process(tmp_path):
    # one test, the runs in sequence: they share the reference, the checkpoint and the kernel
    # cache (pytest-xdist would spread separate tests over workers that each compile)
    run = _launcher(tmp_path)
    reference = run(1, "pos", "reference")
    ckpt = str(tmp_path / "ckpt2")
    for got in (run(2, "pos", "two", f"save={ckpt}"), run(4, "dp_pos", "dp_pos")):
        _check(got, reference)
        assert got["errors"] == ERRORS
    # loaded, then STEPS more: the reference's 2 * STEPS (model and Adam state resharded)
    _check(run(4, "pos", "four", f"load={ckpt}"), reference, suffix="+")
    _check(run(1, "pos", "one", f"load={ckpt}"), reference, suffix="+")


def test_bands_and_style_arguments():
    from torch.distributed.tensor import Replicate, Shard

    from sharenet_fast.torch.parallel import PositionParallel, bands
    assert bands(7, 4) == [(0, 2), (2, 4), (4, 6), (6, 7)]
    assert bands(5, 4) == [(0, 2), (2, 4), (4, 5), (5, 5)]           # torch.chunk's split
    assert [len(c) for c in torch.arange(55).chunk(4)] == [b - a for a, b in bands(55, 4)]
    assert PositionParallel().output_layouts == Shard(2)
    assert PositionParallel(output_layouts=[Replicate()]).output_layouts == Replicate()
    with pytest.raises(ValueError, match="output_layouts"):
        PositionParallel(output_layouts=Shard(1))
    with pytest.raises(TypeError, match="use_local_output"):
        PositionParallel(use_local_output=1)
    with pytest.raises(TypeError, match="mesh_dim"):
        PositionParallel(mesh_dim=0)


def test_benchmark_quick_run():
    """bench.position_parallel runs (a small layer, one step per run) and its memory split
    holds: each rank's weight + gradient + Adam state <= 1/W + 5% of one process's."""
    from bench import position_parallel as pp
    rep = pp.report(quick=True, batch=2, steps=1)
    assert [(r["world"], len(r["ranks"])) for r in rep["runs"]] == [(1, 1), (1, 1), (2, 2),
                                                                     (4, 4)]
    for run in rep["runs"]:
        assert run["state_met"] and run["step_ms"] > 0, run
        assert sum(r["rows"] for r in run["ranks"]) == rep["runs"][0]["ranks"][0]["rows"]
    assert "| 4 x 1 |" in pp.markdown(rep)
