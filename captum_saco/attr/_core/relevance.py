"""Layer-wise relevance of the attention probabilities of a Vision Transformer.

Transformer Attribution (Chefer et al., CVPR 2021) weighs each block's
attention gradient by the LRP relevance ``R(A_b)`` of its attention
probabilities. This module computes that relevance once, for any ViT given in
the canonical form of :class:`~captum_saco.attr._core.adapters.ViTParts`: a
functional forward pass from the tokens entering block 0 to the logits records
every activation the rules need, one backward pass gives the gradients of the
target logits, and an explicit reverse pass over the recorded activations
propagates the relevance with the rules of the original implementation:

- linear layers: alpha=1, beta=0, with one denominator shared by the positive
  and negative parts of the input (biases take no relevance);
- GELU, softmax, LayerNorm, dropout, layer scale, the attention scale, the
  class-token selection and the final norm pass relevance unchanged;
- the products ``Q K^T`` and ``A V``: z-rule (gradient times input), each
  operand receiving half of the relevance;
- residual additions: z-rule, then each branch rescaled so that the branch
  totals are proportional to the absolute totals of the branches and the sum
  is conserved; done per example (the original sums over the whole batch,
  which is only right for batch size 1);
- every division by ``z`` is stabilised as ``z + 1e-9`` and yields 0 where
  ``z == 0``.

Everything is batched; an example's relevance never depends on the other
examples of the batch.
"""

from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from captum_saco._utils import TargetType, resolve_target
from captum_saco.attr._core.adapters import BlockParts, ViTParts

_EPSILON = 1e-9


@dataclass(frozen=True)
class AttentionRelevance:
    """What the relevance pass returns for a batch.

    Attributes:
        logits (Tensor): ``(N, C)`` logits of the functional forward pass.
        classes (Tensor): ``(N,)`` the target class of each example.
        attentions (list of Tensor): per block, the post-softmax attention
            probabilities ``A_b`` of shape ``(N, heads, T, T)``.
        gradients (list of Tensor): per block, the gradient of the target
            logit with respect to ``A_b``.
        relevances (list of Tensor): per block, the LRP relevance ``R(A_b)``.
        input_relevance (Tensor): ``(N, T, D)`` the relevance of the tokens
            entering block 0; it sums to 1 per example up to the relevance
            the rules absorb (biases, zero denominators).
    """

    logits: Tensor
    classes: Tensor
    attentions: List[Tensor]
    gradients: List[Tensor]
    relevances: List[Tensor]
    input_relevance: Tensor


@dataclass(frozen=True)
class _BlockRecord:
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


def _stabilised_divide(numerator: Tensor, denominator: Tensor) -> Tensor:
    """``numerator / (denominator + 1e-9)``, and 0 where the denominator is 0."""
    shifted = denominator + _EPSILON
    shifted.masked_fill_(shifted == 0, _EPSILON)
    return (numerator / shifted).masked_fill_(denominator == 0, 0.0)


def _linear_relevance(inputs: Tensor, weight: Tensor, relevance: Tensor) -> Tensor:
    """LRP alpha=1, beta=0 through ``inputs @ weight.T`` (bias ignored).

    The positive part of the inputs meets the positive weights and the
    negative part the negative weights; both share one denominator ``z``.
    ``z`` is a sum of non-negative products, so where ``z == 0`` every product
    is 0 and the output's relevance reaches no input, as in the original's
    masked division, without the mask.
    """
    shape = inputs.shape
    positive_in = inputs.reshape(-1, shape[-1]).clamp(min=0)
    negative_in = inputs.reshape(-1, shape[-1]).clamp(max=0)
    positive_w, negative_w = weight.clamp(min=0), weight.clamp(max=0)
    z = (positive_in @ positive_w.t()).addmm_(negative_in, negative_w.t()).add_(_EPSILON)
    # 1e-9 vanishes in float16: keep 0 / 0 out of the products that are all zero.
    scale = relevance.reshape(z.shape) / z.masked_fill_(z == 0, 1.0)
    result = positive_in * (scale @ positive_w)
    return result.addcmul_(negative_in, scale @ negative_w).reshape(shape)


def _residual_relevance(skip: Tensor, branch: Tensor, relevance: Tensor) -> Tuple[Tensor, Tensor]:
    """Split the relevance of ``skip + branch`` between its two operands.

    The z-rule splits it; each operand is then rescaled so that its total is
    the example's total relevance times its share of the absolute totals.
    """
    scale = _stabilised_divide(relevance, skip + branch)
    skip_relevance, branch_relevance = skip * scale, branch * scale
    dims = tuple(range(1, relevance.dim()))
    total = relevance.sum(dim=dims, keepdim=True)
    skip_total = skip_relevance.sum(dim=dims, keepdim=True)
    branch_total = branch_relevance.sum(dim=dims, keepdim=True)
    absolute_total = skip_total.abs() + branch_total.abs()
    skip_target = _stabilised_divide(skip_total.abs(), absolute_total) * total
    branch_target = _stabilised_divide(branch_total.abs(), absolute_total) * total
    return (
        skip_relevance * _stabilised_divide(skip_target, skip_total),
        branch_relevance * _stabilised_divide(branch_target, branch_total),
    )


def _bilinear_relevance(
    left: Tensor, right: Tensor, product: Tensor, relevance: Tensor
) -> Tuple[Tensor, Tensor]:
    """z-rule through ``product = left @ right``; each operand receives half."""
    scale = _stabilised_divide(relevance, product)
    left_relevance = left * (scale @ right.transpose(-2, -1))
    right_relevance = right * (left.transpose(-2, -1) @ scale)
    return left_relevance / 2, right_relevance / 2


