"""Position parallelism on PyTorch's DTensor: a LocallyConnected2d or TiledConv2d split by output
rows across the ranks of a device mesh (issue 27; docs/torch.md, "Beyond one device").

    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate
    from torch.distributed.tensor.parallel import parallelize_module
    from sharenet_fast.torch.parallel import PositionParallel

    mesh = init_device_mesh("cpu", (world,), mesh_dim_names=("pos",))
    parallelize_module(model, mesh, {"lc1": PositionParallel(),
                                     "lc2": PositionParallel(output_layouts=Replicate(),
                                                             use_local_output=True)})

Rank i of the n ranks along the mesh's "pos" dimension owns the output rows torch.chunk gives it
(`bands(P, n)`: ceil(P/n) rows each, the last rank fewer), which are also the rows of a local
layer's weight and bias it holds (DTensors, Shard(0)) and of the output it returns (Shard(2)).
A tiled layer's banks are replicated (TP must divide the bands, so each band starts on bank row
0). The forward needs input rows past the band (the kernel's halo): a replicated input is sliced
(its gradient is summed over "pos" by an all-reduce), a row-sharded one (Shard(2), as the
previous position-parallel layer returns it) gets the rows it lacks from the ranks that own
them by point-to-point sends, and the backward sends their gradients back to be added (a
reduce-scatter of the halo rows). The weight gradient is local; other mesh dimensions are
data parallel (the input's batch split over them, dW all-reduced and averaged over them only).

Why a ParallelStyle of our own and not `register_sharding` or `local_map`: a sharding rule maps
the placements of an operator's whole arguments, and local_map runs a function on the local
shards as they stand; neither can fetch neighbour rows or change the padding per band, which is
what a row split of a convolution-shaped layer needs. The style keeps the single-process
operator (`torch.ops.sharenet_fast.*`) as it is and wraps the module's forward around it.
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor
from torch.distributed.tensor.parallel import ParallelStyle

from ..geometry import ConvGeometry
from . import _ops
from ._modules import LocallyConnected1d, LocallyConnected2d, TiledConv2d

__all__ = ["PositionParallel", "bands"]


def bands(size, parts):
    """[(start, stop)] of `size` rows split over `parts` ranks as torch.chunk and DTensor's
    Shard split them: ceil(size / parts) rows each, the last ranks fewer (possibly none)."""
    b = -(-size // parts)
    return [(min(i * b, size), min((i + 1) * b, size)) for i in range(parts)]


class PositionParallel(ParallelStyle):
    """Shard a LocallyConnected2d's banks (or a TiledConv2d's output) by output rows over the
    mesh dimension `mesh_dim` (any mesh of one dimension, whatever its name); the mesh's other
    dimensions are data parallel.

    output_layouts: Shard(2) (the default: each rank returns its rows, as a DTensor, which the
    next position-parallel layer takes with a halo exchange) or Replicate() (all-gathered).
    use_local_output: return the local tensor instead of the DTensor (with Replicate(): a plain
    tensor for the layers that follow). The input: a DTensor on the same mesh, replicated or
    Shard(2) along mesh_dim (Shard(0) or replicated along the others), or a plain tensor, taken
    as replicated along mesh_dim and as this rank's share of the batch along the others."""

    def __init__(self, *, output_layouts=None, use_local_output=False, mesh_dim="pos"):
        super().__init__()
        out = Shard(2) if output_layouts is None else output_layouts
        if isinstance(out, (list, tuple)) and len(out) == 1:
            out = out[0]
        if out != Shard(2) and out != Replicate():
            raise ValueError(f"output_layouts must be Shard(2) (output rows, the default) or "
                             f"Replicate(), got {output_layouts!r}")
        if not isinstance(use_local_output, bool):
            raise TypeError(f"use_local_output must be a bool, got {use_local_output!r}")
        if not isinstance(mesh_dim, str):
            raise TypeError(f"mesh_dim must be a str, got {mesh_dim!r}")
        self.output_layouts, self.use_local_output, self.mesh_dim = out, use_local_output, \
            mesh_dim

    def __repr__(self):
        return (f"PositionParallel(output_layouts={self.output_layouts}, "
                f"use_local_output={self.use_local_output}, mesh_dim={self.mesh_dim!r})")

    def _apply(self, module, device_mesh):
        if isinstance(module, LocallyConnected1d) or not isinstance(
                module, (LocallyConnected2d, TiledConv2d)):
            raise TypeError(f"PositionParallel takes a sharenet_fast.torch LocallyConnected2d "
                            f"or TiledConv2d, got {type(module).__name__}")
        if not isinstance(device_mesh, DeviceMesh):
            raise TypeError(f"device_mesh must be a DeviceMesh, got {type(device_mesh).__name__}")
        if getattr(module, "_position_parallel", None) is not None:
            raise ValueError("module is already position parallel")
        plan = _Plan(module, device_mesh, self)
        module._position_parallel = plan
        module.forward = plan.forward       # an instance attribute: nn.Module.__call__ takes it
        return module


