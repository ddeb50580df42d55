"""The AnchorDETR transformer: RCDA encoder, anchor-point decoder, prediction heads."""

import itertools
from collections.abc import Iterable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anchordetr_trt.custom_ops import ops
from anchordetr_trt.custom_ops.reference import pos2posemb1d

from .attention import (
    MultiheadAttention,
    ProjectedKeys,
    RowColumnDecoupledAttention,
    project_each,
    project_keys,
)
from .config import AnchorDETRConfig


class ResidualLayerNorm(nn.LayerNorm):
    """LayerNorm that can add a residual first: ``norm(x, residual) == LayerNorm(x + residual)``.
    Its parameters are those of ``nn.LayerNorm`` (``weight``, ``bias``), so checkpoint keys are unchanged."""

    def __init__(self, dim: int):
        super().__init__(dim)
        self.fused_ops: bool | None = None  # see AnchorDETR.set_fused_ops

    def forward(self, x: Tensor, residual: Tensor | None = None) -> Tensor:
        return ops(self.fused_ops, x).layer_norm(x, self.weight, self.bias, self.eps, residual)


class FFN(nn.Module):
    """Position-wise feed-forward block with its residual and norm: x -> norm(x + W2 relu(W1 x))."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.linear1 = nn.Linear(dim, hidden_dim)
        self.linear2 = nn.Linear(hidden_dim, dim)
        self.norm2 = ResidualLayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm2(x, self.linear2(F.relu(self.linear1(x))))


class MLP(nn.Module):
    """Linear layers with ReLU between them."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int):
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(dims))

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers[:-1]:
            x = F.relu(layer(x))
        return self.layers[-1](x)


def pos2posemb2d(pos: Tensor, num_pos_feats: int = 128, temperature: float = 10000.0) -> Tensor:
    """Sine embedding of 2-d points: pos [..., 2] (x, y) -> [..., 2 * num_pos_feats] as (emb(y), emb(x))."""
    return torch.cat(
        (
            pos2posemb1d(pos[..., 1], num_pos_feats, temperature),
            pos2posemb1d(pos[..., 0], num_pos_feats, temperature),
        ),
        dim=-1,
    )


def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


class EncoderLayer(nn.Module):
    """RCDA self-attention over the feature map, then the FFN. src [B, H, W, C] -> [B, H, W, C]."""

    def __init__(self, dim: int, num_heads: int, ffn_dim: int):
        super().__init__()
        self.self_attn = RowColumnDecoupledAttention(dim, num_heads)
        self.norm1 = ResidualLayerNorm(dim)
        self.ffn = FFN(dim, ffn_dim)
        self.fused_ops: bool | None = None  # see AnchorDETR.set_fused_ops

    def forward(
        self,
        src: Tensor,
        posemb_row: Tensor,
        posemb_col: Tensor,
        row_term: Tensor,
        col_term: Tensor,
        mask_row: Tensor,
        mask_col: Tensor,
    ) -> Tensor:
        """posemb_row [B, W, C] (per column), posemb_col [B, H, C] (per row); row_term [B, 1, W, C] and
        col_term [B, H, 1, C], their products with the attention's ``position_weights``
        (``Transformer.encode``); masks [B, W], [B, H]."""
        key_row, key_col = ops(self.fused_ops, src).key_means(src, posemb_row, posemb_col)
        attended = self.self_attn.attend_map(src, row_term, col_term, key_row, key_col, mask_row, mask_col)
        src = self.norm1(src, attended)
        return self.ffn(src)


class DecoderLayer(nn.Module):
    """Self-attention among queries, RCDA cross-attention to the memory, then the FFN."""

    def __init__(self, dim: int, num_heads: int, ffn_dim: int):
        super().__init__()
        self.cross_attn = RowColumnDecoupledAttention(dim, num_heads)
        self.norm1 = ResidualLayerNorm(dim)
        self.self_attn = MultiheadAttention(dim, num_heads)
        self.norm2 = ResidualLayerNorm(dim)
        self.ffn = FFN(dim, ffn_dim)

    def forward(
        self,
        tgt: Tensor,
        self_terms: Tensor,
        row_terms: Tensor,
        col_terms: Tensor,
        memory_keys: ProjectedKeys,
        mask_row: Tensor,
        mask_col: Tensor,
        *,
        shared: bool = False,
    ) -> Tensor:
        """tgt [B, Q, C], or with ``shared`` [1, Q, C]: queries the same for every image (the first
        layer's), whose self-attention runs once and is repeated over the batch; self_terms [1 or B,
        Q, 2C], row_terms and col_terms [1 or B, Q, C]: the products of the queries' position
        embeddings with the attentions' ``position_weights`` (``Transformer.decoder_queries``);
        memory_keys: the cross-attention's keys and values over the memory (``project_keys``); masks
        [B, W], [B, H]. Returns [B, Q, C]."""
        tgt = self.norm2(tgt, self.self_attn(tgt, self_terms))
        if shared:  # a flag, not tgt's batch: a test of the size would guard the batch in a trace
            tgt = tgt.repeat(mask_row.shape[0], 1, 1)
        attended = self.cross_attn(tgt, row_terms, col_terms, memory_keys, mask_row, mask_col)
        tgt = self.norm1(tgt, attended)
        return self.ffn(tgt)


