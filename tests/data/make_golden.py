"""Write the golden files tests/data/golden_*.npz with PyTorch in float64 (independent of sharenet_fast).

Each file holds x, weight, bias, grad_out and the outputs y = conv2d(x, weight, bias) and
dx, dw, db = the gradients of sum(y * grad_out), from torch.nn.functional.conv2d + autograd,
plus stride, padding and dilation as int pairs. Run once from the repository root:

    python tests/data/make_golden.py

The files are committed; tests/test_golden.py checks the oracle and every backend against them.
"""
import os

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))

# name: (N, C, H, W, K, R, S, stride, padding, dilation)
CASES = {
    "basic_pad1": (2, 3, 9, 8, 4, 3, 3, (1, 1), (1, 1), (1, 1)),
    "nonsquare_dilated": (1, 2, 11, 13, 5, 3, 2, (2, 3), (1, 0), (1, 2)),
    "alexnet_like_s4_k11": (2, 3, 19, 19, 3, 11, 11, (4, 4), (2, 2), (1, 1)),
    "conv1x1_stride2_pad1": (3, 1, 6, 7, 1, 1, 1, (2, 2), (1, 1), (1, 1)),
}


def _random(seed):
    """rand(*shape): float64 values in +-[0.5, 1.5) (never zero) from one generator."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        mag = torch.rand(*shape, generator=g, dtype=torch.float64) + 0.5
        sign = torch.randint(0, 2, shape, generator=g).to(torch.float64) * 2 - 1
        return mag * sign
    return rand


def make(name, N, C, H, W, K, R, S, stride, padding, dilation, seed):
    rand = _random(seed)

    x = rand(N, C, H, W).requires_grad_()
    w = rand(K, C, R, S).requires_grad_()
    b = rand(K).requires_grad_()
    y = torch.nn.functional.conv2d(x, w, b, stride=stride, padding=padding, dilation=dilation)
    dy = rand(*y.shape)
    (y * dy).sum().backward()
    path = os.path.join(HERE, f"golden_{name}.npz")
    np.savez_compressed(
        path, x=x.detach().numpy(), weight=w.detach().numpy(), bias=b.detach().numpy(),
        grad_out=dy.numpy(), y=y.detach().numpy(), dx=x.grad.numpy(), dw=w.grad.numpy(),
        db=b.grad.numpy(), stride=np.array(stride), padding=np.array(padding),
        dilation=np.array(dilation))
    print(f"{path}: x {tuple(x.shape)} weight {tuple(w.shape)} y {tuple(y.shape)} "
          f"({os.path.getsize(path)} bytes)")


if __name__ == "__main__":
    torch.use_deterministic_algorithms(True)
    for i, (name, case) in enumerate(CASES.items()):
        make(name, *case, seed=1234 + i)


# ------------------------------------------------------------------ untied and partially tied
# Independent of sharenet_fast and of its oracle's formulation:
#   locally connected = F.unfold (im2col) + einsum with one (K, C*R*S) bank per position;
#   tiled             = one full conv2d per bank, each masked to its tile class, summed.
# name: (layer, N, C, H, W, K, R, S, stride, padding, dilation, tile)
UNTIED_CASES = {
    "local_pad_stride": ("local", 2, 3, 9, 8, 4, 3, 2, (2, 1), (1, 1), (1, 1), None),
    "local_alexnet_like": ("local", 2, 3, 15, 15, 2, 11, 11, (4, 4), (2, 2), (1, 1), None),
    "local_dilated": ("local", 3, 2, 10, 9, 2, 3, 2, (1, 2), (0, 2), (2, 1), None),
    "tiled_2x2_pad1": ("tiled", 2, 3, 9, 8, 4, 3, 3, (1, 1), (1, 1), (1, 1), (2, 2)),
    "tiled_3x2_strided_dilated": ("tiled", 2, 2, 13, 11, 3, 3, 2, (2, 1), (1, 0), (1, 2), (3, 2)),
}


def local_torch(x, w, b, stride, padding, dilation):
    """x (N,C,H,W), w (P,Q,K,C,R,S), b (P,Q,K) -> (N,K,P,Q) via unfold + einsum."""
    N = x.shape[0]
    P, Q, K, C, R, S = w.shape
    cols = torch.nn.functional.unfold(x, (R, S), dilation=dilation, padding=padding,
                                      stride=stride)                     # (N, C*R*S, P*Q)
    y = torch.einsum("ntl,lkt->nkl", cols, w.reshape(P * Q, K, C * R * S))
    return y.reshape(N, K, P, Q) + b.permute(2, 0, 1)


def tiled_torch(x, w, b, stride, padding, dilation):
    """x (N,C,H,W), w (TP,TQ,K,C,R,S), b (TP,TQ,K) -> (N,K,P,Q): masked full convolutions."""
    TP, TQ = w.shape[:2]
    y = 0
    for tp in range(TP):
        for tq in range(TQ):
            full = torch.nn.functional.conv2d(x, w[tp, tq], b[tp, tq], stride=stride,
                                              padding=padding, dilation=dilation)
            P, Q = full.shape[2:]
            mask = torch.zeros(P, Q, dtype=full.dtype)
            mask[tp::TP, tq::TQ] = 1
            y = y + full * mask
    return y


def make_untied(name, layer, N, C, H, W, K, R, S, stride, padding, dilation, tile, seed):
    rand = _random(seed)

    P = (H + 2 * padding[0] - dilation[0] * (R - 1) - 1) // stride[0] + 1
    Q = (W + 2 * padding[1] - dilation[1] * (S - 1) - 1) // stride[1] + 1
    grid = (P, Q) if layer == "local" else tile
    x = rand(N, C, H, W).requires_grad_()
    w = rand(*grid, K, C, R, S).requires_grad_()
    b = rand(*grid, K).requires_grad_()
    fn = local_torch if layer == "local" else tiled_torch
    y = fn(x, w, b, stride, padding, dilation)
    dy = rand(*y.shape)
    (y * dy).sum().backward()
    path = os.path.join(HERE, f"untied_{name}.npz")
    np.savez_compressed(
        path, layer=np.array(layer), x=x.detach().numpy(), weight=w.detach().numpy(),
        bias=b.detach().numpy(), grad_out=dy.numpy(), y=y.detach().numpy(), dx=x.grad.numpy(),
        dw=w.grad.numpy(), db=b.grad.numpy(), stride=np.array(stride),
        padding=np.array(padding), dilation=np.array(dilation))
    print(f"{path}: {layer} x {tuple(x.shape)} weight {tuple(w.shape)} y {tuple(y.shape)} "
          f"({os.path.getsize(path)} bytes)")


if __name__ == "__main__":
    for i, (name, case) in enumerate(UNTIED_CASES.items()):
        make_untied(name, *case, seed=4321 + i)


# -------------------------------------------------------------------------------- grouped
# Grouped and depthwise layers, from PyTorch's own grouped conv2d (groups=) and, for the untied
# layers, Pogodin et al.'s grouped locally connected formulation: unfold, then one einsum per
# group over that group's channels; tiled = masked grouped conv2d per bank.
# name: (layer, N, C, H, W, K, R, S, stride, padding, dilation, tile, groups)
GROUPED_CASES = {
    "conv_g2_pad1": ("conv", 2, 4, 9, 8, 6, 3, 3, (1, 1), (1, 1), (1, 1), None, 2),
    "conv_depthwise_m2_s2": ("conv", 2, 3, 11, 10, 6, 3, 3, (2, 2), (1, 1), (1, 1), None, 3),
    "local_g2_strided": ("local", 2, 4, 9, 8, 4, 3, 2, (2, 1), (1, 1), (1, 1), None, 2),
    "local_depthwise_dilated": ("local", 3, 3, 10, 9, 3, 3, 2, (1, 2), (0, 2), (2, 1), None, 3),
    "tiled_g2_2x3": ("tiled", 2, 4, 9, 9, 4, 3, 3, (1, 1), (1, 1), (1, 1), (2, 3), 2),
    "tiled_depthwise_3x2": ("tiled", 2, 2, 13, 11, 2, 3, 2, (2, 1), (1, 0), (1, 2), (3, 2), 2),
}


def local_grouped_torch(x, w, b, stride, padding, dilation, groups):
    """x (N,C,H,W), w (P,Q,K,C/G,R,S) -> unfold, then per group an einsum over its channels."""
    N, C = x.shape[:2]
    P, Q, K, Cg, R, S = w.shape
    Kg = K // groups
    cols = torch.nn.functional.unfold(x, (R, S), dilation=dilation, padding=padding,
                                      stride=stride).reshape(N, C * R * S, P * Q)
    parts = []
    for grp in range(groups):
        ci = cols[:, grp * Cg * R * S:(grp + 1) * Cg * R * S]
        wg = w[:, :, grp * Kg:(grp + 1) * Kg].reshape(P * Q, Kg, Cg * R * S)
        parts.append(torch.einsum("ntl,lkt->nkl", ci, wg))
    return torch.cat(parts, 1).reshape(N, K, P, Q) + b.permute(2, 0, 1)


def tiled_grouped_torch(x, w, b, stride, padding, dilation, groups):
    TP, TQ = w.shape[:2]
    y = 0
    for tp in range(TP):
        for tq in range(TQ):
            full = torch.nn.functional.conv2d(x, w[tp, tq], b[tp, tq], stride=stride,
                                              padding=padding, dilation=dilation,
                                              groups=groups)
            mask = torch.zeros(full.shape[2:], dtype=full.dtype)
            mask[tp::TP, tq::TQ] = 1
            y = y + full * mask
    return y


def make_grouped(name, layer, N, C, H, W, K, R, S, stride, padding, dilation, tile, groups,
                 seed):
    rand = _random(seed)

    P = (H + 2 * padding[0] - dilation[0] * (R - 1) - 1) // stride[0] + 1
    Q = (W + 2 * padding[1] - dilation[1] * (S - 1) - 1) // stride[1] + 1
    grid = {"conv": (), "local": (P, Q), "tiled": tile}[layer]
    x = rand(N, C, H, W).requires_grad_()
    w = rand(*grid, K, C // groups, R, S).requires_grad_()
    b = rand(*grid, K).requires_grad_()
    if layer == "conv":
        y = torch.nn.functional.conv2d(x, w, b, stride=stride, padding=padding,
                                       dilation=dilation, groups=groups)
    else:
        fn = local_grouped_torch if layer == "local" else tiled_grouped_torch
        y = fn(x, w, b, stride, padding, dilation, groups)
    dy = rand(*y.shape)
    (y * dy).sum().backward()
    path = os.path.join(HERE, f"grouped_{name}.npz")
    np.savez_compressed(
        path, layer=np.array(layer), x=x.detach().numpy(), weight=w.detach().numpy(),
        bias=b.detach().numpy(), grad_out=dy.numpy(), y=y.detach().numpy(), dx=x.grad.numpy(),
        dw=w.grad.numpy(), db=b.grad.numpy(), stride=np.array(stride),
        padding=np.array(padding), dilation=np.array(dilation), groups=np.array(groups))
    print(f"{path}: {layer} groups {groups} x {tuple(x.shape)} weight {tuple(w.shape)} "
          f"({os.path.getsize(path)} bytes)")


if __name__ == "__main__":
    for i, (name, case) in enumerate(GROUPED_CASES.items()):
        make_grouped(name, *case, seed=5555 + i)
