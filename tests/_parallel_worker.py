"""One process of tests/test_torch_parallel.py: Adam steps of a small model with two locally
connected layers and a tiled one, position parallel (sharenet_fast.torch.parallel) over gloo on
loopback, or in one process on the whole batch (WORLD 1, the reference).

    python tests/_parallel_worker.py RANK WORLD PORT OUT MODE [save=DIR] [load=DIR]

MODE: "pos" (a 1-D mesh of WORLD ranks) or "dp_pos" (a 2 x WORLD/2 ("dp", "pos") mesh, the
batch split over "dp"). save=: a torch.distributed.checkpoint of model and optimizer after the
steps; load=: one (whatever world saved it) before them. Rank 0 writes the final full
parameters of each of CONFIGS to OUT; WORLD 1 (no load) also STEPS more ("<config>+": what a
checkpoint's load and STEPS more must give). A run of WORLD > 1 also checks that each bad input
raises on every rank without a hang ("errors": the messages seen).
"""
import os
import sys
from collections import OrderedDict
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

import sharenet_fast.torch as sft

STEPS, BATCH = 3, 8
# (dtype, optimizer): Adam's first steps are close to lr * sign(gradient), so a float32 rounding
# difference in a near-zero gradient element moves that element by up to lr; SGD (momentum) keeps
# float32 differences at rounding level (the test's tolerances say which is held to what)
CONFIGS = ((torch.float64, "adam"), (torch.float32, "adam"), (torch.float32, "sgd"))


def optimizer(params, name):
    if name == "adam":
        return torch.optim.Adam(params, lr=0.01)
    return torch.optim.SGD(params, lr=0.05, momentum=0.9)


def model(dtype, device=None):
    """16 x 11 input; stem: a plain layer before them (replicated: its input gradient is the
    sum over the ranks' bands); lc1: "same" padding with an even kernel width (uneven column
    padding) and groups; tiled: 2 x 3 banks, no bias; lc2: stride, row dilation and padding,
    P = 7 (uneven bands over 4 ranks, halos from two neighbours)."""
    torch.manual_seed(0)
    kw = dict(dtype=dtype, device=device)
    return nn.Sequential(OrderedDict(
        stem=nn.Conv2d(2, 2, 1, dtype=dtype),
        lc1=sft.LocallyConnected2d(2, 4, (3, 4), input_size=(16, 11), padding="same",
                                   groups=2, **kw),
        act1=nn.Tanh(),
        tiled=sft.TiledConv2d(4, 4, 3, tiles=(2, 3), padding=1, bias=False, **kw),
        act2=nn.Tanh(),
        lc2=sft.LocallyConnected2d(4, 3, (4, 3), input_size=(16, 11), stride=(2, 1),
                                   padding=(2, 0), dilation=(2, 1), **kw),
        flat=nn.Flatten(),
        head=nn.Linear(3 * 7 * 9, 2, dtype=dtype)))


def data(dtype):
    g = torch.Generator().manual_seed(1)
    return (torch.randn(BATCH, 2, 16, 11, generator=g, dtype=dtype),
            torch.randn(BATCH, 2, generator=g, dtype=dtype))


def parallelize(net, mesh):
    from torch.distributed.tensor import Replicate
    from torch.distributed.tensor.parallel import parallelize_module

    from sharenet_fast.torch.parallel import PositionParallel
    last = PositionParallel(output_layouts=Replicate(), use_local_output=True)
    return parallelize_module(net, mesh, {"lc1": PositionParallel(), "tiled": PositionParallel(),
                                          "lc2": last})


def full(net):
    from torch.distributed.tensor import DTensor
    return {k: (v.full_tensor() if isinstance(v, DTensor) else v).detach().clone()
            for k, v in net.state_dict().items()}


def train(net, opt, x, t, steps, dp_group=None, dp=1):
    for _ in range(steps):
        opt.zero_grad()
        F.mse_loss(net(x), t).backward()
        if dp_group is not None:
            # the plain layers' parameters: data parallel by hand (the position-parallel layers
            # average their own gradients over "dp")
            for p in [*net.stem.parameters(), *net.head.parameters()]:
                dist.all_reduce(p.grad, group=dp_group)
                p.grad /= dp
        opt.step()


