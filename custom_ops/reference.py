"""Plain PyTorch definitions of the fused ops: the meaning of every kernel, and the CPU path.

Each function here has a Triton twin registered as ``torch.ops.anchordetr.<name>``; tests hold the
kernels to these definitions. Statistics (softmax, norms) are computed in float32 whatever the input
dtype, and the result is returned in the input dtype.
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def four_channels(x: Tensor) -> Tensor:
    """x [N, 3, H, W] (images, or the stem's weight [O, 3, kh, kw]) -> [N, 4, H, W] channels_last, the
    fourth channel zero."""
    return F.pad(x, (0, 0, 0, 0, 0, 1)).contiguous(memory_format=torch.channels_last)


def masked_softmax(scores: Tensor, key_padding_mask: Tensor) -> Tensor:
    """Softmax over the last dim of ``scores`` [B, heads, Lq, Lk], ignoring keys where
    ``key_padding_mask`` [B, Lk] is True. A row whose keys are all padded is all zeros."""
    mask = key_padding_mask[:, None, None, :]
    probs = torch.softmax(scores.float().masked_fill(mask, float("-inf")), dim=-1)
    # A fully padded row is NaN after the softmax and masked everywhere: zero it.
    return probs.masked_fill(mask, 0.0).to(scores.dtype)


def layer_norm(x: Tensor, weight: Tensor, bias: Tensor, eps: float, residual: Tensor | None = None) -> Tensor:
    """LayerNorm over the last dim of ``x`` (or of ``x + residual``), statistics in float32."""
    h = x.float() if residual is None else x.float() + residual.float()
    return F.layer_norm(h, h.shape[-1:], weight.float(), bias.float(), eps).to(x.dtype)


def add_bias_transpose(x: Tensor, bias: Tensor, num_heads: int, scale: float) -> Tensor:
    """``(x + bias) * scale`` split into heads: x [B, L, C] -> [B * num_heads, L, C // num_heads]."""
    batch, length, channels = x.shape
    y = (x + bias) * scale
    return (
        y.view(batch, length, num_heads, channels // num_heads)
        .transpose(1, 2)
        .reshape(-1, length, channels // num_heads)
    )


def key_means(src: Tensor, posemb_row: Tensor, posemb_col: Tensor) -> tuple[Tensor, Tensor]:
    """RCDA's keys of a feature map: src [B, H, W, C] -> (key_row [B, W, C], key_col [B, H, C]) with
    key_row = src's mean over H + posemb_row [B, W, C] and key_col = its mean over W + posemb_col
    [B, H, C], both in src's dtype.

    Rounding: the means and the sums are float32 and rounded to src's dtype once, at the end. Plain
    ``src.mean(1) + posemb_row`` in fp16 rounds twice (the mean, accumulated in float32, to fp16,
    then the sum): about one key in eight differs from the correctly rounded value by one ulp, where
    this is correctly rounded nearly everywhere (random 50 x 50 x 256 maps). Identical in float32.
    """
    # A cast, not mean(dtype=float32): exported to ONNX, that one becomes a 16-bit ReduceMean.
    sums = src.float()
    key_row = sums.mean(1) + posemb_row.float()
    key_col = sums.mean(2) + posemb_col.float()
    return key_row.to(src.dtype), key_col.to(src.dtype)


def mask2pos(mask: Tensor) -> tuple[Tensor, Tensor]:
    """Normalized positions of unpadded rows and columns: mask [B, H, W] (True = padding) ->
    (pos_y [B, H], pos_x [B, W]) float32, (cumulative count - 0.5) / count, read off the first
    column and the first row (padding is at the bottom and right)."""
    not_mask = ~mask
    y = not_mask[:, :, 0].cumsum(1, dtype=torch.float32)
    x = not_mask[:, 0, :].cumsum(1, dtype=torch.float32)
    # An image with no valid pixel would divide by zero; count it as one so nothing is NaN.
    return (y - 0.5) / y[:, -1:].clamp(min=1.0), (x - 0.5) / x[:, -1:].clamp(min=1.0)


def pos2posemb1d(pos: Tensor, num_pos_feats: int = 256, temperature: float = 10000.0) -> Tensor:
    """Sine embedding of scalar positions in [0, 1]: pos [...] -> [..., num_pos_feats] float32,
    sin on even features and cos on odd ones, frequency pairs shared."""
    dim_t = torch.arange(num_pos_feats, dtype=torch.float32, device=pos.device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_pos_feats)
    angles = pos.float()[..., None] * (2 * math.pi) / dim_t
    return torch.stack((angles[..., 0::2].sin(), angles[..., 1::2].cos()), dim=-1).flatten(-2)


def mask2posemb(mask: Tensor, num_pos_feats: int, temperature: float) -> tuple[Tensor, Tensor]:
    """mask2pos followed by pos2posemb1d: mask [B, H, W] -> ([B, H, F], [B, W, F]) float32."""
    pos_y, pos_x = mask2pos(mask)
    return pos2posemb1d(pos_y, num_pos_feats, temperature), pos2posemb1d(pos_x, num_pos_feats, temperature)


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
    """Row-column decoupled attention from its projections, heads merged.

    queries [B, *S, Cq] (S: Lq, or the Hq x Wq map of the encoder's queries) hold the row queries in
    channels [0, C) and the column queries in [C, 2C) (C = heads * D); q_row = (queries[..., :C] +
    row_term) * scale and q_col = (queries[..., C:2C] + col_term) * scale, computed in float32 and
    rounded to the queries' dtype, with row_term and col_term broadcastable to [B, *S, C]. k_col
    [N, H, D] and k_row [N, W, D] (N = B * heads), mask_col [B, H] and mask_row [B, W] bool (True =
    padded row or column), values [B, H, W, Cv], whose channels [value_channel, value_channel + C) are
    the values. out[b, q, head] = sum_h sum_w probs_col[q, h] * probs_row[q, w] * value[b, h, w, head],
    probs_col the masked softmax of q_col . k_col over rows h, probs_row that of q_row . k_row over
    columns w (scores in float32, probabilities in the values' dtype). Returns [B, *S, C].
    """
    batch, heads, head_dim = queries.shape[0], k_col.shape[0] // queries.shape[0], k_col.shape[2]
    channels = heads * head_dim

    def projected(start: int, term: Tensor) -> Tensor:  # [B, *S, C] -> [N, Lq, D]
        x = ((queries[..., start : start + channels].float() + term.float()) * scale).to(queries.dtype)
        return x.flatten(1, -2).unflatten(-1, (heads, head_dim)).transpose(1, 2).flatten(0, 1)

    value = values[..., value_channel : value_channel + channels].unflatten(-1, (heads, head_dim))
    value = value.permute(0, 3, 1, 2, 4).flatten(0, 1)  # [N, H, W, D]
    out = _aggregate(
        projected(channels, col_term), k_col, mask_col, projected(0, row_term), k_row, mask_row, value
    )
    return out.unflatten(0, (batch, heads)).transpose(1, 2).flatten(2).unflatten(1, queries.shape[1:-1])


def self_attention(packed: Tensor, position_terms: Tensor, num_heads: int, scale: float) -> Tensor:
    """Multi-head self-attention from its packed projection, heads merged.

    packed [B, L, 3C] holds the projected queries, keys and values (C = heads * D); position_terms
    [1 or B, L, 2C] are added to the queries and keys. Each head's scaled dot-product attention
    (``F.scaled_dot_product_attention`` with ``scale``) over its L tokens; returns [B, L, C].
    """
    batch, length, channels = packed.shape[0], packed.shape[1], packed.shape[2] // 3
    x = packed + F.pad(position_terms, (0, channels))
    # The heads copied contiguous ([3, B, heads, L, D]) as the model did before the op: views of x made
    # Inductor guard batch > 1 (``attention.split_heads``).
    heads = (
        x.unflatten(-1, (3, num_heads, -1))
        .permute(2, 0, 3, 1, 4)
        .clone(memory_format=torch.contiguous_format)
    )
    q, k, v = heads.unbind(0)
    out = F.scaled_dot_product_attention(q, k, v, scale=scale)  # [B, heads, L, D]
    return out.transpose(1, 2).reshape(batch, length, channels)


def _aggregate(
    q_col: Tensor,
    k_col: Tensor,
    mask_col: Tensor,
    q_row: Tensor,
    k_row: Tensor,
    mask_row: Tensor,
    value: Tensor,
) -> Tensor:
    """``rcda_aggregate`` over heads: q_col, q_row [N, Lq, D], k_col [N, H, D], k_row [N, W, D], value
    [N, H, W, D] -> [N, Lq, D]."""
    probs_col = _key_probabilities(q_col, k_col, mask_col).to(value.dtype)
    probs_row = _key_probabilities(q_row, k_row, mask_row).to(value.dtype)
    # Batched over (N, W) and (N, Lq) so that no reshape splits a symbolic product (export-friendly).
    per_column = torch.matmul(probs_col[:, None], value.transpose(1, 2))  # [N, W, Lq, D]
    out = torch.matmul(probs_row[:, :, None], per_column.transpose(1, 2))  # [N, Lq, 1, D]
    return out.squeeze(2)


def _key_probabilities(query: Tensor, key: Tensor, key_padding_mask: Tensor) -> Tensor:
    """Masked softmax of query [N, Lq, D] . key [N, L, D] over L, float32: [N, Lq, L] (mask [B, L])."""
    scores = torch.bmm(query.float(), key.float().transpose(1, 2))
    return masked_softmax(scores.unflatten(0, (key_padding_mask.shape[0], -1)), key_padding_mask).flatten(
        0, 1
    )
