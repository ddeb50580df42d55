"""ResNet backbone with frozen batch norm, returning the last stage (C5, or DC5 when dilated)."""

from collections import OrderedDict

import torch.nn.functional as F
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
    """Padding mask [B, H, W] -> [B, h, w] by nearest-neighbour sampling, as the reference does."""
    return F.interpolate(mask[None].float(), size=size).bool()[0]
