"""``anchordetr_inductor::four_channels``: the images as the inductor backend's stem reads them,
[B, 3, H, W] -> [B, 4, H, W] channels_last with a zero fourth channel, in one Triton kernel.

An op of the inductor backend alone (no TensorRT plugin: TensorRT lays out its input itself). Inductor
compiles the same padding, fused with the view its compiled function takes the images in
([B, 3, H/32, 32, W/32, 32]), into a kernel whose indices divide by the symbolic sizes at each element:
82.1 us at batch 8 and 800x800 on an H100 for 72 MB (results/h100/ab_stem_input_old.json). This kernel
walks each image's pixels in blocks, reads the three planes and writes whole pixels of 4 channels,
with no division.
"""

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import _common, reference

_OP = "four_channels"
BLOCK_P = 1024  # pixels per program
NUM_WARPS = 4


@triton.jit
def four_channels_kernel(images_ptr, out_ptr, pixels, BLOCK_P: tl.constexpr):
    """Grid (cdiv(pixels, BLOCK_P), B). images [B, 3, pixels] -> out [B, pixels, 4], channel 3 zero.
    ``pixels`` (H * W, a multiple of 1024 for sizes that are multiples of 32) is specialized as
    divisible by 16 for every size of the backend's range: one build serves it."""
    image = tl.program_id(1).to(tl.int64)
    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    channel = tl.arange(0, 4)
    in_image = (p < pixels)[:, None]
    values = tl.load(
        images_ptr + (image * 3 + channel[None, :]) * pixels + p[:, None],
        mask=in_image & (channel < 3)[None, :],
        other=0.0,
    )
    tl.store(out_ptr + (image * pixels + p[:, None]) * 4 + channel[None, :], values, mask=in_image)


def check_inputs(images: Tensor) -> None:
    """Raise InputError unless ``images`` is a float [B, 3, H, W] tensor."""
    _common.check_tensor(_OP, "images", images, 4, _common.FLOAT_DTYPES, "[B, 3, H, W]")
    _common.check_size(_OP, "images.shape[1] (channels)", images.shape[1], 3)


def _empty_output(images: Tensor) -> Tensor:
    """[B, 4, H, W] channels_last for images [B, 3, H, W], uninitialized. Allocated channels_last
    directly: new_empty(...).contiguous(channels_last) would copy the uninitialized NCHW buffer, a
    second pass over the output (59.5 us at batch 8 on an H100,
    results/h100/ab_stem_copied_output_new.json)."""
    return torch.empty(
        (images.shape[0], 4, *images.shape[2:]),
        dtype=images.dtype,
        device=images.device,
        memory_format=torch.channels_last,
    )


def four_channels_triton(images: Tensor) -> Tensor:
    """``reference.four_channels`` by the kernel, on CUDA (or the CPU under TRITON_INTERPRET=1);
    images of any strides (copied contiguous first where they are not)."""
    check_inputs(images)
    batch, _, height, width = images.shape
    out = _empty_output(images)
    if out.numel() == 0:
        return out
    pixels = height * width
    with _common.launch_context(_OP, four_channels_kernel, images):
        four_channels_kernel[(triton.cdiv(pixels, BLOCK_P), batch)](
            images.contiguous(), out, pixels, BLOCK_P=BLOCK_P, num_warps=NUM_WARPS
        )
    return out


@torch.library.custom_op("anchordetr_inductor::four_channels", mutates_args=())
def four_channels(images: Tensor) -> Tensor:
    """images [B, 3, H, W] -> [B, 4, H, W] channels_last, the fourth channel zero. PyTorch off CUDA."""
    check_inputs(images)
    return reference.four_channels(images)


@four_channels.register_kernel("cuda")
def _(images: Tensor) -> Tensor:
    return four_channels_triton(images)


@four_channels.register_fake
def _(images: Tensor) -> Tensor:
    check_inputs(images)
    return _empty_output(images)