class _Plan:
    """One parallelised layer: its mesh, its rank's band, its parameters' placements; forward."""

    def __init__(self, module, mesh, style):
        self.module, self.mesh, self.style = module, mesh, style
        self.seed = None        # _seed(): broadcast once, if a parameter is on the meta device
        names = mesh.mesh_dim_names
        if mesh.ndim == 1:
            self.pos = 0
        elif names is not None and style.mesh_dim in names:
            self.pos = names.index(style.mesh_dim)
        else:
            raise ValueError(f"device_mesh has {mesh.ndim} dimensions named {names}: name the "
                             f"one to split positions over {style.mesh_dim!r} (or pass "
                             f"mesh_dim=)")
        self.n, self.rank = mesh.size(self.pos), mesh.get_local_rank(self.pos)
        self.group = mesh.get_group(self.pos)
        self.peers = dist.get_process_group_ranks(self.group)    # global ranks along "pos"
        others = [d for d in range(mesh.ndim) if d != self.pos]
        self.data_groups = [mesh.get_group(d) for d in others]
        self.data_size = math.prod(mesh.size(d) for d in others)
        self.local = isinstance(module, LocallyConnected2d)
        if self.local:
            self._check_bands(module.output_size[0])
        # Parameters: a local layer's banks split by rows along "pos"; a tiled layer's kept
        # whole. Replicated along the data-parallel dimensions either way.
        placements = [Replicate()] * mesh.ndim
        if self.local:
            placements[self.pos] = Shard(0)
        self.placements = tuple(placements)
        # whose gradient is a partial sum (all-reduced in backward): data-parallel ranks always,
        # the "pos" ranks too for a tiled layer's shared banks
        self.grad_groups = self.data_groups + ([] if self.local else [self.group])
        for name in ("weight", "bias"):
            self._distribute(name, style.src_data_rank)

    # ----------------------------------------------------------------------- checks
    def _check_bands(self, P):
        """ValueError, on every rank alike (from sizes all ranks share), before any collective."""
        n, mesh_dim = self.n, self.style.mesh_dim
        if n > P:
            raise ValueError(f"device_mesh: its {mesh_dim!r} dimension has {n} ranks, more "
                             f"than the layer's {P} output rows")
        rows = bands(P, n)
        empty = [i for i, (a, b) in enumerate(rows) if a == b]
        if empty:
            raise ValueError(f"device_mesh: {P} output rows over {n} ranks leave rank(s) "
                             f"{empty} no rows (split as torch.chunk: "
                             f"{[b - a for a, b in rows]}); use fewer ranks along {mesh_dim!r}")
        if not self.local and n > 1:
            TP = self.module.tiles[0]
            b = rows[0][1]
            if b % TP:
                raise ValueError(f"tiles: the tiled layer's TP = {TP} must divide each rank's "
                                 f"band of output rows; {P} rows over {n} ranks gives bands "
                                 f"of {b} (torch.chunk's split): choose tiles or the number "
                                 f"of ranks so that TP divides ceil(P / n)")
        return rows

    # ------------------------------------------------------------------- parameters
    def _distribute(self, name, src_data_rank):
        p = getattr(self.module, name)
        if p is None:
            return
        if isinstance(p, DTensor):
            raise ValueError(f"module.{name} is already a DTensor")
        if p.device.type == "meta":
            local = self._initialise(p)
            dt = DTensor.from_local(local, self.mesh, self.placements, run_check=False,
                                    shape=p.shape, stride=p.stride())
        else:
            dt = distribute_tensor(p.detach(), self.mesh, self.placements,
                                   src_data_rank=src_data_rank)
        setattr(self.module, name, nn.Parameter(dt, requires_grad=p.requires_grad))

    def _initialise(self, p):
        """A layer built on the meta device: this rank's part made here, never the whole.
        torch.nn.Conv2d's initialisation (uniform in +-1/sqrt(fan-in of one bank)) from a
        generator seeded by the mesh's first rank's torch.initial_seed() and the band, so that
        the ranks holding the same rows (along the data-parallel dimensions; all of them for
        a tiled layer's banks) hold the same values."""
        shape, first = list(p.shape), 0
        if self.local:
            first, stop = bands(shape[0], self.n)[self.rank]
            shape[0] = stop - first
        device = self.mesh.device_type
        if device != "cpu":
            device = torch.device(device, torch.get_device_module(device).current_device())
        gen = torch.Generator().manual_seed((self._seed() * 1_000_003 + first) % 2**63)
        bound = 1 / math.sqrt(self.module._fan_in)
        local = torch.empty(shape, dtype=p.dtype).uniform_(-bound, bound, generator=gen)
        return local.to(device)

    def _seed(self):
        """torch.initial_seed() of the mesh's first rank, on every rank (broadcast along each
        mesh dimension in turn): replicas agree even where the processes were seeded apart."""
        if self.seed is None:
            t = torch.tensor([torch.initial_seed() % 2**62], dtype=torch.int64,
                             device=self.mesh.device_type)
            for d in range(self.mesh.ndim):
                group = self.mesh.get_group(d)
                dist.broadcast(t, src=dist.get_global_rank(group, 0), group=group)
            self.seed = int(t.item())
        return self.seed

    def _local(self, p):
        """A parameter's local tensor for the kernels; its gradient comes back as a DTensor of
        the parameter's placements, all-reduced first where it is a partial sum."""
        if p is None:
            return None
        t = p.to_local(grad_placements=p.placements)
        if t.requires_grad and self.grad_groups:
            t.register_hook(self._reduce_gradient)
        return t

    def _reduce_gradient(self, g):
        # averaged over the data-parallel ranks (each rank's loss is its share's mean, as in
        # DistributedDataParallel), summed over "pos" for a tiled layer's shared banks
        g = g / self.data_size if self.data_size > 1 else g.clone()
        for group in self.grad_groups:
            dist.all_reduce(g, group=group)
        return g

    # ---------------------------------------------------------------------- forward
    def _input(self, x):
        mesh, pos = self.mesh, self.pos
        if isinstance(x, DTensor):
            if x.device_mesh != mesh:
                raise ValueError("x is a DTensor on a different device mesh than the layer's "
                                 "weight")
            for d, pl in enumerate(x.placements):
                ok = (Replicate(), Shard(2)) if d == pos else (Replicate(), Shard(0))
                if pl not in ok:
                    raise ValueError(f"x: placement {pl} along mesh dimension {d}; the layer "
                                     f"takes {' or '.join(map(str, ok))} there")
            return x
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor or DTensor, got {type(x).__name__}")
        placements = [Shard(0)] * mesh.ndim
        placements[pos] = Replicate()
        return DTensor.from_local(x, mesh, placements, run_check=False)

    def forward(self, x):
        m = self.module
        x = self._input(x)
        if x.dim() != 4:
            raise ValueError(f"x must be (N, C, H, W), got shape {tuple(x.shape)}")
        N, C, H, W = x.shape
        if self.local and (H, W) != m.input_size:
            raise ValueError(f"{type(m).__name__} was built for inputs (N, {m.in_channels}, "
                             f"{m.input_size[0]}, {m.input_size[1]}), got {tuple(x.shape)}")
        if C != m.in_channels:
            raise ValueError(f"x has {C} channels, the layer takes {m.in_channels}")
        st, pd, word, dl, groups = m._geo
        g = ConvGeometry.make(N, C, H, W, m.out_channels, *m.kernel_size, st, word or pd, dl,
                              groups)
        rows = self._check_bands(g.P)
        a, e, lo, hi = _reads(g, *rows[self.rank])
        xl = x.to_local(grad_placements=x.placements)
        if x.placements[self.pos] == Replicate():
            band = _RowSlice.apply(xl, lo, hi, self.group)
        else:
            needs = [_reads(g, *band_rows)[2:] for band_rows in rows]
            band = _Halo.apply(xl, bands(H, self.n), needs, self)
        # rows past the edges padded here; columns by the kernel unless "same" pads them
        # unevenly (the operator takes one padding per side pair)
        pw, ew = g.padding[1], g.extra[1]
        pad = (pw, pw + ew, lo - a, e - hi) if ew else (0, 0, lo - a, e - hi)
        if any(pad):
            band = F.pad(band, pad)
        y = _ops.KINDS[m.op](band, self._local(m.weight), self._local(m.bias), list(st),
                             [0, 0] if ew else [0, pw], "", list(dl), groups,
                             bool(m.deterministic), m.backend)
        placements = list(x.placements)
        placements[self.pos] = Shard(2)
        shape = torch.Size((N, m.out_channels, g.P, g.Q))
        y = DTensor.from_local(y, self.mesh, placements, run_check=False, shape=shape,
                               stride=_contiguous_strides(shape))
        if self.style.output_layouts == Replicate():
            placements[self.pos] = Replicate()
            y = y.redistribute(self.mesh, placements)
        return y.to_local() if self.style.use_local_output else y


