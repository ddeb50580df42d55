"""The custom ops' Triton kernels compiled inside ``compile()``, for every size of the range.

A kernel's block sizes make a few variants (``custom_ops.fused.kernel_variant``), each compiled by
Triton at its first launch (about a second each). Launching each variant once here moves that cost into ``compile()``, so that no
image of a new size compiles anything. Shared by the backends that launch the kernels from PyTorch
(inductor, eager on CUDA); the tensorrt backend compiles its kernels into the engine.
"""

import logging
import time

import torch
from torch import nn

from ..spec import SIZE_MULTIPLE, CompileSpec

logger = logging.getLogger(__name__)


def feature_sizes(spec: CompileSpec, stride: int) -> list[tuple[int, int]]:
    """(height, width) feature maps, after the backbone's ``stride``, that together take every height
    and every width of ``spec``'s padded range: the two lists side by side, the shorter one held at its
    last size."""
    (_, low_h, low_w), _, (_, high_h, high_w) = spec.padded_range
    heights = [size // stride for size in range(low_h, high_h + 1, SIZE_MULTIPLE)]
    widths = [size // stride for size in range(low_w, high_w + 1, SIZE_MULTIPLE)]
    count = max(len(heights), len(widths))
    return [(heights[min(i, len(heights) - 1)], widths[min(i, len(widths) - 1)]) for i in range(count)]


def variant_sizes(spec: CompileSpec, stride: int, num_pos_feats: int) -> list[tuple[int, int]]:
    """One (height, width) feature map per kernel variant (``kernel_variant``) that ``spec``'s range
    reaches, with ``num_pos_feats`` position features, after the backbone's ``stride``."""
    from anchordetr_trt.custom_ops.fused import kernel_variant

    sizes = feature_sizes(spec, stride)
    return list({kernel_variant(*size, num_pos_feats): size for size in sizes}.values())


def warm_kernels(model: nn.Module, spec: CompileSpec) -> None:
    """Run ``model``'s transformer eagerly on batch-1 zero features, once per kernel variant that the
    heights and widths of ``spec``'s range reach (``variant_sizes``), and compile rcda_aggregate's
    kernel for both of its query blocks at each of those widths (``rcda_aggregate.warm``) and
    self_attention's for both of its (``self_attention.warm``). A variant depends on a feature map's
    height and width alone, never on the number of rows (``custom_ops._common.row_tile``), except
    those two ops' query blocks, which depend on the batch, the map and the GPU too; the backbone
    (cuDNN) is not run. Variants already compiled, or in Triton's cache, cost a lookup. Nothing to do
    off CUDA (no Triton kernel runs there)."""
    from anchordetr_trt.custom_ops import rcda_aggregate, self_attention

    if spec.device.type != "cuda":
        return
    start = time.perf_counter()
    config = model.config
    stride, head_dim = config.stride, config.hidden_dim // config.num_heads
    sizes = variant_sizes(spec, stride, config.hidden_dim)
    with torch.no_grad():
        for height, width in sizes:
            # Zeros, not random values: the user's random number generators stay as they were.
            features = torch.zeros(
                1, model.backbone.num_channels, height, width, device=spec.device, dtype=spec.dtype
            )
            mask = torch.zeros(1, height * stride, width * stride, dtype=torch.bool, device=spec.device)
            model.transformer.decode(
                model.encode(features.contiguous(memory_format=torch.channels_last), mask)
            )
            rcda_aggregate.warm(width, config.num_heads, head_dim, spec.dtype, spec.device)
        self_attention.warm(config.num_heads, head_dim, spec.dtype, spec.device)
    logger.info(
        "compile: the custom ops' kernels warmed for %d feature sizes (%s..%s) in %.1f s",
        len(sizes),
        sizes[0],
        sizes[-1],
        time.perf_counter() - start,
    )
