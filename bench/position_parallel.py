"""Position parallel (sharenet_fast.torch.parallel) at alexnet_conv1 scale: a training step and
the memory of the untied layer split by output rows over processes, against one process.

    python -m bench.position_parallel [--quick] [--batch N] [--steps N] [--json PATH] [--save]

The layer: sft.LocallyConnected2d(3, 96, 11, input_size=(227, 227), stride=4) (105.7M
parameters, 423 MB float32); step = forward, MSE against a fixed target, backward, Adam step
(fused=True: one pass over each tensor; the default foreach Adam took 0.92 s of a 1.17 s step
here, its temporaries streaming the 1.6 GB of state several times).
The output is all-gathered (Replicate) so the loss sees the whole output, as a model whose
next layers are replicated would. Runs, each in fresh processes (gloo on loopback):
    1 process x T threads, 1 process x 1 thread, W processes x T/W threads (W = 2, 4)
where T is the machine's cores. The parallel layer is built on the meta device: no rank ever
holds the whole weight.

Memory per rank: the bytes of weight + gradient + Adam state (exp_avg, exp_avg_sq) each rank
holds (its local tensors), beside the single process's (target: <= 1/W + 5% of it), and the
process's peak resident set (ru_maxrss: the interpreter, torch, Numba and activations too).
Communicated bytes per step and rank (from the shapes, not counted on the wire): the output
rows of the other ranks received by the all-gather; the input is replicated and needs no
gradient, so no halo, and the banks' gradients are local (no all-reduce).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from bench.cpu import REPO, cpu_model, free_port, log, run_ranks, write_results

SHAPE = dict(C=3, K=96, R=11, H=227, stride=4)      # alexnet_conv1
QUICK = dict(C=3, K=32, R=11, H=99, stride=4)
MEMORY_SLACK = 0.05                                  # per rank <= 1/W + 5% of one process


def _rss_mb():
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rank_main(rank, world, port, out, batch, steps, quick):
    """One process: build, warm up (compiles, Adam state), time `steps` steps; rank 0 writes
    every rank's figures (gathered) to `out`."""
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F

    import sharenet_fast.torch as sft
    s = QUICK if quick else SHAPE
    base_rss = _rss_mb()
    if world > 1:
        from datetime import timedelta

        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.tensor import Replicate
        from torch.distributed.tensor.parallel import parallelize_module

        from sharenet_fast.torch.parallel import PositionParallel
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world,
                                timeout=timedelta(seconds=300))
        mesh = init_device_mesh("cpu", (world,), mesh_dim_names=("pos",))
        torch.manual_seed(0)
        layer = sft.LocallyConnected2d(s["C"], s["K"], s["R"], (s["H"], s["H"]),
                                       stride=s["stride"], device="meta")
        parallelize_module(layer, mesh, PositionParallel(output_layouts=Replicate(),
                                                         use_local_output=True))
    else:
        torch.manual_seed(0)
        layer = sft.LocallyConnected2d(s["C"], s["K"], s["R"], (s["H"], s["H"]),
                                       stride=s["stride"])
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, s["C"], s["H"], s["H"], generator=g)
    P, Q = layer.output_size
    t = torch.randn(batch, s["K"], P, Q, generator=g)
    opt = torch.optim.Adam(layer.parameters(), lr=1e-3, fused=True)   # one pass per tensor

    def step():
        """(forward + loss, backward, Adam) seconds."""
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=False)
        loss = F.mse_loss(layer(x), t)
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        opt.step()
        return t1 - t0, t2 - t1, time.perf_counter() - t2

    step()                                            # compiles; Adam's state appears
    times, phases = [], []
    for _ in range(steps):
        if world > 1:
            dist.barrier()
        phases.append(step())
        times.append(sum(phases[-1]))

    def local_bytes(v):
        v = v.to_local() if world > 1 else v           # the parallel layer's are DTensors
        return v.numel() * v.element_size()
    state = sum(local_bytes(v) for p in layer.parameters()
                for v in [p, p.grad, *opt.state[p].values()] if v is not None and v.dim())
    rows = layer.weight.to_local().shape[0] if world > 1 else P
    me = dict(rank=rank, times=times, phases=phases, state_bytes=state, rows=rows, rss_mb=_rss_mb(),
              base_rss_mb=base_rss,
              comm_bytes=batch * s["K"] * (P - rows) * Q * 4)     # others' rows, all-gathered
    every = [None] * world
    if world > 1:
        dist.all_gather_object(every, me)
        dist.barrier()
        dist.destroy_process_group()
    else:
        every = [me]
    if rank == 0:
        with open(out, "w") as f:
            json.dump(every, f)


