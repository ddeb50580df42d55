"""The model rewritten for the Inductor backend: cuDNN's fused convolution epilogues, and no op whose
tracing guards on the batch size.

- Epilogues. Inductor runs a convolution through cuDNN and its epilogue (bias, residual add, ReLU) as
  a separate Triton kernel, one more pass over the largest activations of the model; cuDNN applies
  conv + bias + ReLU and conv + bias + residual + ReLU in the convolution itself.
- Layouts. The stem reads images padded to 4 channels, as cuDNN's first-layer kernels do, and the
  input projection's GroupNorm works in the channels_last order of its input (``Stem``, ``GroupNorm``).
- The FFN's first linear layer and its ReLU in one cuBLASLt call (bias and ReLU in the GEMM's
  epilogue). Inductor splits a linear layer whose output only feeds pointwise ops into a matmul and
  a Triton kernel for bias + ReLU: one more pass over the encoder's largest activation (6 kernels
  per call).
- Biases. A convolution's bias added on its own is one more pass over its output: the downsampling
  shortcut's bias joins the residual convolution's, and the input projection's is added in the graph,
  where Inductor fuses it into the GroupNorm.
- The prediction heads' products on the tensor cores. The heads stay float32 (``set_precision``); at
  float16 their linear layers (``HalfProductLinear``, ``rewrite_heads``) round their inputs and
  weights to float16 (the 10 bits of mantissa that TF32 keeps, with a 5-bit exponent) and accumulate
  and return float32: one tensor-core GEMM each where cuBLAS ran float32 ones on the CUDA cores.
- The decoder's queries read, not computed. They depend on the weights only (``Transformer.decoder_queries``:
  the anchor points' sine embeddings through two MLPs, and their projections for every layer);
  ``PrecomputedQueries`` computes them once, and the compiled function takes them as inputs, as it
  takes the weights.
- One graph for every batch size. Tracing ``aten.convolution`` asks cuDNN's backend selection about
  the batch size, and ``F.group_norm`` checks that there is more than one value per channel (torch
  2.11): each puts a guard ``batch > 1`` on the graph, so batch 1 would compile a second graph
  (tens of seconds). The convolution ops below give their output size by arithmetic, always
  channels_last as cuDNN returns it for channels_last inputs (the real ops return exactly that
  layout), and the input projection's GroupNorm is written out with ``var_mean``.

The ops live in their own namespace: they serve the Inductor backend only (TensorRT fuses these
epilogues by itself). Their CPU implementations are plain PyTorch, for tests.
"""

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.resnet import Bottleneck

from ..custom_ops import ops, reference
from ..transformer import FFN, DecoderQueries

CHANNELS_LAST = torch.channels_last


@torch.library.custom_op("anchordetr_cudnn::conv", mutates_args=())
def conv(x: Tensor, weight: Tensor, stride: list[int], padding: list[int], dilation: list[int]) -> Tensor:
    """conv2d(x), no bias: a bias added here would be one more pass over the output, which the graph
    fuses into the next kernel, or the next convolution's epilogue takes."""
    return F.conv2d(x, weight, None, stride, padding, dilation).contiguous(memory_format=CHANNELS_LAST)


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