class Transformer(nn.Module):
    """Encoder over the projected feature map and decoder over anchor-point queries.

    Queries are ``num_query_pattern`` learned patterns times ``num_query_position`` learned anchor
    points; every decoder layer predicts boxes relative to the anchor points (heads are shared).
    Its two halves, ``encode`` and ``decode``, are called one after the other by ``AnchorDETR`` (and
    apart by the benchmark, which times them).
    """

    def __init__(self, config: AnchorDETRConfig):
        super().__init__()
        dim, heads, ffn = config.hidden_dim, config.num_heads, config.dim_feedforward
        self.d_model = dim
        self.encoder_layers = nn.ModuleList(
            EncoderLayer(dim, heads, ffn) for _ in range(config.num_encoder_layers)
        )
        self.decoder_layers = nn.ModuleList(
            DecoderLayer(dim, heads, ffn) for _ in range(config.num_decoder_layers)
        )
        self.pattern = nn.Embedding(config.num_query_pattern, dim)
        self.position = nn.Embedding(config.num_query_position, 2)
        self.adapt_pos2d = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim))
        self.adapt_pos1d = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim))
        # One head shared by every decoder layer, listed once per layer as in the released checkpoints.
        class_embed = nn.Linear(dim, config.num_classes)
        bbox_embed = MLP(dim, dim, 4, 3)
        self.class_embed = nn.ModuleList([class_embed] * config.num_decoder_layers)
        self.bbox_embed = nn.ModuleList([bbox_embed] * config.num_decoder_layers)
        self.fused_ops: bool | None = None  # see AnchorDETR.set_fused_ops
        # A module returning ``decoder_queries()`` computed once, set by a backend that reads them from
        # memory rather than computing them at each call (backends.inductor_rewrites.PrecomputedQueries).
        self.precomputed_queries: nn.Module | None = None
        nn.init.uniform_(self.position.weight, 0, 1)

    def encode(self, src: Tensor, mask: Tensor) -> "Encoded":
        """The encoder: src [B, C, H, W], mask [B, H, W] (True = padding) -> its memory and what the
        decoder reads with it."""
        # Copied once here, not at each op's call (the ops take contiguous masks). A clone, not
        # .contiguous(): that one asks whether the batch is 1, a guard that breaks the one-graph range.
        mask_row = mask[:, 0, :].clone(memory_format=torch.contiguous_format)
        mask_col = mask[:, :, 0].clone(memory_format=torch.contiguous_format)
        posemb_y, posemb_x = ops(self.fused_ops, src).mask2posemb(mask, self.d_model, 10000.0)
        posemb_row = self.adapt_pos1d(posemb_x.to(src.dtype))
        posemb_col = self.adapt_pos1d(posemb_y.to(src.dtype))

        memory = src.permute(0, 2, 3, 1).contiguous()  # [B, H, W, C]; a no-op for channels_last features
        # The embeddings' projections for every layer's row and column queries, in one GEMM each.
        row_weights, col_weights = _position_weights(layer.self_attn for layer in self.encoder_layers)
        row_terms = project_each(posemb_row[:, None], row_weights)
        col_terms = project_each(posemb_col[:, :, None], col_weights)
        for layer, row_term, col_term in zip(self.encoder_layers, row_terms, col_terms, strict=True):
            memory = layer(memory, posemb_row, posemb_col, row_term, col_term, mask_row, mask_col)
        return Encoded(memory, posemb_row, posemb_col, mask_row, mask_col)

    def decoder_queries(self) -> "DecoderQueries":
        """The decoder's queries, a function of the weights only (the same for every image)."""
        num_pattern, num_position = self.pattern.num_embeddings, self.position.num_embeddings
        dtype = self.pattern.weight.dtype  # the model's; the anchor points stay float32 (set_precision)
        anchors = self.position.weight.repeat(num_pattern, 1)  # [Q, 2], pattern-major
        tgt = self.pattern.weight.repeat_interleave(num_position, dim=0)[None]
        query_pos = self.adapt_pos2d(pos2posemb2d(anchors, self.d_model // 2).to(dtype))[None]
        query_pos_x = self.adapt_pos1d(pos2posemb1d(anchors[:, 0], self.d_model).to(dtype))[None]
        query_pos_y = self.adapt_pos1d(pos2posemb1d(anchors[:, 1], self.d_model).to(dtype))[None]
        # Their projections for every layer, in one GEMM each: for the self-attention's queries and
        # keys (tgt + query_pos) and the cross-attention's row and column queries (tgt + query_pos_x,
        # tgt + query_pos_y).
        layers = self.decoder_layers
        self_terms = project_each(query_pos, [layer.self_attn.position_weight() for layer in layers])
        row_weights, col_weights = _position_weights(layer.cross_attn for layer in layers)
        row_terms, col_terms = project_each(query_pos_x, row_weights), project_each(query_pos_y, col_weights)
        return DecoderQueries(tgt, inverse_sigmoid(anchors), self_terms, row_terms, col_terms)

    def decode(self, encoded: "Encoded", aux: bool = False) -> tuple[Tensor, Tensor]:
        """The decoder and the heads: ``encode``'s output -> logits [L, B, Q, classes], boxes [L, B, Q, 4]
        with L = 1 (the last decoder layer) or, with ``aux``, every decoder layer."""
        memory, posemb_row, posemb_col, mask_row, mask_col = encoded
        # The memory's row keys (averaged over rows) and column keys plus their position embeddings,
        # and the memory itself as values, projected for every layer at once.
        key_row, key_col = ops(self.fused_ops, memory).key_means(memory, posemb_row, posemb_col)
        memory_keys = project_keys(
            [layer.cross_attn for layer in self.decoder_layers], key_row, key_col, memory
        )

        queries = self.decoder_queries() if self.precomputed_queries is None else self.precomputed_queries()
        tgt, layers = queries.tgt, self.decoder_layers  # tgt [1, Q, C]: the first layer repeats it
        logits, boxes = [], []
        last = len(layers) - 1
        for i, layer in enumerate(layers):
            terms = queries.self_terms[i], queries.row_terms[i], queries.col_terms[i]
            tgt = layer(tgt, *terms, memory_keys[i], mask_row, mask_col, shared=i == 0)
            if aux or i == last:
                head_input = tgt.to(self.class_embed[i].weight.dtype)  # float32 after set_precision
                delta = self.bbox_embed[i](head_input)
                center = delta[..., :2] + queries.anchor_logits.to(delta.dtype)
                logits.append(self.class_embed[i](head_input))
                boxes.append(torch.cat((center, delta[..., 2:]), dim=-1).sigmoid())
        return torch.stack(logits), torch.stack(boxes)


class DecoderQueries(NamedTuple):
    """``Transformer.decoder_queries``: tgt [1, Q, C] (a pattern embedding per query), anchor_logits
    [Q, 2] (the anchor points before the sigmoid, float32), and for each decoder layer the products of
    the queries' position embeddings with its attentions' ``position_weights``: self_terms [1, Q, 2C],
    row_terms and col_terms [1, Q, C]."""

    tgt: Tensor
    anchor_logits: Tensor
    self_terms: list[Tensor]
    row_terms: list[Tensor]
    col_terms: list[Tensor]


class Encoded(NamedTuple):
    """The encoder's output: memory [B, H, W, C]; the position embeddings of its columns, posemb_row
    [B, W, C], and of its rows, posemb_col [B, H, C]; the padding of its columns, mask_row [B, W], and
    rows, mask_col [B, H]."""

    memory: Tensor
    posemb_row: Tensor
    posemb_col: Tensor
    mask_row: Tensor
    mask_col: Tensor


def _position_weights(attentions: Iterable[RowColumnDecoupledAttention]) -> tuple[list[Tensor], list[Tensor]]:
    """The row and the column query weights of each RCDA (``position_weights``), in two lists."""
    weights = [attention.position_weights() for attention in attentions]
    return [row for row, _ in weights], [col for _, col in weights]
