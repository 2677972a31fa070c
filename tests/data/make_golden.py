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


def make(name, N, C, H, W, K, R, S, stride, padding, dilation, seed):
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):  # values in +-[0.5, 1.5): never zero
        mag = torch.rand(*shape, generator=g, dtype=torch.float64) + 0.5
        sign = torch.randint(0, 2, shape, generator=g).to(torch.float64) * 2 - 1
        return mag * sign

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
