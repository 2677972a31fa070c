"""DistributedDataParallel over sharenet_fast.torch modules: two processes (gloo, loopback) on
halves of a batch end a few SGD steps with the parameters of one process on the whole batch.
Each process is bounded in time; skips without torch or torch.distributed's gloo."""
import os
import sys

import pytest

from bench.cpu import free_port, run_ranks

torch = pytest.importorskip("torch")
import torch.distributed as dist  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "_ddp_worker.py")
TIMEOUT_S = 300


def _run(world, out):
    port = free_port()
    for rc, log in run_ranks(lambda rank: [sys.executable, WORKER, str(rank), str(world),
                                           str(port), out], world, TIMEOUT_S):
        assert rc == 0, log[-3000:]


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                    reason="torch.distributed with gloo is not available")
def test_ddp_two_processes_equal_one_on_the_whole_batch(tmp_path):
    single, ddp = str(tmp_path / "single.pt"), str(tmp_path / "ddp.pt")
    _run(1, single)
    _run(2, ddp)
    a, b = torch.load(single), torch.load(ddp)
    assert a.keys() == b.keys() and len(a) == 8          # 4 layers x (weight, bias)
    start = __import__("_ddp_worker").model().state_dict()
    for k in a:
        assert not torch.equal(a[k], start[k]), f"{k} did not train"
        torch.testing.assert_close(b[k], a[k], rtol=1e-10, atol=1e-12)
