"""Folding frozen batch norms into the preceding convolutions (an inference-only rewrite)."""

import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d


@torch.no_grad()
def fold_frozen_batchnorm(module: nn.Module) -> nn.Module:
    """Fold every FrozenBatchNorm2d that directly follows a bias-free Conv2d among its siblings into
    that convolution (scale into the weight, shift into a new bias); the norm becomes Identity.

    Works in place and returns ``module``; the result computes the same function with one pass over
    each activation less.
    """
    for parent in module.modules():
        previous_name, previous = None, None
        for name, child in list(parent.named_children()):
            if (
                isinstance(child, FrozenBatchNorm2d)
                and isinstance(previous, nn.Conv2d)
                and previous.bias is None
            ):
                setattr(parent, previous_name, _folded(previous, child))
                setattr(parent, name, nn.Identity())
            previous_name, previous = name, child
    return module


def _folded(conv: nn.Conv2d, norm: FrozenBatchNorm2d) -> nn.Conv2d:
    scale = norm.weight * (norm.running_var + norm.eps).rsqrt()
    folded = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=True,
    ).to(device=conv.weight.device, dtype=conv.weight.dtype)
    folded.weight.copy_(conv.weight * scale[:, None, None, None])
    folded.bias.copy_(norm.bias - norm.running_mean * scale)
    return folded
