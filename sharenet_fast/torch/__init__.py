"""sharenet_fast for PyTorch: the layers as differentiable functions, modules and custom ops.

    import sharenet_fast.torch as sft

    y = sft.local2d(x, weight, bias, stride=1, padding=0, dilation=1)    # differentiable
    layer = sft.LocallyConnected2d(3, 96, 11, input_size=(227, 227), stride=4)
    layer = sft.LocallyConnected2d.from_conv2d(trained_conv, input_size=(227, 227))

Importing this module registers `torch.ops.sharenet_fast.*` (custom operators with fake kernels,
autograd and autocast rules: torch.compile(fullgraph=True) traces through them). Importing
`sharenet_fast` alone never imports torch. See docs/design.md, "PyTorch".
"""
try:
    import torch as _torch  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised without torch installed
    raise ImportError("sharenet_fast.torch needs PyTorch: pip install 'sharenet_fast[torch]' "
                      "(torch==2.13.0 on the CPU build machines)") from exc

from ._modules import (BankAverager, Conv2d, LocallyConnected1d, LocallyConnected2d, TiledConv2d,
                       average_banks_, conv2d, local2d, neighbour_penalty, soft_sharing_penalty,
                       tiled_conv2d)
from ._ops import OPS, NS

__all__ = ["conv2d", "tiled_conv2d", "local2d", "soft_sharing_penalty", "neighbour_penalty",
           "average_banks_", "BankAverager", "Conv2d", "TiledConv2d",
           "LocallyConnected2d", "LocallyConnected1d", "OPS", "NS"]