def _reads(g, p0, p1):
    """The input rows output rows [p0, p1) read: [a, e) in unpadded coordinates (rows outside
    [0, H) are padding: zero rows) and [lo, hi), that range clipped to the input."""
    sh, dh, ph = g.stride[0], g.dilation[0], g.padding[0]
    a, e = p0 * sh - ph, (p1 - 1) * sh + (g.R - 1) * dh + 1 - ph
    lo = min(max(a, 0), g.H)
    return a, e, lo, max(min(e, g.H), lo)


def _contiguous_strides(shape):
    strides, s = [], 1
    for d in reversed(shape):
        strides.append(s)
        s *= d
    return tuple(reversed(strides))


def _overlap(a, b):
    lo, hi = max(a[0], b[0]), min(a[1], b[1])
    return (lo, hi) if lo < hi else None


class _RowSlice(torch.autograd.Function):
    """Rows [lo, hi) of a replicated input; backward: each rank's gradient of its rows, summed
    over the "pos" ranks (all-reduce): the replicated input's gradient."""

    @staticmethod
    def forward(ctx, x, lo, hi, group):
        ctx.shape, ctx.lo, ctx.hi, ctx.group = x.shape, lo, hi, group
        return x[:, :, lo:hi].contiguous()

    @staticmethod
    def backward(ctx, g):
        full = g.new_zeros(ctx.shape)
        full[:, :, ctx.lo:ctx.hi] = g
        dist.all_reduce(full, group=ctx.group)
        return full, None, None, None