@conv.register_fake
def _(x, weight, stride, padding, dilation):
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
    """``conv`` (with bias) as the ``conv`` op and the bias added in the graph, where Inductor fuses
    it into the next kernel; ``weight`` stays reachable as on ``nn.Conv2d``."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.conv = conv

    @property
    def weight(self) -> Tensor:
        return self.conv.weight

    def forward(self, x: Tensor) -> Tensor:
        weight, bias, stride, padding, dilation = _conv_args(self.conv)
        return conv(x, weight, stride, padding, dilation) + bias[:, None, None]


class ConvReLU(Conv):
    """relu(``conv``(x)) in one cuDNN call."""

    def forward(self, x: Tensor) -> Tensor:
        return conv_bias_relu(x, *_conv_args(self.conv))


class Stem(Conv):
    """The stem, relu(``conv``(images)), on images and weight padded with a zero fourth channel: cuDNN's
    first-layer kernels read pixels of 4 channels and pad 3-channel inputs and weights themselves, in
    two more kernels per call; here the images' padding is their copy to channels_last, on CUDA in
    one kernel (``custom_ops.four_channels``)."""

    def forward(self, x: Tensor) -> Tensor:
        weight, bias, stride, padding, dilation = _conv_args(self.conv)
        images = ops(None, x).four_channels(x)
        return conv_bias_relu(images, reference.four_channels(weight), bias, stride, padding, dilation)


class FusedBottleneck(nn.Module):
    """A ResNet bottleneck whose batch norms are folded: three convolutions, two of them with ReLU
    and the last with the residual add and ReLU in its epilogue. A downsampling shortcut runs without
    its bias, which joins the last convolution's (relu(conv3 + b3 + down + b_down)), so that no
    kernel adds a bias to an activation; the two biases are summed at each call (a vector of a few
    thousand values), so that loading new weights into the convolutions stays correct."""

    def __init__(self, block: Bottleneck):
        super().__init__()
        self.conv1, self.conv2, self.conv3 = ConvReLU(block.conv1), ConvReLU(block.conv2), block.conv3
        self.downsample = None if block.downsample is None else block.downsample[0]

    def forward(self, x: Tensor) -> Tensor:
        weight, bias, stride, padding, dilation = _conv_args(self.conv3)
        identity = x
        if self.downsample is not None:
            down_weight, down_bias, down_stride, down_padding, down_dilation = _conv_args(self.downsample)
            identity = conv(x, down_weight, down_stride, down_padding, down_dilation)
            bias = bias + down_bias
        return conv_bias_add_relu(
            self.conv2(self.conv1(x)), weight, bias, identity, stride, padding, dilation
        )


class GroupNorm(nn.Module):
    """``norm`` (an nn.GroupNorm) without ``F.group_norm``, on channels_last x [B, C, H, W]: statistics
    in float32, computed and applied in the memory's order, [B, H * W, groups, C / groups]. Grouped as
    [B, groups, C / groups * H * W] instead, the graph transposes the map twice around the norm. The
    output is channels_last too, so that the encoder's [B, H, W, C] view of it is free."""

    def __init__(self, norm: nn.GroupNorm):
        super().__init__()
        self.norm = norm

    def forward(self, x: Tensor) -> Tensor:
        batch, channels, height, width = x.shape
        groups = self.norm.num_groups
        pixels = x.permute(0, 2, 3, 1).float().reshape(batch, height * width, groups, channels // groups)
        var, mean = torch.var_mean(pixels, dim=(1, 3), keepdim=True, correction=0)
        normed = ((pixels - mean) * torch.rsqrt(var + self.norm.eps)).reshape(batch, height, width, channels)
        return (normed * self.norm.weight + self.norm.bias).to(x.dtype).permute(0, 3, 1, 2)


class FusedFFN(nn.Module):
    """``ffn`` (an FFN) with relu(linear1(x)) as one ``torch._addmm_activation``, which Inductor runs as
    it is (cuBLASLt's bias + ReLU epilogue) instead of splitting it."""

    def __init__(self, ffn: FFN):
        super().__init__()
        self.ffn = ffn

    def forward(self, x: Tensor) -> Tensor:
        ffn, rows = self.ffn, x.reshape(-1, x.shape[-1])
        hidden = torch._addmm_activation(ffn.linear1.bias, rows, ffn.linear1.weight.t())
        return ffn.norm2(x, ffn.linear2(hidden).view(x.shape))


class HalfProductLinear(nn.Linear):
    """A float32 ``nn.Linear`` (its parameters shared) whose product runs in float16: x [..., in] and
    the weight rounded to float16, the products accumulated in float32, the float32 bias added;
    returns [..., out] float32. The weight's float16 copy is made once, at construction: build it
    after the model's last cast or change of weights. x must lie in float16's range."""

    # The float16 copy's rows are padded with zeros to a multiple of ALIGN, and the product's extra
    # columns dropped: cuBLAS ran the 91-class and 4-coordinate products in CUTLASS kernels built for
    # unaligned operands (align1, align2), the class head the slowest of the four heads' GEMMs.
    ALIGN = 8

    def __init__(self, linear: nn.Linear):
        super().__init__(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
        self.weight, self.bias = linear.weight, linear.bias
        rows = -(-linear.out_features // self.ALIGN) * self.ALIGN
        weight16 = F.pad(linear.weight.detach().to(torch.float16), (0, 0, 0, rows - linear.out_features))
        self.register_buffer("weight16", weight16, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        rows = x.reshape(-1, x.shape[-1]).to(torch.float16)
        if rows.is_cuda:
            out = torch.mm(rows, self.weight16.t(), out_dtype=torch.float32)
        else:  # in eager, the same products (two float16s multiply exactly in float32): tests on the CPU
            out = rows.float() @ self.weight16.float().t()
        out = out[:, : self.out_features]
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features)


def rewrite_heads(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """For a float16 model (``dtype``, after ``set_precision``), every linear layer of the prediction
    heads as a ``HalfProductLinear``, layers shared between decoder layers still shared; other
    precisions keep float32 products (bfloat16 keeps 7 bits of mantissa where TF32 and float16 keep
    10). The heads' inputs (the decoder's float16 output, the box MLP's hidden activations) must lie in
    float16's range, as every activation of a float16 model does. Works in place."""
    if dtype != torch.float16:
        return model
    transformer = model.transformer
    groups = [transformer.class_embed, *(mlp.layers for mlp in transformer.bbox_embed)]
    linears = {id(linear): linear for layers in groups for linear in layers}
    half = {key: HalfProductLinear(linear) for key, linear in linears.items() if type(linear) is nn.Linear}
    for layers in groups:
        for i, linear in enumerate(layers):
            layers[i] = half.get(id(linear), linear)
    return model


def rewrite_for_inductor(model: nn.Module) -> nn.Module:
    """Rewrite an AnchorDETR whose frozen batch norms were folded (``fold_frozen_batchnorm``): every
    convolution through the ops above (the ResNet trunk with its epilogues fused, and the input
    projection), the input projection's GroupNorm as ``GroupNorm`` and every FFN as ``FusedFFN``.
    Works in place."""
    body = model.backbone.body
    if isinstance(body.conv1, Stem):
        raise ValueError("the model is already rewritten for Inductor: rewrite a model only once")
    if not isinstance(body.bn1, nn.Identity):
        raise ValueError("fold the frozen batch norms first (anchordetr_trt.fold.fold_frozen_batchnorm)")
    body.conv1, body.relu = Stem(body.conv1), nn.Identity()
    for layer in (body.layer1, body.layer2, body.layer3, body.layer4):
        for i, block in enumerate(layer):
            layer[i] = FusedBottleneck(block)
    projection = model.input_proj[0]
    projection[0], projection[1] = Conv(projection[0]), GroupNorm(projection[1])
    for layer in (*model.transformer.encoder_layers, *model.transformer.decoder_layers):
        layer.ffn = FusedFFN(layer.ffn)
    return model


class PrecomputedQueries(nn.Module):
    """``transformer.decoder_queries()`` computed once (in the model's dtypes, outside any autocast),
    kept as non-persistent buffers: ``forward()`` returns them. They follow the weights they were
    computed from: ``precompute_queries`` again after a change of weights; ``set_precision`` drops
    them."""

    def __init__(self, queries: DecoderQueries):
        super().__init__()
        # The fields that hold a tensor per layer, and how many: each is kept as buffers <field>_<i>.
        self.counts = {
            field: len(value) for field, value in queries._asdict().items() if isinstance(value, list)
        }
        for name, value in self._named(queries):
            self.register_buffer(name, value.contiguous(), persistent=False)

    @staticmethod
    def _named(queries: DecoderQueries) -> list[tuple[str, Tensor]]:
        named = []
        for field, value in queries._asdict().items():
            if isinstance(value, list):
                named += [(f"{field}_{i}", layer_value) for i, layer_value in enumerate(value)]
            else:
                named.append((field, value))
        return named

    def update(self, queries: DecoderQueries) -> None:
        """Write ``queries`` into the buffers, in place: CUDA graphs captured on them read the new values."""
        for name, value in self._named(queries):
            getattr(self, name).copy_(value)

    def forward(self) -> DecoderQueries:
        fields = {field: getattr(self, field) for field in DecoderQueries._fields if field not in self.counts}
        for field, count in self.counts.items():
            fields[field] = [getattr(self, f"{field}_{i}") for i in range(count)]
        return DecoderQueries(**fields)


def precompute_queries(model: nn.Module) -> nn.Module:
    """Compute ``model.transformer``'s decoder queries from its current weights (on their device, in their
    dtypes) into ``transformer.precomputed_queries``: a new ``PrecomputedQueries``, or the existing one
    updated in place. Works in place."""
    transformer = model.transformer
    device = transformer.pattern.weight.device.type
    # Normal tensors even under inference_mode, so that a later update outside it may write them.
    with torch.inference_mode(False), torch.no_grad(), _without_autocast(device):
        queries = transformer.decoder_queries()
        if transformer.precomputed_queries is None:
            transformer.precomputed_queries = PrecomputedQueries(queries)
        else:
            transformer.precomputed_queries.update(queries)
    return model


def _without_autocast(device: str) -> contextlib.AbstractContextManager:
    # torch.autocast refuses device types it does not know (meta), even to switch it off.
    available = torch.amp.is_autocast_available(device)
    return torch.autocast(device, enabled=False) if available else contextlib.nullcontext()
