"""ResNet backbone with frozen batch norm, returning the last stage (C5, or DC5 when dilated)."""

from collections import OrderedDict

import torch
import torchvision
from torch import Tensor, nn
from torchvision.ops import FrozenBatchNorm2d


class Backbone(nn.Module):
    """ResNet-50/101 trunk: images [B, 3, H, W] -> features [B, 2048, H/s, W/s], s = 32 (C5) or 16 (DC5)."""

    num_channels = 2048

    def __init__(self, name: str, dilation: bool):
        super().__init__()
        resnet = getattr(torchvision.models, name)(
            weights=None, replace_stride_with_dilation=[False, False, dilation], norm_layer=FrozenBatchNorm2d
        )
        trunk = ((n, m) for n, m in resnet.named_children() if n not in ("avgpool", "fc"))
        self.body = nn.Sequential(OrderedDict(trunk))

    def forward(self, images: Tensor) -> Tensor:
        return self.body(images)


def downsample_mask(mask: Tensor, size: tuple[int, int]) -> Tensor:
    """Padding mask [B, H, W] -> [B, h, w] by nearest-neighbour sampling, as the reference does with
    ``F.interpolate``, written with explicit indices so that export needs no guard on H and W."""
    rows = _nearest_indices(mask.shape[-2], size[0], mask.device)
    cols = _nearest_indices(mask.shape[-1], size[1], mask.device)
    return mask[:, rows][:, :, cols]


def _nearest_indices(in_size: int, out_size: int, device: torch.device) -> Tensor:
    # PyTorch's 'nearest' rule computed in float32 like its kernel: floor(i * in / out), clamped.
    scale = in_size / out_size
    index = (torch.arange(out_size, device=device, dtype=torch.float32) * scale).floor().long()
    return index.clamp(max=in_size - 1)
