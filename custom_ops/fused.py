"""The fused ops as plain functions with the signatures of ``reference``, each calling its
``torch.ops.anchordetr`` op: a Triton kernel on CUDA, the reference elsewhere, and one graph node
under ``torch.export`` and ``torch.compile``.

Each op lives in a module of its own (kernel, launch config, launcher ``<op>_triton``, registration
with fake implementation), which registers the op when imported below.
"""

import torch
from torch import Tensor

# Each import registers its op.
from . import add_bias_transpose as _add_bias_transpose_module
from . import four_channels as _four_channels_module
from . import key_means as _key_means_module
from . import layer_norm as _layer_norm_module
from . import mask2pos as _mask2pos_module
from . import masked_softmax as _masked_softmax_module
from . import rcda_aggregate as _rcda_aggregate_module
from . import self_attention as _self_attention_module

_ops = torch.ops.anchordetr


def four_channels(x: Tensor) -> Tensor:
    return torch.ops.anchordetr_inductor.four_channels(x)


def masked_softmax(scores: Tensor, key_padding_mask: Tensor) -> Tensor:
    return _ops.masked_softmax(scores, key_padding_mask)


def layer_norm(x: Tensor, weight: Tensor, bias: Tensor, eps: float, residual: Tensor | None = None) -> Tensor:
    return _ops.layer_norm(x, weight, bias, eps, residual)


def add_bias_transpose(x: Tensor, bias: Tensor, num_heads: int, scale: float) -> Tensor:
    return _ops.add_bias_transpose(x, bias, num_heads, scale)


def key_means(src: Tensor, posemb_row: Tensor, posemb_col: Tensor) -> tuple[Tensor, Tensor]:
    return _ops.key_means(src, posemb_row, posemb_col)


def mask2pos(mask: Tensor) -> tuple[Tensor, Tensor]:
    return _ops.mask2pos(mask)


def mask2posemb(mask: Tensor, num_pos_feats: int, temperature: float) -> tuple[Tensor, Tensor]:
    return _ops.mask2posemb(mask, num_pos_feats, temperature)


def rcda_aggregate(
    queries: Tensor,
    row_term: Tensor,
    col_term: Tensor,
    k_col: Tensor,
    mask_col: Tensor,
    k_row: Tensor,
    mask_row: Tensor,
    values: Tensor,
    value_channel: int,
    scale: float,
) -> Tensor:
    return _ops.rcda_aggregate(
        queries, row_term, col_term, k_col, mask_col, k_row, mask_row, values, value_channel, scale
    )


def self_attention(packed: Tensor, position_terms: Tensor, num_heads: int, scale: float) -> Tensor:
    return _ops.self_attention(packed, position_terms, num_heads, scale)


def kernel_variant(height: int, width: int, num_pos_feats: int) -> tuple:
    """What picks the model's kernel variants at a ``height`` x ``width`` feature map with
    ``num_pos_feats`` position features (the model's width): feature maps with one key run the same
    compiled kernels (rcda_aggregate's width blocks, mask2posemb's blocks; the other ops' blocks
    depend on the channels alone or on nothing, rcda_aggregate's height is a loop bound) but for
    rcda_aggregate's query block, which the batch and the GPU pick too: the warm-up compiles both
    (``rcda_aggregate.warm``)."""
    return (
        _rcda_aggregate_module.width_blocks(width),
        tuple(sorted(_mask2pos_module.mask2posemb_launch_config(1, height, width, num_pos_feats)[1].items())),
    )


def compiled_variants() -> int:
    """Kernel variants Triton has compiled, or loaded from its cache, in this process, over the custom
    ops' kernels (0 under the interpreter): what ``kernel_variant`` and the backends' warm-up must keep
    from growing after ``compile()``."""
    kernels = (
        _masked_softmax_module.masked_softmax_kernel,
        _layer_norm_module.layer_norm_kernel,
        _add_bias_transpose_module.add_bias_transpose_kernel,
        _mask2pos_module.mask2pos_kernel,
        _mask2pos_module.mask2posemb_kernel,
        _rcda_aggregate_module.rcda_aggregate_kernel,
        _key_means_module.key_means_kernel,
        _self_attention_module.self_attention_kernel,
        _four_channels_module.four_channels_kernel,
    )
    # device_caches[device][0] is the kernel cache in Triton 3.x (3.6 on the GPU machine, 3.8 here).
    return sum(
        len(caches[0]) for kernel in kernels for caches in getattr(kernel, "device_caches", {}).values()
    )
