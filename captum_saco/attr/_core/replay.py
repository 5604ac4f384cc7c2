"""The canonical forward pass of a ViT block, replayed from its input tokens.

Methods that need more than the model's own forward pass (the LRP relevance
pass of :mod:`captum_saco.attr._core.relevance`) run each block of the model's
canonical form (:class:`~captum_saco.attr._core.adapters.BlockParts`)
functionally and keep every activation their rules read.
"""

from dataclasses import dataclass
from typing import Optional

import torch.nn.functional as F
from torch import Tensor

from captum_saco.attr._core.adapters import BlockParts


@dataclass(frozen=True)
class BlockRecord:
    """The activations of one block that its relevance rules read.

    After the attention, a block may be evaluated on some token positions only
    (``rows``): the last block's output is read only at the classifier heads'
    tokens, and the relevance of every other position is exactly zero.
    """

    rows: Optional[Tensor]  # positions kept after the attention, None for all
    skip: Tensor  # block input at the kept positions, the first residual's skip
    normed: Tensor  # norm1 output, the qkv input (N, T, D)
    q: Tensor  # (N, heads, T, d)
    k: Tensor
    v: Tensor
    scores: Tensor  # q @ k^T before the scale (N, heads, T, T)
    attention: Tensor  # softmax(scale * scores)
    context: Tensor  # attention @ v (N, heads, T, d)
    merged: Tensor  # context with heads merged at the kept positions, the proj input
    attention_branch: Tensor  # ls1 * proj(merged), the first residual's branch
    mid: Tensor  # skip + attention_branch, the skip of the second residual
    mlp_in: Tensor  # norm2 output, the fc1 input
    hidden: Tensor  # act(fc1(mlp_in)), the fc2 input
    mlp_branch: Tensor  # ls2 * fc2(hidden), the second residual's branch


def block_forward(block: BlockParts, tokens: Tensor, rows: Optional[Tensor] = None) -> BlockRecord:
    n, t, dim = tokens.shape
    heads = block.num_heads
    normed = block.norm1(tokens)
    qkv = F.linear(normed, block.qkv_weight, block.qkv_bias)
    q, k, v = qkv.reshape(n, t, 3, heads, dim // heads).permute(2, 0, 3, 1, 4).unbind(0)
    scores = q @ k.transpose(-2, -1)
    attention = (scores * (dim // heads) ** -0.5).softmax(dim=-1)
    if not attention.requires_grad:
        # Frozen weights and detached tokens: the gradient still starts here.
        attention.requires_grad_(True)
    context = attention @ v
    merged = context.transpose(1, 2).reshape(n, t, dim)
    skip = tokens
    if rows is not None:
        merged, skip = merged[:, rows], tokens[:, rows]
    attention_branch = block.proj(merged)
    if block.ls1 is not None:
        attention_branch = attention_branch * block.ls1
    mid = skip + attention_branch
    mlp_in = block.norm2(mid)
    hidden = block.act(block.fc1(mlp_in))
    mlp_branch = block.fc2(hidden)
    if block.ls2 is not None:
        mlp_branch = mlp_branch * block.ls2
    return BlockRecord(
        rows,
        skip,
        normed,
        q,
        k,
        v,
        scores,
        attention,
        context,
        merged,
        attention_branch,
        mid,
        mlp_in,
        hidden,
        mlp_branch,
    )


def at_rows(values: Tensor, rows: Optional[Tensor], length: int) -> Tensor:
    """``values`` given at token positions ``rows``, zero-filled to ``length`` tokens."""
    if rows is None:
        return values
    full = values.new_zeros(values.shape[0], length, values.shape[2])
    full[:, rows] = values
    return full