class _Halo(torch.autograd.Function):
    """The rows a band reads, from a row-sharded input: own rows sliced, the rest received from
    the ranks that own them; backward sends those rows' gradients back, where they are added
    (the halo rows' reduce-scatter). `owns[j]` / `needs[j]`: rank j's input rows held / read."""

    @staticmethod
    def forward(ctx, x, owns, needs, plan):
        i = plan.rank
        if x.shape[2] != owns[i][1] - owns[i][0]:
            raise ValueError(f"x: this rank holds {x.shape[2]} input rows, the layer expects "
                             f"{owns[i][1] - owns[i][0]} (rows {owns[i]} of a Shard(2) split)")
        ctx.owns, ctx.needs, ctx.plan = owns, needs, plan
        first = owns[i][0]
        sends, pieces = [], []
        for j in range(plan.n):
            out = _overlap(owns[i], needs[j])          # my rows rank j reads
            if j != i and out:
                sends.append((j, x[:, :, out[0] - first:out[1] - first].contiguous()))
            into = _overlap(owns[j], needs[i])         # rank j's rows I read
            if into:
                pieces.append(x[:, :, into[0] - first:into[1] - first] if j == i else
                              x.new_empty(x.shape[:2] + (into[1] - into[0], x.shape[3])))
                if j != i:
                    sends.append((j, pieces[-1], "recv"))
        _exchange(plan, sends)
        if not pieces:
            return x.new_empty(x.shape[:2] + (0, x.shape[3]))
        return torch.cat(pieces, dim=2)

    @staticmethod
    def backward(ctx, g):
        owns, needs, plan, i = ctx.owns, ctx.needs, ctx.plan, ctx.plan.rank
        first = owns[i][0]
        grad = g.new_zeros(g.shape[:2] + (owns[i][1] - owns[i][0], g.shape[3]))
        ops, received, at = [], [], needs[i][0]
        for j in range(plan.n):
            into = _overlap(owns[j], needs[i])
            if into:
                part = g[:, :, into[0] - at:into[1] - at]
                if j == i:
                    grad[:, :, into[0] - first:into[1] - first] += part
                else:
                    ops.append((j, part.contiguous()))
            out = _overlap(owns[i], needs[j])
            if j != i and out:
                buf = g.new_empty(g.shape[:2] + (out[1] - out[0], g.shape[3]))
                ops.append((j, buf, "recv"))
                received.append((out, buf))
        _exchange(plan, ops)
        for out, buf in received:
            grad[:, :, out[0] - first:out[1] - first] += buf
        return grad, None, None, None


def _exchange(plan, ops):
    """Point-to-point sends ((rank, tensor)) and receives ((rank, buffer, "recv")) along the
    "pos" group, all posted before any is waited on (no ordering deadlock)."""
    if not ops:
        return
    p2p = [dist.P2POp(dist.irecv if len(op) == 3 else dist.isend, op[1], plan.peers[op[0]],
                      plan.group) for op in ops]
    for req in dist.batch_isend_irecv(p2p):
        req.wait()
