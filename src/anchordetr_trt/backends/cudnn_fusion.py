"""Convolutions as opaque ops for the Inductor backend: cuDNN's fused epilogues, and output shapes that
do not depend on the batch size.

Two reasons to route every convolution of the model through these ops:

- Epilogues. Inductor runs a convolution through cuDNN and its epilogue (bias, residual add, ReLU) as
  a separate Triton kernel, one more pass over the largest activations of the model; cuDNN applies
  conv + bias + ReLU and conv + bias + residual + ReLU in the convolution itself.
- One graph for every batch size. Tracing ``aten.convolution`` asks cuDNN's backend selection about
  the batch size, which puts a guard ``batch <= 1`` (or ``>= 2``) on the graph, so batch 1 used to
  compile a second graph. These ops give their output size by arithmetic, always channels_last as
  cuDNN returns it for channels_last inputs, and the real ops return exactly that layout.

The ops live in their own namespace: they serve the Inductor backend only (TensorRT fuses these
epilogues by itself). Their CPU implementations are plain PyTorch, for tests.
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.resnet import Bottleneck

CHANNELS_LAST = torch.channels_last


@torch.library.custom_op("anchordetr_cudnn::conv_bias", mutates_args=())
def conv_bias(
    x: Tensor, weight: Tensor, bias: Tensor, stride: list[int], padding: list[int], dilation: list[int]
) -> Tensor:
    """conv2d(x) + bias."""
    return F.conv2d(x, weight, bias, stride, padding, dilation).contiguous(memory_format=CHANNELS_LAST)


@torch.library.custom_op("anchordetr_cudnn::conv_bias_relu", mutates_args=())
def conv_bias_relu(
    x: Tensor, weight: Tensor, bias: Tensor, stride: list[int], padding: list[int], dilation: list[int]
) -> Tensor:
    """relu(conv2d(x) + bias)."""
    if x.is_cuda:
        out = torch.cudnn_convolution_relu(x, weight, bias, stride, padding, dilation, 1)
    else:
        out = F.relu(F.conv2d(x, weight, bias, stride, padding, dilation))
    return out.contiguous(memory_format=CHANNELS_LAST)


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
        out = torch.cudnn_convolution_add_relu(x, weight, residual, 1.0, bias, stride, padding, dilation, 1)
    else:
        out = F.relu(F.conv2d(x, weight, bias, stride, padding, dilation) + residual)
    return out.contiguous(memory_format=CHANNELS_LAST)


def _conv_output(
    x: Tensor, weight: Tensor, stride: list[int], padding: list[int], dilation: list[int]
) -> Tensor:
    sizes = [
        (size + 2 * pad - dil * (kernel - 1) - 1) // step + 1
        for size, kernel, step, pad, dil in zip(x.shape[2:], weight.shape[2:], stride, padding, dilation, strict=True)
    ]  # fmt: skip
    return x.new_empty((x.shape[0], weight.shape[0], *sizes)).contiguous(memory_format=CHANNELS_LAST)


@conv_bias.register_fake
def _(x, weight, bias, stride, padding, dilation):
    return _conv_output(x, weight, stride, padding, dilation)


@conv_bias_relu.register_fake
def _(x, weight, bias, stride, padding, dilation):
    return _conv_output(x, weight, stride, padding, dilation)


@conv_bias_add_relu.register_fake
def _(x, weight, bias, residual, stride, padding, dilation):
    return _conv_output(x, weight, stride, padding, dilation)


def _conv_args(conv: nn.Conv2d) -> tuple:
    if conv.groups != 1 or conv.bias is None or conv.padding_mode != "zeros":
        raise ValueError("the cuDNN convolution ops need an ungrouped, zero-padded convolution with a bias")
    return conv.weight, conv.bias, list(conv.stride), list(conv.padding), list(conv.dilation)


class Conv(nn.Module):
    """``conv`` (with bias) through ``conv_bias``; ``weight`` stays reachable as on ``nn.Conv2d``."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.conv = conv

    @property
    def weight(self) -> Tensor:
        return self.conv.weight

    def forward(self, x: Tensor) -> Tensor:
        return conv_bias(x, *_conv_args(self.conv))


class ConvReLU(Conv):
    """relu(``conv``(x)) in one cuDNN call."""

    def forward(self, x: Tensor) -> Tensor:
        return conv_bias_relu(x, *_conv_args(self.conv))


class FusedBottleneck(nn.Module):
    """A ResNet bottleneck whose batch norms are folded: three convolutions, two of them with ReLU
    and the last with the residual add and ReLU in its epilogue."""

    def __init__(self, block: Bottleneck):
        super().__init__()
        self.conv1, self.conv2, self.conv3 = ConvReLU(block.conv1), ConvReLU(block.conv2), block.conv3
        self.downsample = None if block.downsample is None else Conv(block.downsample[0])

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        weight, bias, stride, padding, dilation = _conv_args(self.conv3)
        return conv_bias_add_relu(
            self.conv2(self.conv1(x)), weight, bias, identity, stride, padding, dilation
        )


def fuse_convolutions(model: nn.Module) -> nn.Module:
    """Route every convolution of an AnchorDETR whose frozen batch norms were folded
    (``fold_frozen_batchnorm``) through the ops above: the ResNet trunk with its epilogues fused, and
    the input projection. Works in place."""
    body = model.backbone.body
    if not isinstance(body.bn1, nn.Identity):
        raise ValueError("fold the frozen batch norms first (anchordetr_trt.fold.fold_frozen_batchnorm)")
    body.conv1, body.relu = ConvReLU(body.conv1), nn.Identity()
    for layer in (body.layer1, body.layer2, body.layer3, body.layer4):
        for i, block in enumerate(layer):
            layer[i] = FusedBottleneck(block)
    projection = model.input_proj[0]
    projection[0] = Conv(projection[0])
    return model