def _launch(world, threads, batch, steps, quick, tmp):
    out, port = os.path.join(tmp, f"pp_{world}x{threads}.json"), free_port()
    env = dict(os.environ, NUMBA_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads),
               SHARENET_FAST_CACHE=os.environ.get("SHARENET_FAST_CACHE", "1"))
    cmd = [sys.executable, "-m", "bench.position_parallel", "--rank-of", str(world),
           "--port", str(port), "--out", out, "--batch", str(batch), "--steps", str(steps)]
    cmd += ["--quick"] * quick
    for rc, text in run_ranks(lambda r: cmd + ["--rank", str(r)], world, 1800, env=env,
                              cwd=REPO):
        if rc:
            raise RuntimeError(f"{world} x {threads}: a rank failed:\n{text[-3000:]}")
    with open(out) as f:
        return json.load(f)


def report(quick=False, batch=8, steps=5):
    import tempfile
    cores = os.cpu_count() or 1
    runs = [(1, cores), (1, 1)] + [(w, max(1, cores // w)) for w in (2, 4)]
    import llvmlite.binding as ll
    # the model name alone ("AMD EPYC") does not tell the VMs' generations apart
    rep = dict(machine=f"{cpu_model()} ({ll.get_host_cpu_name()})", cores=cores, quick=quick,
               batch=batch, steps=steps,
               shape=QUICK if quick else SHAPE, runs=[])
    with tempfile.TemporaryDirectory() as tmp:
        for world, threads in runs:
            log(f"position parallel: {world} process(es) x {threads} thread(s)")
            ranks = _launch(world, threads, batch, steps, quick, tmp)
            med = sorted(max(r["times"][i] for r in ranks) for i in range(steps))
            rep["runs"].append(dict(world=world, threads=threads, ranks=ranks,
                                    step_ms=med[len(med) // 2] * 1e3,
                                    step_ms_range=[med[0] * 1e3, med[-1] * 1e3]))
    one = rep["runs"][0]["ranks"][0]["state_bytes"]
    for run in rep["runs"]:
        worst = max(r["state_bytes"] for r in run["ranks"])
        run["state_fraction"] = worst / one
        run["state_met"] = worst <= (1 / run["world"] + MEMORY_SLACK) * one
    return rep


def _median(phases, i):
    v = sorted(p[i] for p in phases)
    return v[len(v) // 2]


def markdown(rep):
    s = rep["shape"]
    lines = [f"# Position parallel: LocallyConnected2d({s['C']}, {s['K']}, {s['R']}, "
             f"input {s['H']}x{s['H']}, stride {s['stride']}), batch {rep['batch']}, Adam",
             "", f"{rep['machine']}, {rep['cores']} cores; median of {rep['steps']} steps "
             "(a step's time: its slowest rank).", "",
             "| processes x threads | step ms (range) | weight+grad+Adam MB per rank (max) "
             "| of one process | target <= 1/W + 5% | peak RSS MB per rank (max) "
             "| received per step per rank (max) | forward / backward / Adam ms (rank 0) |",
             "|---|---|---|---|---|---|---|---|"]
    for run in rep["runs"]:
        rk = run["ranks"]
        lo, hi = run["step_ms_range"]
        lines.append(
            f"| {run['world']} x {run['threads']} | {run['step_ms']:.0f} ({lo:.0f}-{hi:.0f}) "
            f"| {max(r['state_bytes'] for r in rk) / 2**20:.0f} "
            f"| {run['state_fraction']:.3f} | "
            f"{'met' if run['state_met'] else 'NOT met'} "
            f"| {max(r['rss_mb'] for r in rk):.0f} "
            f"| {max(r['comm_bytes'] for r in rk) / 2**20:.1f} MB "
            f"| {' / '.join('%.0f' % (_median(rk[0]['phases'], i) * 1e3) for i in range(3))} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="a smaller layer (K=32, 99x99 input)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--json", metavar="PATH")
    p.add_argument("--save", action="store_true",
                   help="write bench/results/position_parallel_<machine>.{json,md}")
    p.add_argument("--rank", type=int, help=argparse.SUPPRESS)
    p.add_argument("--rank-of", type=int, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.batch < 1 or args.steps < 1:
        p.error("--batch and --steps must be >= 1")
    if args.rank is not None:
        return rank_main(args.rank, args.rank_of, args.port, args.out, args.batch, args.steps,
                         args.quick)
    rep = report(args.quick, args.batch, args.steps)
    text = markdown(rep)
    print(text)
    write_results("position_parallel", rep, text, args.json, args.save)
    return 0


if __name__ == "__main__":
    sys.exit(main())