def _block_forward(
    block: BlockParts, tokens: Tensor, rows: Optional[Tensor] = None
) -> _BlockRecord:
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
    return _BlockRecord(
        rows, skip, normed, q, k, v, scores, attention, context, merged, attention_branch,
        mid, mlp_in, hidden, mlp_branch,
    )


def _at_rows(values: Tensor, rows: Optional[Tensor], length: int) -> Tensor:
    """``values`` given at token positions ``rows``, zero-filled to ``length`` tokens."""
    if rows is None:
        return values
    full = values.new_zeros(values.shape[0], length, values.shape[2])
    full[:, rows] = values
    return full


def _block_relevance(
    block: BlockParts, record: _BlockRecord, relevance: Tensor
) -> Tuple[Tensor, Tensor]:
    """Relevance of the block's input tokens and of its attention probabilities."""
    mid_relevance, mlp_relevance = _residual_relevance(record.mid, record.mlp_branch, relevance)
    hidden_relevance = _linear_relevance(record.hidden, block.fc2.weight, mlp_relevance)
    mid_relevance = mid_relevance + _linear_relevance(
        record.mlp_in, block.fc1.weight, hidden_relevance
    )

    skip_relevance, branch_relevance = _residual_relevance(
        record.skip, record.attention_branch, mid_relevance
    )
    n, heads, t, d = record.context.shape
    merged_relevance = _linear_relevance(record.merged, block.proj.weight, branch_relevance)
    context_relevance = _at_rows(merged_relevance, record.rows, t)
    context_relevance = context_relevance.reshape(n, t, heads, d).transpose(1, 2)
    attention_relevance, v_relevance = _bilinear_relevance(
        record.attention, record.v, record.context, context_relevance
    )
    q_relevance, k_relevance = _bilinear_relevance(
        record.q, record.k.transpose(-2, -1), record.scores, attention_relevance
    )
    qkv_relevance = torch.stack(
        (q_relevance, k_relevance.transpose(-2, -1), v_relevance), dim=2
    )  # (N, heads, 3, T, d)
    qkv_relevance = qkv_relevance.permute(0, 3, 2, 1, 4).reshape(n, t, 3 * heads * d)
    tokens_relevance = _at_rows(skip_relevance, record.rows, t) + _linear_relevance(
        record.normed, block.qkv_weight, qkv_relevance
    )
    return tokens_relevance, attention_relevance


def attention_relevance(
    parts: ViTParts, tokens: Tensor, target: TargetType = None
) -> AttentionRelevance:
    """Attention probabilities, their gradients and their LRP relevance, per block.

    Args:
        parts (ViTParts): the model in canonical form.
        tokens (Tensor): ``(N, T, D)`` the token sequence entering block 0
            (class and other prefix tokens included).
        target (int, list, Tensor or None, optional): the class to explain,
            in any form :func:`captum_saco._utils.resolve_target` accepts for
            ``(N, C)`` logits. Default: the predicted class.

    Returns:
        AttentionRelevance: the logits, the target classes and per block
        ``A_b``, ``grad(A_b)`` of the target logit and ``R(A_b)``, each of
        shape ``(N, heads, T, T)``, plus the relevance of ``tokens``. The
        relevance is seeded with the one-hot target at the classifier output;
        with several classifier heads (DeiT distilled) each head, on its
        token, receives ``1 / len(heads)`` of it, as their logits are averaged.
    """
    with torch.enable_grad():
        # After the last attention only the heads' tokens matter.
        head_tokens = sorted({index for index, _ in parts.heads})
        position = {index: p for p, index in enumerate(head_tokens)}
        last_rows = torch.tensor(head_tokens, device=tokens.device)
        records: List[_BlockRecord] = []
        hidden = tokens.detach()
        for b, block in enumerate(parts.blocks):
            rows = last_rows if b == len(parts.blocks) - 1 else None
            records.append(_block_forward(block, hidden, rows))
            hidden = records[-1].mid + records[-1].mlp_branch
        normed = parts.norm(hidden)
        logits = torch.stack(
            [head(normed[:, position[index]]) for index, head in parts.heads]
        ).mean(dim=0)
        _, classes = resolve_target(logits.detach(), target)
        attentions = [record.attention for record in records]
        chosen = logits.gather(1, classes[:, None]).sum()
        gradients = list(torch.autograd.grad(chosen, attentions))

    with torch.no_grad():
        seed = F.one_hot(classes, logits.shape[1]).to(logits.dtype) / len(parts.heads)
        relevance = torch.zeros_like(normed)
        for index, head in parts.heads:
            relevance[:, position[index]] += _linear_relevance(
                normed[:, position[index]].detach(), head.weight, seed
            )
        block_relevances: List[Tensor] = []
        for block, record in zip(reversed(parts.blocks), reversed(records)):
            detached = _BlockRecord(
                *(None if value is None else value.detach() for value in vars(record).values())
            )
            relevance, attention_relevance_b = _block_relevance(block, detached, relevance)
            block_relevances.append(attention_relevance_b)
    return AttentionRelevance(
        logits=logits.detach(),
        classes=classes,
        attentions=[attention.detach() for attention in attentions],
        gradients=gradients,
        relevances=block_relevances[::-1],
        input_relevance=relevance,
    )
