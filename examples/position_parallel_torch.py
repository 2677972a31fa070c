"""A locally connected model too large for one process's memory cap, trained across CPU
processes with sharenet_fast.torch.parallel.PositionParallel (gloo on loopback).

    python examples/position_parallel_torch.py [--world 4] [--size 96] [--cap-mb 256]
                                               [--steps 20]

The model: two untied 3x3 layers, 4 -> 16 -> 16 channels, on size x size images ("same"
padding: a bank per pixel), learning to reproduce a fixed 3x3 blur-and-mix of its input. At
size 96 it holds 26.8M parameters: weight, gradient and Adam's two moments come to 410 MiB,
past a 256 MiB cap for one process. Split by output rows over 4 processes each holds a quarter
(102 MiB), built on the meta device so no process ever allocates the whole model. Each rank
prints what it holds and its peak resident set (the interpreter, torch and Numba included);
rank 0 the loss. (MB below: MiB.)
"""
import argparse
import os
import socket
import sys
from datetime import timedelta

os.environ.setdefault("SHARENET_FAST_CACHE", "1")     # the ranks load what the parent compiled

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import sharenet_fast.torch as sft  # noqa: E402

C_IN, C_MID, C_OUT = 4, 16, 16


def model(size, device=None):
    return nn.Sequential(
        sft.LocallyConnected2d(C_IN, C_MID, 3, (size, size), padding=1, device=device),
        nn.Tanh(),
        sft.LocallyConnected2d(C_MID, C_OUT, 3, (size, size), padding=1, device=device))


def state_bytes(size):
    """Weight + gradient + Adam's exp_avg and exp_avg_sq of the whole model, in bytes."""
    n = sum(p.numel() for p in model(size, device="meta").parameters())
    return 4 * n * 4


def batch(size, n, step):
    g = torch.Generator().manual_seed(step)
    x = torch.randn(n, C_IN, size, size, generator=g)
    mix = torch.Generator().manual_seed(12345)
    target_filter = torch.randn(C_OUT, C_IN, 3, 3, generator=mix) / 6   # what to learn
    return x, F.conv2d(x, target_filter, padding=1)


def rank_main(rank, world, port, size, steps, cap, out):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate
    from torch.distributed.tensor.parallel import parallelize_module

    from sharenet_fast.torch.parallel import PositionParallel
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=300))
    torch.set_num_threads(1)
    mesh = init_device_mesh("cpu", (world,), mesh_dim_names=("pos",))
    torch.manual_seed(0)
    net = model(size, device="meta")          # shapes only: each rank makes its own rows
    parallelize_module(net, mesh, {"0": PositionParallel(),
                                   "2": PositionParallel(output_layouts=Replicate(),
                                                         use_local_output=True)})
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for step in range(steps):
        x, t = batch(size, 4, step)
        opt.zero_grad()
        loss = F.mse_loss(net(x), t)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if rank == 0 and (step % 5 == 0 or step == steps - 1):
            print(f"step {step:3d}  loss {loss.item():.4f}", flush=True)
    held = sum(v.to_local().numel() * 4 for p in net.parameters()
               for v in (p, p.grad, *opt.state[p].values()) if v.dim())
    rows = net[0].weight.to_local().shape[0]
    import resource
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"rank {rank}: output rows {rows} of {size}; weight + grad + Adam {held / 2**20:.1f} "
          f"MB (cap {cap / 2**20:.0f} MB: {'within' if held <= cap else 'OVER'}); peak RSS "
          f"{rss:.0f} MB", flush=True)
    if rank == 0 and out:
        torch.save(dict(losses=losses, held=held), out)
    dist.barrier()
    dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train(world=4, size=96, steps=20, cap_mb=256, out=None):
    """Check the cap, compile the kernels once here, then train on `world` processes."""
    need, cap = state_bytes(size), cap_mb * 2**20
    print(f"{size}x{size}: weight + grad + Adam {need / 2**20:.0f} MB in one process; cap "
          f"{cap_mb} MB: {'fits' if need <= cap else 'does not fit'}; over {world} ranks "
          f"~{need / world / 2**20:.0f} MB each")
    if need / world > cap:
        raise SystemExit(f"even {world} ranks would not fit the cap: use more")
    small = model(8)                                  # the kernels, compiled and cached here
    small(torch.randn(1, C_IN, 8, 8)).sum().backward()
    torch.multiprocessing.spawn(rank_main, args=(world, _free_port(), size, steps, cap, out),
                                nprocs=world)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--world", type=int, default=4)
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--cap-mb", type=float, default=256)
    args = p.parse_args(argv)
    if args.world < 1 or args.size < 3 or args.steps < 1:
        p.error("--world >= 1, --size >= 3, --steps >= 1")
    train(args.world, args.size, args.steps, args.cap_mb)
    return 0


if __name__ == "__main__":
    sys.exit(main())
