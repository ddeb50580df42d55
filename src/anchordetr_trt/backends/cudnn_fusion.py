"""Convolution epilogues fused by cuDNN: conv + bias + ReLU, and conv + bias + residual + ReLU.

Inductor runs a convolution through cuDNN and its epilogue (bias, residual add, ReLU) as a separate
Triton kernel, one more pass over the largest activations of the model; cuDNN can apply the epilogue
in the convolution itself. The ops live in their own namespace: they serve the Inductor backend only
(TensorRT fuses these epilogues by itself).
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.resnet import Bottleneck


@torch.library.custom_op("anchordetr_cudnn::conv_bias_relu", mutates_args=())
def conv_bias_relu(
    x: Tensor, weight: Tensor, bias: Tensor, stride: list[int], padding: list[int], dilation: list[int]
) -> Tensor:
    """relu(conv2d(x) + bias)."""
    if x.is_cuda:
        return torch.cudnn_convolution_relu(x, weight, bias, stride, padding, dilation, 1)
    return F.relu(F.conv2d(x, weight, bias, stride, padding, dilation))


@torch.library.custom_op("anchordetr_cudnn::conv_bias_add_relu", mutates_args=())
def conv_bias_add_relu(
    x: Tensor,
    weight: Tensor,
    bias: Tensor,
    residual: Tensor,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
) -> Tensor:
    """relu(conv2d(x) + bias + residual)."""
    if x.is_cuda:
        return torch.cudnn_convolution_add_relu(x, weight, residual, 1.0, bias, stride, padding, dilation, 1)
    return F.relu(F.conv2d(x, weight, bias, stride, padding, dilation) + residual)


@conv_bias_relu.register_fake
def _(x, weight, bias, stride, padding, dilation):
    return F.conv2d(x, weight, bias, stride, padding, dilation)


@conv_bias_add_relu.register_fake
def _(x, weight, bias, residual, stride, padding, dilation):
    return F.conv2d(x, weight, bias, stride, padding, dilation)


def _conv_args(conv: nn.Conv2d) -> tuple:
    if conv.groups != 1 or conv.bias is None or conv.padding_mode != "zeros":
        raise ValueError("cuDNN epilogue fusion needs an ungrouped, zero-padded convolution with a bias")
    return conv.weight, conv.bias, list(conv.stride), list(conv.padding), list(conv.dilation)


class ConvReLU(nn.Module):
    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.conv = conv

    def forward(self, x: Tensor) -> Tensor:
        return conv_bias_relu(x, *_conv_args(self.conv))


class FusedBottleneck(nn.Module):
    """A ResNet bottleneck whose batch norms are folded: three convolutions, two of them with ReLU
    and the last with the residual add and ReLU in its epilogue."""

    def __init__(self, block: Bottleneck):
        super().__init__()
        self.conv1, self.conv2, self.conv3 = ConvReLU(block.conv1), ConvReLU(block.conv2), block.conv3
        self.downsample = block.downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        weight, bias, stride, padding, dilation = _conv_args(self.conv3)
        return conv_bias_add_relu(
            self.conv2(self.conv1(x)), weight, bias, identity, stride, padding, dilation
        )


def fuse_conv_epilogues(body: nn.Sequential) -> nn.Sequential:
    """Rewrite a ResNet trunk whose frozen batch norms were folded (``fold_frozen_batchnorm``) so that
    every conv + ReLU and conv + residual + ReLU is one cuDNN call. Works in place."""
    if not isinstance(body.bn1, nn.Identity):
        raise ValueError("fold the frozen batch norms first (anchordetr_trt.fold.fold_frozen_batchnorm)")
    body.conv1, body.relu = ConvReLU(body.conv1), nn.Identity()
    for layer in (body.layer1, body.layer2, body.layer3, body.layer4):
        for i, block in enumerate(layer):
            layer[i] = FusedBottleneck(block)
    return body
