"""One process of tests/test_torch_ddp.py: a few SGD steps of a small model with every layer kind,
under DistributedDataParallel (gloo, loopback) when world > 1, on this rank's half of a fixed
batch, or on the whole batch when world == 1. Writes the final parameters to OUT (rank 0).

    python tests/_ddp_worker.py RANK WORLD PORT OUT
"""
import os
import sys
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.nn.functional as F

import sharenet_fast.torch as sft

STEPS, BATCH = 3, 8


def model():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        sft.Conv2d(2, 3, 3, padding=1, dtype=torch.float64), torch.nn.Tanh(),
        sft.TiledConv2d(3, 4, 3, tiles=(2, 2), stride=2, dtype=torch.float64), torch.nn.Tanh(),
        sft.LocallyConnected2d(4, 3, 2, input_size=(4, 4), dtype=torch.float64),
        torch.nn.Flatten(), torch.nn.Linear(3 * 3 * 3, 2, dtype=torch.float64))


def main(rank, world, port, out):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(BATCH, 2, 9, 9, generator=g, dtype=torch.float64)
    t = torch.randn(BATCH, 2, generator=g, dtype=torch.float64)
    net = model()
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world,
                                timeout=timedelta(seconds=120))
        run = torch.nn.parallel.DistributedDataParallel(net)
        share = BATCH // world
        x, t = x[rank * share:(rank + 1) * share], t[rank * share:(rank + 1) * share]
    else:
        run = net
    opt = torch.optim.SGD(run.parameters(), lr=0.2)
    for _ in range(STEPS):
        opt.zero_grad()
        F.mse_loss(run(x), t).backward()     # a mean: DDP's averaged gradient is the batch's
        opt.step()
    if rank == 0:
        torch.save(net.state_dict(), out)
    if world > 1:
        dist.barrier()                 # neither rank tears down while the other still talks
        dist.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
    # The work is done and saved (the parent checks the parameters, and a failure above exits
    # non-zero). Leave without the interpreter's teardown: one CI run in two saw a rank abort
    # there ("terminate called without an active exception": a C++ thread of gloo's or of one
    # of the two OpenMP runtimes, torch's and Numba's, destroyed while joinable).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
