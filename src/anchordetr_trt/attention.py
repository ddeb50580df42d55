"""Attention modules with the official parameter layout (``in_proj_weight``, ``in_proj_bias``, ``out_proj``)."""

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

    def project(self, x: Tensor, index: int, scale: float = 1.0) -> Tensor:
        """Input projection ``index`` of x [B, L, C], split into heads: [B * heads, L, head_dim]."""
        chunk = slice(index * self.embed_dim, (index + 1) * self.embed_dim)
        projected = F.linear(x, self.in_proj_weight[chunk])
        return ops(self.fused_ops, x).add_bias_transpose(
            projected, self.in_proj_bias[chunk], self.num_heads, scale
        )

    def merge_heads(self, x: Tensor, batch: int) -> Tensor:
        """[B * heads, L, head_dim] -> output projection of [B, L, C]."""
        length = x.shape[1]
        x = x.view(batch, self.num_heads, length, self.head_dim).transpose(1, 2).reshape(batch, length, -1)
        return self.out_proj(x)


class MultiheadAttention(_ProjectedAttention):
    """Standard multi-head attention (the decoder's self-attention), batch first: [B, L, C]."""

    def __init__(self, embed_dim: int, num_heads: int):
        super().__init__(embed_dim, num_heads, num_inputs=3)

    def forward(self, query: Tensor, key: Tensor, value: Tensor) -> Tensor:
        batch = query.shape[0]
        # [B, heads, L, head_dim]: the 4-d layout lets SDPA pick a fused (flash) kernel.
        q, k, v = (
            self.project(x, i).unflatten(0, (batch, self.num_heads))
            for i, x in enumerate((query, key, value))
        )
        return self.merge_heads(F.scaled_dot_product_attention(q, k, v).flatten(0, 1), batch)


class RowColumnDecoupledAttention(_ProjectedAttention):
    """Row-column decoupled attention (RCDA, Anchor DETR Sec. 3.3).

    The 2-d key map is replaced by a row key (one vector per column x) and a column key (one per row
    y); a query attends to columns and to rows separately, and the value at (y, x) is weighted by the
    product of the two probabilities. The official keys are the projected key maps averaged over the
    other axis; since the projection is affine, callers pass the averages before projection.
    """

    def __init__(self, embed_dim: int, num_heads: int):
        super().__init__(embed_dim, num_heads, num_inputs=5)

    def forward(
        self,
        query_row: Tensor,
        query_col: Tensor,
        key_row: Tensor,
        key_col: Tensor,
        value: Tensor,
        mask_row: Tensor,
        mask_col: Tensor,
    ) -> Tensor:
        """query_row, query_col [B, Lq, C]; key_row [B, W, C]; key_col [B, H, C]; value [B, H, W, C];
        mask_row [B, W], mask_col [B, H] (True = padding). Returns [B, Lq, C]."""
        batch, height, width, channels = value.shape
        scale = self.head_dim**-0.5
        q_row, q_col = self.project(query_row, 0, scale), self.project(query_col, 1, scale)
        k_row, k_col = self.project(key_row, 2), self.project(key_col, 3)
        v = self.project(value.reshape(batch, height * width, channels), 4)
        v = v.view(batch * self.num_heads, height, width, self.head_dim)
        # Both softmaxes happen where they are used: see rcda_aggregate.
        out = ops(self.fused_ops, value).rcda_aggregate(q_col, k_col, mask_col, q_row, k_row, mask_row, v)
        return self.merge_heads(out, batch)
