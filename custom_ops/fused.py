"""The fused ops as plain functions with the signatures of ``reference``, each calling its
``torch.ops.anchordetr`` op: a Triton kernel on CUDA, the reference elsewhere, and one graph node
under ``torch.export`` and ``torch.compile``.

Each op lives in a module of its own (kernel, launch config, launcher ``<op>_triton``, registration
with fake implementation), which registers the op when imported below.
"""

import torch
from torch import Tensor

from . import add_bias_transpose as _add_bias_transpose_module  # noqa: F401 (registers the op)
from . import layer_norm as _layer_norm_module  # noqa: F401
from . import mask2pos as _mask2pos_module  # noqa: F401
from . import masked_softmax as _masked_softmax_module  # noqa: F401
from . import rcda_aggregate as _rcda_aggregate_module  # noqa: F401

_ops = torch.ops.anchordetr


def masked_softmax(scores: Tensor, key_padding_mask: Tensor) -> Tensor:
    return _ops.masked_softmax(scores, key_padding_mask)


def layer_norm(x: Tensor, weight: Tensor, bias: Tensor, eps: float, residual: Tensor | None = None) -> Tensor:
    return _ops.layer_norm(x, weight, bias, eps, residual)


def add_bias_transpose(x: Tensor, bias: Tensor, num_heads: int, scale: float) -> Tensor:
    return _ops.add_bias_transpose(x, bias, num_heads, scale)


def mask2pos(mask: Tensor) -> tuple[Tensor, Tensor]:
    return _ops.mask2pos(mask)


def mask2posemb(mask: Tensor, num_pos_feats: int, temperature: float) -> tuple[Tensor, Tensor]:
    return _ops.mask2posemb(mask, num_pos_feats, temperature)


def rcda_aggregate(
    probs_col: Tensor, q_row: Tensor, k_row: Tensor, mask_row: Tensor, value: Tensor
) -> Tensor:
    return _ops.rcda_aggregate(probs_col, q_row, k_row, mask_row, value)
