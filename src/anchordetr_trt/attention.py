"""Attention modules with the official parameter layout (``in_proj_weight``, ``in_proj_bias``, ``out_proj``)."""

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anchordetr_trt.custom_ops import ops


class _ProjectedAttention(nn.Module):
    """Packed input projections: ``num_inputs`` chunks of ``in_proj_weight``, heads of ``head_dim``."""

    def __init__(self, embed_dim: int, num_heads: int, num_inputs: int):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(num_inputs * embed_dim, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(num_inputs * embed_dim))
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        self.fused_ops: bool | None = None  # see AnchorDETR.set_fused_ops
        nn.init.xavier_uniform_(self.in_proj_weight)

    def in_proj(self, index: int) -> tuple[Tensor, Tensor]:
        """(weight [C, C], bias [C]) of input projection ``index``."""
        chunk = slice(index * self.embed_dim, (index + 1) * self.embed_dim)
        return self.in_proj_weight[chunk], self.in_proj_bias[chunk]

    def project(self, x: Tensor, index: int) -> Tensor:
        """Input projection ``index`` of x [B, L, C], split into heads: [B * heads, L, head_dim]."""
        weight, bias = self.in_proj(index)
        return ops(self.fused_ops, x).add_bias_transpose(F.linear(x, weight), bias, self.num_heads, 1.0)


class MultiheadAttention(_ProjectedAttention):
    """Multi-head self-attention (the decoder's), batch first: [B, L, C]."""

    def __init__(self, embed_dim: int, num_heads: int):
        super().__init__(embed_dim, num_heads, num_inputs=3)

    def position_weight(self) -> Tensor:
        """[2C, C]: the query and key projections' weight, whose product with pos ``forward`` takes."""
        return self.in_proj_weight[: 2 * self.embed_dim]

    def forward(self, x: Tensor, position_terms: Tensor) -> Tensor:
        """Self-attention of x [B, L, C] whose queries and keys are x + pos, values x, given
        position_terms [1 or B, L, 2C] = F.linear(pos, position_weight()) (``project_each``). The
        projections being affine, x is projected for all three in one GEMM; the terms, the heads'
        split and merge happen in the op, which reads the GEMM's output in place."""
        packed = F.linear(x, self.in_proj_weight, self.in_proj_bias)  # [B, L, 3C]
        scale = 1 / math.sqrt(self.head_dim)  # scaled_dot_product_attention's default, to the bit
        out = ops(self.fused_ops, x).self_attention(packed, position_terms, self.num_heads, scale)
        return self.out_proj(out)


class RowColumnDecoupledAttention(_ProjectedAttention):
    """Row-column decoupled attention (RCDA, Anchor DETR Sec. 3.3).

    The 2-d key map is replaced by a row key (one vector per column x) and a column key (one per row
    y); a query attends to columns and to rows separately, and the value at (y, x) is weighted by the
    product of the two probabilities. The official keys are the projected key maps averaged over the
    other axis; since the projection is affine, callers pass the averages before projection.
    """

    def __init__(self, embed_dim: int, num_heads: int):
        super().__init__(embed_dim, num_heads, num_inputs=5)

    def position_weights(self) -> tuple[Tensor, Tensor]:
        """[C, C] each: the row and column query projections' weights, whose products with the row and
        column position embeddings ``forward`` and ``attend_map`` take as row_term and col_term."""
        return self.in_proj(0)[0], self.in_proj(1)[0]

    def forward(
        self,
        x: Tensor,
        row_term: Tensor,
        col_term: Tensor,
        keys: "ProjectedKeys",
        mask_row: Tensor,
        mask_col: Tensor,
    ) -> Tensor:
        """The decoder's cross-attention of x [B, Lq, C], whose row queries are x + pos_row and column
        queries x + pos_col, given row_term and col_term [1 or B, Lq, C], the products of pos_row and
        pos_col with ``position_weights()`` (``project_each``); keys and values projected by
        ``project_keys``; mask_row [B, W], mask_col [B, H] (True = padding). Returns [B, Lq, C]."""
        dim = self.embed_dim
        packed = F.linear(x, self.in_proj_weight[: 2 * dim], self.in_proj_bias[: 2 * dim])  # [B, Lq, 2C]
        # The position terms, the scale, both softmaxes and the heads' split and merge happen in the
        # op, which reads packed and the values where the GEMMs left them: see rcda_aggregate.
        out = ops(self.fused_ops, x).rcda_aggregate(
            packed,
            row_term,
            col_term,
            keys.col,
            mask_col,
            keys.row,
            mask_row,
            keys.values,
            keys.value_channel,
            self.scale,
        )
        return self.out_proj(out)

    def attend_map(
        self,
        src: Tensor,
        row_term: Tensor,
        col_term: Tensor,
        key_row: Tensor,
        key_col: Tensor,
        mask_row: Tensor,
        mask_col: Tensor,
    ) -> Tensor:
        """The encoder's self-attention over a map src [B, H, W, C], whose row queries are src +
        posemb_row (per column), column queries src + posemb_col (per row) and values src, given
        row_term [B, 1, W, C] and col_term [B, H, 1, C], the products of posemb_row and posemb_col
        with ``position_weights()`` (``project_each``); key_row [B, W, C], key_col [B, H, C], masks
        as in ``forward``; returns [B, H, W, C]. The projections being affine, src is projected for
        both queries in one GEMM, and the embeddings' terms are added where they broadcast, in the
        op: one read of the map instead of two sums and two projections."""
        dim = self.embed_dim
        # The row and column query projections are chunks 0 and 1 of in_proj, the value's chunk 4: two
        # GEMMs on views of the weights (one on their concatenation would copy them at every call).
        queries = F.linear(src, self.in_proj_weight[: 2 * dim], self.in_proj_bias[: 2 * dim])  # [B, H, W, 2C]
        values = F.linear(src, self.in_proj_weight[4 * dim :], self.in_proj_bias[4 * dim :])  # [B, H, W, C]
        k_row, k_col = self.project(key_row, 2), self.project(key_col, 3)
        out = ops(self.fused_ops, src).rcda_aggregate(
            queries, row_term, col_term, k_col, mask_col, k_row, mask_row, values, 0, self.scale
        )
        return self.out_proj(out)

    @property
    def scale(self) -> float:
        """The queries' scale, 1 / sqrt(head_dim)."""
        return self.head_dim**-0.5