def mesh_for(world, mode):
    from torch.distributed.device_mesh import init_device_mesh
    if mode == "dp_pos":
        return init_device_mesh("cpu", (2, world // 2), mesh_dim_names=("dp", "pos"))
    return init_device_mesh("cpu", (world,), mesh_dim_names=("pos",))


def run(world, mode, save=None, load=None):
    results = {}
    for dtype, opt_name in CONFIGS:
        key = f"{dtype}-{opt_name}"
        x, t = data(dtype)
        net = model(dtype)
        dp_group, dp = None, 1
        if world > 1:
            mesh = mesh_for(world, mode)
            parallelize(net, mesh)
            if mode == "dp_pos":
                dp_group, dp = mesh.get_group("dp"), 2
                share = BATCH // dp
                i = mesh.get_local_rank("dp")
                x, t = x[i * share:(i + 1) * share], t[i * share:(i + 1) * share]
        opt = optimizer(net.parameters(), opt_name)
        if load:
            _load(net, opt, os.path.join(load, key))
        train(net, opt, x, t, STEPS, dp_group, dp)
        results[key] = full(net)
        if save:
            _save(net, opt, os.path.join(save, key))
        if world == 1 and not load:
            # the reference goes on: what loading a checkpoint of it and STEPS more must give
            train(net, opt, x, t, STEPS)
            results[key + "+"] = full(net)
    return results


def _save(net, opt, path):
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict
    model_sd, optim_sd = get_state_dict(net, opt)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=path)


def _load(net, opt, path):
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
    model_sd, optim_sd = get_state_dict(net, opt)
    state = {"model": model_sd, "optim": optim_sd}
    dcp.load(state, checkpoint_id=path)
    set_state_dict(net, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])


def errors(world):
    """Each bad input raises ValueError/TypeError here, on every rank, before a collective."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import distribute_tensor, Replicate
    from torch.distributed.tensor.parallel import parallelize_module

    from sharenet_fast.torch.parallel import PositionParallel
    mesh = init_device_mesh("cpu", (world,), mesh_dim_names=("pos",))
    seen = []

    def expect(exc, words, fn):
        try:
            fn()
        except exc as e:
            assert words in str(e), (words, str(e))
            seen.append(words)
        else:
            raise AssertionError(f"no {exc.__name__} for {words}")

    small = sft.LocallyConnected2d(2, 3, 3, input_size=(world + 1, 5))       # P = world - 1
    expect(ValueError, "more than the layer's", lambda: parallelize_module(
        small, mesh, PositionParallel()))
    tiled = parallelize_module(sft.TiledConv2d(2, 3, 3, tiles=(4, 1), padding=1), mesh,
                               PositionParallel())
    x = torch.randn(2, 2, 10, 6)                         # P = 10: bands of 5 (2 ranks) or 3
    expect(ValueError, "tiles", lambda: tiled(x))
    other = init_device_mesh("cpu", (world,), mesh_dim_names=("other",))
    lc = parallelize_module(sft.LocallyConnected2d(2, 3, 3, input_size=(10, 6)), mesh,
                            PositionParallel())
    xo = distribute_tensor(x, other, [Replicate()])
    expect(ValueError, "different device mesh", lambda: lc(xo))
    expect(TypeError, "LocallyConnected2d or TiledConv2d", lambda: parallelize_module(
        nn.Conv2d(2, 3, 3), mesh, PositionParallel()))
    expect(ValueError, "built for inputs", lambda: lc(torch.randn(2, 2, 11, 6)))
    expect(ValueError, "output_layouts", lambda: PositionParallel(output_layouts=Shard0()))
    lc(x).full_tensor()                                  # and it still works afterwards
    # built on the meta device, processes seeded apart: the replicated banks still agree
    torch.manual_seed(1000 + dist.get_rank())
    tiled = parallelize_module(sft.TiledConv2d(2, 3, 3, tiles=(2, 1), device="meta"), mesh,
                               PositionParallel())
    local = tiled.weight.to_local()
    every = [torch.empty_like(local) for _ in range(world)]
    dist.all_gather(every, local)
    assert local.abs().max() > 0 and all(torch.equal(w, local) for w in every)
    seen.append("meta replicas agree")
    return seen


def Shard0():
    from torch.distributed.tensor import Shard
    return Shard(0)


def main(rank, world, port, out, mode, *options):
    words = dict(o.split("=", 1) for o in options)
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world,
                                timeout=timedelta(seconds=120))
    seen = errors(world) if world > 1 else None
    results = run(world, mode, **words)
    if seen is not None:
        results["errors"] = seen
    if rank == 0:
        torch.save(results, out)
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5],
         *sys.argv[6:])
    sys.stdout.flush()
    os._exit(0)       # as _ddp_worker.py: skip the interpreter's teardown (gloo / OpenMP threads)