class ProjectedKeys(NamedTuple):
    """An RCDA's keys, split into heads (N = B * heads): row [N, W, head_dim] (one per column), col
    [N, H, head_dim] (one per row); and its values: channels [value_channel, value_channel + C) of
    values [B, H, W, C'] (the values of several attentions, projected in one GEMM)."""

    row: Tensor
    col: Tensor
    values: Tensor
    value_channel: int


def project_keys(
    attentions: Sequence[RowColumnDecoupledAttention], key_row: Tensor, key_col: Tensor, value: Tensor
) -> list[ProjectedKeys]:
    """The keys and values of each of ``attentions`` (modules of one size) over key_row [B, W, C],
    key_col [B, H, C] and value [B, H, W, C]. Every decoder layer attends to the same memory: one GEMM
    per input projects it for all of them (a layer at a time took three per layer); the keys are split
    into heads, the values are read in place by the op."""

    def packed(x: Tensor, index: int) -> Tensor:  # [B, ..., len(attentions) * C]
        weights, biases = zip(*(attention.in_proj(index) for attention in attentions), strict=True)
        return F.linear(x, torch.cat(weights), torch.cat(biases))

    heads, count, dim = attentions[0].num_heads, len(attentions), attentions[0].embed_dim
    rows = split_heads(packed(key_row, 2), heads, count)
    cols = split_heads(packed(key_col, 3), heads, count)
    values = packed(value, 4)
    return [
        ProjectedKeys(row, col, values, i * dim) for i, (row, col) in enumerate(zip(rows, cols, strict=True))
    ]


def project_each(x: Tensor, weights: Sequence[Tensor]) -> list[Tensor]:
    """``F.linear(x, weight)`` for each weight [N_i, C] in one GEMM: x [..., C] -> views [..., N_i].
    The terms that layers add to their input projections for an input they share (a position
    embedding), computed for all layers at once."""
    if not weights:  # no layers
        return []
    return list(F.linear(x, torch.cat(weights)).split([weight.shape[0] for weight in weights], dim=-1))


def split_heads(x: Tensor, num_heads: int, groups: int) -> list[Tensor]:
    """x [B, *S, groups * C] -> ``groups`` contiguous tensors [B * heads, *S, C / heads], the heads of
    each group of channels. x must be computed, not a slice of a wider tensor: Inductor guards batch > 1
    on the view that splits a strided slice's channels (tests/test_compile.py lowers the model to catch
    it)."""
    heads = x.unflatten(-1, (groups, num_heads, -1)).movedim((-3, -2), (0, 2))  # [G, B, heads, *S, D]
    # A copy, then views of it, each group's shape made before the groups are split: a view of a split
    # group, or a reshape of the permuted heads, made Inductor guard batch > 1 as well (so did unbinding
    # a packed projection without this copy, on the GPU).
    heads = heads.clone(memory_format=torch.contiguous_format)
    return list(heads.flatten(1, 2).unbind(0))
