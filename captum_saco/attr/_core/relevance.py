"""Layer-wise relevance propagation (LRP) through a Vision Transformer.

Transformer Attribution (Chefer et al., CVPR 2021) weighs each block's
attention gradient by the LRP relevance ``R(A_b)`` of its attention
probabilities; partial LRP reads ``R(A_b)`` of the last block and full LRP
continues the pass down to the tokens entering block 0. This module computes
these relevances for any ViT given in the canonical form of
:class:`~captum_saco.attr._core.families.ViTParts`: a functional forward pass
from the tokens entering block 0 to the logits records every activation the
rules read (:mod:`~captum_saco.attr._core.replay`), one backward pass gives
the gradients of the target logits, and an explicit reverse pass over the
recorded activations propagates the relevance.

Each step of the reverse pass applies a named rule, and a method is a choice
of rules (:class:`LRPRules`). The rules of the authors' implementation
(:data:`CHEFER_RULES`) are:

- linear layers: :func:`alpha1_beta0`;
- the products ``Q K^T`` and ``A V``: :func:`z_rule_half_each`;
- residual additions: :func:`z_rule_rescaled`;
- GELU, softmax, LayerNorm, dropout, layer scale, the attention scale, the
  class-token selection, the final norm, a head's norm after pooling
  (``fc_norm``) and the L2 normalisation of a zero-shot head: :func:`pass_through`;
- the average over the tokens of a mean-pooling head: :func:`z_rule_mean`;
- an attention-pooling (MAP) head: the rules of a block's attention and MLP
  (:func:`_pool_relevance`); its latent queries are constants of the model and
  keep their half of the relevance of ``Q K^T``.

The optional parts of :class:`~captum_saco.attr._core.families.BlockParts` take
the rule of their kind: the query/key norms and the sub-LayerNorms before
``proj`` and ``fc2`` are LayerNorms (:func:`pass_through`); the attention bias
(BEiT's relative position bias) is added before the softmax, which passes the
relevance of the probabilities to the scores ``Q K^T`` unchanged, so the bias
takes nothing; the product ``act(gate) * value`` of a gated MLP gives each factor
half of the relevance (the z-rule of an element-wise product, as
:func:`z_rule_half_each` does for the attention products); the rotary position
embedding, a fixed linear map of the queries and keys, takes the z-rule
(:func:`rotary_relevance`).

Everything is batched; an example's relevance never depends on the other
examples of the batch. The pass computes in the dtype of the tokens it is
given (the model's parts are cast to it): Chefer's residual rule divides by
sums that nearly cancel, so callers that need the right numbers give float64
tokens (see :func:`embedding_in`).
"""

import copy
from contextlib import contextmanager
from dataclasses import dataclass, is_dataclass, replace
from typing import Callable, Iterator, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captum_saco._utils import TargetType, resolve_target
from captum_saco.attr._core.families import (
    AttentionPool,
    BlockParts,
    HeadParts,
    LinearMap,
    ViTAdapter,
    ViTParts,
    _model_lock,
    this_thread_only,
)
from captum_saco.attr._core.families.base import Linear
from captum_saco.attr._core.replay import (
    BlockRecord,
    ModelRecord,
    PoolRecord,
    at_rows,
    embedding_norms_as,
    model_forward,
    pool_readout,
    rotary_terms,
    rotation_partner,
)

_EPSILON = 1e-9

#: ``rule(inputs, weight, product, relevance)``: relevance of ``inputs`` from that of
#: ``product = inputs @ weight.T`` (as the forward pass computed it, bias removed)
LinearRule = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]
#: ``rule(left, right, product, relevance)``: relevance of both operands of ``left @ right``
ProductRule = Callable[[Tensor, Tensor, Tensor, Tensor], Tuple[Tensor, Tensor]]
#: ``rule(skip, branch, relevance)``: relevance of both operands of ``skip + branch``
SumRule = Callable[[Tensor, Tensor, Tensor], Tuple[Tensor, Tensor]]


# --- the rules ----------------------------------------------------------------------------
def _stabilised_divide(numerator: Tensor, denominator: Tensor) -> Tensor:
    """``numerator / (denominator + 1e-9)``, and 0 where the denominator is 0
    (both of the same shape)."""
    shifted = denominator + _EPSILON
    shifted.masked_fill_(shifted == 0, _EPSILON)
    quotient = torch.div(numerator, shifted, out=shifted)
    return quotient.masked_fill_(denominator == 0, 0.0)


def pass_through(relevance: Tensor) -> Tensor:
    """The identity rule: an element-wise layer hands its output's relevance to its input."""
    return relevance


def alpha1_beta0(inputs: Tensor, weight: Tensor, product: Tensor, relevance: Tensor) -> Tensor:
    """LRP-alpha1-beta0 through ``product = inputs @ weight.T`` (bias ignored), as
    in Captum's ``Alpha1_Beta0_Rule`` and zennit's ``AlphaBeta(1, 0)``.

    The positive part of the inputs meets the positive weights and the negative
    part the negative weights (only positive contributions count); both share
    one denominator ``z = x+ @ W+^T + x- @ W-^T``, stabilised as ``z + 1e-9``.
    Each term of ``x @ W^T`` is either a positive contribution or a negative
    one, so ``z = (product + |x| @ |W|^T) / 2``: one matrix product besides the
    forward pass's ``product`` instead of two. Its rounding is that of the
    cancellation, about ``eps * (|x| @ |W|^T)``: in float64 some 1e-16 of that
    sum, far below the stabiliser; a rounding below 0 is clamped to 0. In
    float16 and bfloat16 that rounding is 1e-3 to 1e-2 of the sum, and 1e-9
    vanishes in float16: there ``z`` is the sum of its two non-negative
    products, exactly 0 where nothing is positive (then replaced by 1).

    The relevance goes back as ``x+ * (s @ W+) + x- * (s @ W-)`` with
    ``s = R / (z + 1e-9)``: an output without positive contributions passes
    nothing however large its ``s``, each of its terms being exactly 0 (the
    equivalent ``(x * (s @ W) + |x| * (s @ |W|)) / 2`` would leak ``s`` through
    the rounding of its cancellation).
    """
    shape = inputs.shape
    flat = inputs.reshape(-1, shape[-1])
    positive_w = weight.clamp(min=0)
    negative_w = weight - positive_w
    if flat.dtype in (torch.float16, torch.bfloat16):
        z = (flat.clamp(min=0) @ positive_w.t()).addmm_(flat.clamp(max=0), negative_w.t())
        z.add_(_EPSILON)
        z.masked_fill_(z == 0, 1.0)
    else:  # (product + |x| @ |W|^T) / 2 in one addmm; the halving is exact
        z = torch.addmm(
            product.reshape(-1, weight.shape[0]), flat.abs(), weight.abs().t(), beta=0.5, alpha=0.5
        )
        z.clamp_(min=0).add_(_EPSILON)
    # z becomes the scale, and x+ and x- share a buffer, in place: on the CPU fresh
    # allocations of activation size cost more than the operations writing them.
    scale = torch.div(relevance.reshape(z.shape), z, out=z)
    buffer = flat.clamp(min=0)
    result = (scale @ positive_w).mul_(buffer)
    negative_in = torch.clamp(flat, max=0, out=buffer)
    return result.addcmul_(negative_in, scale @ negative_w).reshape(shape)


def z_rule_half_each(
    left: Tensor, right: Tensor, product: Tensor, relevance: Tensor
) -> Tuple[Tensor, Tensor]:
    """The z-rule (gradient times input) through ``product = left @ right``, each
    operand receiving half of the relevance."""
    scale = _stabilised_divide(relevance, product)
    left_relevance = (scale @ right.transpose(-2, -1)).mul_(left).div_(2)
    right_relevance = (left.transpose(-2, -1) @ scale).mul_(right).div_(2)
    return left_relevance, right_relevance


def z_rule_rescaled(skip: Tensor, branch: Tensor, relevance: Tensor) -> Tuple[Tensor, Tensor]:
    """The z-rule through ``skip + branch``, then each operand rescaled so that its
    total is the example's total relevance times its share of the absolute totals
    (Chefer's residual rule, per example where the original sums over the batch).
    """
    scale = _stabilised_divide(relevance, skip + branch)
    skip_relevance = skip * scale
    branch_relevance = scale.mul_(branch)  # scale is not read again: its buffer is reused
    dims = tuple(range(1, relevance.dim()))
    total = relevance.sum(dim=dims, keepdim=True)
    skip_total = skip_relevance.sum(dim=dims, keepdim=True)
    branch_total = branch_relevance.sum(dim=dims, keepdim=True)
    absolute_total = skip_total.abs() + branch_total.abs()
    skip_target = _stabilised_divide(skip_total.abs(), absolute_total) * total
    branch_target = _stabilised_divide(branch_total.abs(), absolute_total) * total
    return (
        skip_relevance.mul_(_stabilised_divide(skip_target, skip_total)),
        branch_relevance.mul_(_stabilised_divide(branch_target, branch_total)),
    )


def rotary_relevance(block: BlockParts, inputs: Tensor, relevance: Tensor) -> Tensor:
    """The z-rule through the block's rotary position embedding, the fixed linear
    map ``y_i = x_i cos_i + s_i x_p(i) sin_i`` (``p(i)`` the feature rotated with
    ``i``, ``s_i = ±1``) of the queries or keys ``inputs`` ``(N, heads, T, d)``: each
    output's relevance goes to its two terms in proportion to their share of
    ``y_i`` (stabilised as :func:`z_rule_half_each`). The prefix tokens the
    embedding leaves unrotated pass their relevance on unchanged.

    The rotation has no learned weights: like the attention products and the
    residual sums, it takes the z-rule, which conserves the relevance.
    alpha1-beta0, the rule of the learned linear layers, would drop every output
    whose two terms are both negative (a fifth of the relevance on a tiny
    EVA-02)."""
    skip = block.rope_skip
    direct, turned = rotary_terms(inputs[:, :, skip:], block)
    scale = _stabilised_divide(relevance[:, :, skip:], direct + turned)
    rotated = direct * scale + rotation_partner(turned * scale, block.rope_half)
    return torch.cat([relevance[:, :, :skip], rotated], dim=2)


def z_rule_mean(inputs: Tensor, relevance: Tensor) -> Tensor:
    """The z-rule through the average over the tokens: ``inputs`` ``(N, n, D)``,
    ``relevance`` ``(N, D)`` that of ``inputs.mean(dim=1)``; token ``i`` receives
    ``(inputs_i / n) / mean * relevance`` per dimension (0 where the mean is 0),
    which conserves the relevance."""
    mean = inputs.mean(dim=1, keepdim=True).expand_as(inputs)
    share = _stabilised_divide(inputs / inputs.shape[1], mean.contiguous())
    return share.mul_(relevance[:, None])


def conv_layout(conv: nn.Conv2d) -> Tuple:
    """``(stride, padding, dilation, groups)`` of ``conv`` with its padding as
    numbers, as ``torch.nn.grad.conv2d_input`` takes them: ``padding="valid"``
    (Hugging Face SigLIP's patch embedding) is no padding."""
    padding = (0, 0) if conv.padding == "valid" else conv.padding
    if isinstance(padding, str):
        raise ValueError(f"model: a patch embedding with padding={padding!r} is not supported")
    return conv.stride, padding, conv.dilation, conv.groups


def z_box(conv: nn.Conv2d, inputs: Tensor, relevance: Tensor, low: Tensor, high: Tensor) -> Tensor:
    """The z^B rule (Montavon et al., 2017; zennit's ``ZBox``) through the
    convolution ``conv`` (bias ignored) for inputs bounded by ``low`` and ``high``
    (broadcastable to ``inputs``): with ``z = conv_w(x) - conv_w+(low) - conv_w-(high)
    + 1e-9``, the input relevance is ``x * conv_w^T(R / z) - low * conv_w+^T(R / z)
    - high * conv_w-^T(R / z)``, computed in ``inputs.dtype``.
    """
    weight = conv.weight.to(inputs.dtype)
    positive, negative = weight.clamp(min=0), weight.clamp(max=0)
    low, high = low.expand_as(inputs), high.expand_as(inputs)
    layout = conv_layout(conv)

    def forward(x: Tensor, w: Tensor) -> Tensor:
        return F.conv2d(x, w, None, *layout)

    def backward(scale: Tensor, w: Tensor) -> Tensor:
        return torch.nn.grad.conv2d_input(inputs.shape, w, scale, *layout)

    scale = relevance / (
        forward(inputs, weight) - forward(low, positive) - forward(high, negative) + _EPSILON
    )
    result = inputs * backward(scale, weight) - low * backward(scale, positive)
    return result - high * backward(scale, negative)


@dataclass(frozen=True)
class LRPRules:
    """The rules of one LRP method, by the kind of layer they pass relevance through.

    Attributes:
        linear (LinearRule): linear layers (qkv, attention output, MLP, classifier).
        product (ProductRule): the attention products ``Q K^T`` and ``A V``.
        residual (SumRule): the residual additions.
        elementwise (Callable): GELU, softmax, LayerNorm, dropout, layer scale,
            a head's norm after pooling and L2 normalisation.
        mean (Callable): ``mean(inputs, relevance)``, the average over the tokens
            of a pooling head.
    """

    linear: LinearRule = alpha1_beta0
    product: ProductRule = z_rule_half_each
    residual: SumRule = z_rule_rescaled
    elementwise: Callable[[Tensor], Tensor] = pass_through
    mean: Callable[[Tensor, Tensor], Tensor] = z_rule_mean


#: The rules of Chefer et al.'s implementation (Transformer Attribution, partial and full LRP).
CHEFER_RULES = LRPRules()


# --- the relevance pass -------------------------------------------------------------------
@dataclass(frozen=True)
class AttentionRelevance:
    """What the relevance pass returns for a batch.

    Attributes:
        logits (Tensor): ``(N, C)`` logits of the functional forward pass.
        classes (Tensor): ``(N,)`` the target class of each example.
        attentions (list of Tensor): per block, the post-softmax attention
            probabilities ``A_b`` of shape ``(N, heads, T, T)``.
        gradients (list of Tensor or None): per block, the gradient of the target
            logit with respect to ``A_b``; ``None`` when not asked for.
        relevances (list of Tensor or None): per block, the LRP relevance
            ``R(A_b)``; ``None`` for the blocks before ``first_block``.
        input_relevance (Tensor or None): ``(N, T, D)`` the relevance of the tokens
            entering block 0 when asked for; it sums to 1 per example up to the
            relevance the rules absorb (biases, zero denominators, an
            attention-pooling head's latent queries).
        readout (Tensor or None): ``(N, T)`` for an attention-pooling head, its
            per-example read-out (see
            :func:`~captum_saco.attr._core.replay.pool_readout`); else ``None``.
    """

    logits: Tensor
    classes: Tensor
    attentions: List[Tensor]
    gradients: Optional[List[Tensor]]
    relevances: List[Optional[Tensor]]
    input_relevance: Optional[Tensor] = None
    readout: Optional[Tensor] = None


def parts_in(parts: ViTParts, dtype: torch.dtype) -> ViTParts:
    """``parts`` computing in ``dtype``: the same ``parts`` if they already do, else
    copies of the layers cast to ``dtype`` (the model is not touched)."""
    if parts.blocks[0].qkv_weight.dtype == dtype:
        return parts

    def cast(layer):
        if isinstance(layer, Tensor):
            return layer.detach().to(dtype)
        if isinstance(layer, nn.Module):
            return copy.deepcopy(layer).to(dtype)
        if isinstance(layer, (BlockParts, HeadParts, LinearMap, AttentionPool)):
            return replace(layer, **{k: cast(v) for k, v in vars(layer).items()})
        return layer  # None, token reads, or a function such as an activation

    blocks = [cast(block) for block in parts.blocks]
    heads = [cast(head) for head in parts.heads]
    return replace(parts, blocks=blocks, norm=cast(parts.norm), heads=heads)


@contextmanager
def embedding_in(adapter: ViTAdapter, dtype: torch.dtype) -> Iterator[None]:
    """While active, the patch embedding of the adapter's model computes in
    ``dtype`` (its output replaced by the convolution recomputed in ``dtype``),
    and so do the norms between it and block 0 (timm's ``embed_norm_layer`` and
    ``norm_pre``), so that the tokens entering block 0 come out in ``dtype`` as
    well, the prefix tokens and position embeddings being promoted when added to
    them.
    The hook is removed on exit, also on exceptions.
    """
    conv = adapter.patch_embedding()
    if not isinstance(conv, nn.Conv2d) or conv.padding_mode != "zeros":
        raise ValueError(
            f"model: the patch embedding must be a zero-padded Conv2d to compute in {dtype}, "
            f"got {conv}"
        )

    def recompute(module: nn.Conv2d, args: Tuple, output: Tensor) -> Tensor:
        bias = None if module.bias is None else module.bias.to(dtype)
        return F.conv2d(
            args[0].to(dtype), module.weight.to(dtype), bias,
            module.stride, module.padding, module.dilation, module.groups,
        )  # fmt: skip

    # Held with the model's capture lock, so that no other thread's attribution call
    # sees the hook, and acting on this thread's passes only.
    with _model_lock(adapter.model), embedding_norms_as(adapter, "gradient", dtype):
        hook = this_thread_only(recompute)
        handle = conv.register_forward_hook(hook) if conv.weight.dtype != dtype else None
        try:
            yield
        finally:
            if handle is not None:
                handle.remove()


def _without_bias(output: Tensor, bias: Optional[Tensor]) -> Tensor:
    """``output - bias``: the product of a linear layer from its output."""
    return output if bias is None else output - bias


def _linear_relevance(
    layer: Linear, inputs: Tensor, output: Tensor, relevance: Tensor, rules: LRPRules
) -> Tensor:
    """Relevance of the input of a head's linear layer (``output`` with its bias), in
    the dtype of ``inputs`` (a zero-shot head's text matrix may have another)."""
    weight = layer.weight.to(inputs.dtype)
    bias = None if layer.bias is None else layer.bias.to(inputs.dtype)
    return rules.linear(inputs, weight, _without_bias(output, bias), relevance)


def _detached(record):
    """A record (:mod:`~captum_saco.attr._core.replay`) with its tensors detached."""
    return type(record)(
        *(
            None if value is None else _detached(value) if is_dataclass(value) else value.detach()
            for value in vars(record).values()
        )
    )


def _head_relevance(
    parts: ViTParts, replay: ModelRecord, classes: Tensor, rules: LRPRules
) -> Tensor:
    """Relevance of the final norm's output at the heads' positions, seeded with the
    one-hot target; with several heads (DeiT distilled) each receives
    ``1 / len(heads)`` of it, as their logits are averaged. Through each head: the
    linear rule at the classifier (and at a zero-shot head's projection), the
    element-wise rule at the L2 normalisation and the norm after pooling; the
    relevance of the concatenated reads is split by their dimensions, a read
    passes its part to that token (or latent of an attention pool) and an average
    passes it through ``rules.mean``; an attention pool then passes the relevance
    of its latents to the tokens (:func:`_pool_relevance`).
    """
    normed = replay.normed.detach()
    relevance = torch.zeros_like(normed)
    for head, record in zip(parts.heads, replay.heads):
        record = _detached(record)
        num_classes = record.logits.shape[-1]
        current = F.one_hot(classes, num_classes).to(normed.dtype) / len(parts.heads)
        if head.classifier is not None:
            embedding = record.features if head.projection is None else record.projected
            if head.normalize:
                embedding = record.normalized
            current = _linear_relevance(head.classifier, embedding, record.logits, current, rules)
        if head.normalize:
            current = rules.elementwise(current)
        if head.projection is not None:
            current = _linear_relevance(
                head.projection, record.features, record.projected, current, rules
            )
        sequence, position = normed, replay.position
        if record.pool is not None:  # the reads select the pool's latents
            sequence, position = record.pool.latents, lambda latent: latent
        sequence_relevance = torch.zeros_like(sequence)
        pooled = rules.elementwise(current).split(sequence.shape[-1], dim=-1)
        for read, read_relevance in zip(head.reads, pooled):
            if isinstance(read, slice):
                sequence_relevance[:, read] += rules.mean(sequence[:, read], read_relevance)
            else:
                sequence_relevance[:, position(read)] += read_relevance
        if head.pool is None:
            relevance += sequence_relevance
        else:
            relevance += _pool_relevance(head.pool, record.pool, sequence_relevance, rules)
    return rules.elementwise(relevance)


def _pool_relevance(
    pool: AttentionPool, record: PoolRecord, relevance: Tensor, rules: LRPRules
) -> Tensor:
    """Relevance of the final norm's output ``(N, T, D)`` from that of an attention
    pool's latents ``(N, L, D)``, by the rules of a block's attention and MLP: the
    residual rule at ``projected + mlp_out``, the linear rule at the MLP's layers,
    the output projection and the key/value projection, the element-wise rule at
    the norm, the activation and the key norm, ``rules.product`` at ``A V`` and
    ``Q K^T``. The queries' share of ``Q K^T`` goes to the latent queries, which
    are constants of the model: it does not reach the tokens. The prefix tokens
    the pool does not see get none."""
    relevance, mlp_relevance = rules.residual(record.projected, record.mlp_out, relevance)
    hidden_relevance = rules.elementwise(
        _linear_relevance(pool.fc2, record.hidden, record.mlp_out, mlp_relevance, rules)
    )
    relevance = relevance + rules.elementwise(
        _linear_relevance(pool.fc1, record.mlp_in, record.before_act, hidden_relevance, rules)
    )
    merged_relevance = _linear_relevance(
        pool.proj, record.merged, record.projected, relevance, rules
    )
    n, heads, latents, d = record.context.shape
    context_relevance = merged_relevance.reshape(n, latents, heads, d).transpose(1, 2)
    attention_relevance, v_relevance = rules.product(
        record.attention, record.v, record.context, context_relevance
    )
    _, k_relevance = rules.product(
        record.q.expand(n, -1, -1, -1),
        record.k.transpose(-2, -1),
        record.scores,
        rules.elementwise(attention_relevance),
    )
    k_relevance = rules.elementwise(k_relevance.transpose(-2, -1))
    t = record.inputs.shape[1]
    kv_relevance = torch.stack(
        [r.transpose(1, 2) for r in (k_relevance, v_relevance)], dim=2
    ).reshape(n, t, 2 * heads * d)
    kv_product = _without_bias(record.kv, pool.kv_bias)
    inputs_relevance = rules.linear(record.inputs, pool.kv_weight, kv_product, kv_relevance)
    return F.pad(inputs_relevance, (0, 0, pool.skip, 0))


def _block_relevance(
    block: BlockParts, record: BlockRecord, relevance: Tensor, rules: LRPRules, to_input: bool
) -> Tuple[Optional[Tensor], Tensor]:
    """Relevance of the block's input tokens (``None`` unless ``to_input``) and of
    its attention probabilities."""
    mid_relevance, mlp_relevance = rules.residual(record.mid, record.mlp_branch, relevance)
    hidden_relevance = rules.elementwise(
        rules.linear(
            record.hidden,
            block.fc2.weight,
            _without_bias(record.mlp_out, block.fc2.bias),
            rules.elementwise(mlp_relevance),
        )
    )
    if block.fc_value is not None:  # act(gate) * value: half of the relevance each
        hidden_relevance = hidden_relevance / 2
        mid_relevance = mid_relevance + rules.elementwise(
            rules.linear(
                record.mlp_in,
                block.fc_value.weight,
                _without_bias(record.value, block.fc_value.bias),
                hidden_relevance,
            )
        )
    mid_relevance = mid_relevance + rules.elementwise(
        rules.linear(
            record.mlp_in,
            block.fc1.weight,
            _without_bias(record.before_act, block.fc1.bias),
            hidden_relevance,
        )
    )
    skip_relevance, branch_relevance = rules.residual(
        record.skip, record.attention_branch, mid_relevance
    )
    n, heads, t, d = record.context.shape
    merged_relevance = rules.linear(
        record.merged,
        block.proj.weight,
        _without_bias(record.projected, block.proj.bias),
        rules.elementwise(branch_relevance),
    )
    context_relevance = at_rows(merged_relevance, record.rows, t)
    context_relevance = context_relevance.reshape(n, t, heads, d).transpose(1, 2)
    attention_relevance, v_relevance = rules.product(
        record.attention, record.v, record.context, context_relevance
    )
    if not to_input:
        return None, attention_relevance
    q_relevance, k_relevance = rules.product(
        record.q, record.k.transpose(-2, -1), record.scores, rules.elementwise(attention_relevance)
    )
    k_relevance = k_relevance.transpose(-2, -1)
    if block.rope is not None:
        q_relevance = rotary_relevance(block, record.q_unrotated, q_relevance)
        k_relevance = rotary_relevance(block, record.k_unrotated, k_relevance)
    # (N, T, 3, heads, d), the layout of the qkv output, in one copy
    qkv_relevance = torch.stack(
        [r.transpose(1, 2) for r in (q_relevance, k_relevance, v_relevance)],
        dim=2,
    ).reshape(n, t, 3 * heads * d)
    qkv_product = _without_bias(record.qkv, block.qkv_bias)
    tokens_relevance = at_rows(skip_relevance, record.rows, t) + rules.elementwise(
        rules.linear(record.normed, block.qkv_weight, qkv_product, qkv_relevance)
    )
    return tokens_relevance, attention_relevance


def attention_relevance(
    parts: ViTParts,
    tokens: Tensor,
    target: TargetType = None,
    *,
    gradients: bool = True,
    first_block: int = 0,
    input_relevance: bool = False,
    rules: LRPRules = CHEFER_RULES,
) -> AttentionRelevance:
    """Attention probabilities, their gradients and their LRP relevance, per block.

    The pass computes in ``tokens.dtype`` (the parts are cast to it, see
    :func:`parts_in`).

    Args:
        parts (ViTParts): the model in canonical form.
        tokens (Tensor): ``(N, T, D)`` the token sequence entering block 0
            (class and other prefix tokens included).
        target (int, list, Tensor or None, optional): the class to explain,
            in any form :func:`captum_saco._utils.resolve_target` accepts for
            ``(N, C)`` logits. Default: the predicted class.
        gradients (bool, optional): whether to take the gradients of the target
            logits with respect to the attention (one backward pass). Default: True.
        first_block (int, optional): the relevance pass stops once ``R(A_b)`` of
            this block is known. Default: 0.
        input_relevance (bool, optional): whether to continue the pass through
            block 0 down to ``tokens`` (needs ``first_block=0``). Default: False.
        rules (LRPRules, optional): the rules. Default: :data:`CHEFER_RULES`.

    Returns:
        AttentionRelevance: the logits, the target classes and per block
        ``A_b``, ``grad(A_b)`` of the target logit and ``R(A_b)``, each of
        shape ``(N, heads, T, T)``, plus the relevance of ``tokens`` if asked
        for. The relevance is seeded with the one-hot target at the classifier
        output.
    """
    if input_relevance and first_block != 0:
        raise ValueError("input_relevance: the pass reaches the tokens only with first_block=0")
    parts = parts_in(parts, tokens.dtype)
    with torch.set_grad_enabled(gradients):
        replay = model_forward(parts, tokens.detach())
        logits = replay.logits
        _, classes = resolve_target(logits.detach(), target)
        attentions = [record.attention for record in replay.blocks]
        grads = None
        if gradients:
            chosen = logits.gather(1, classes[:, None]).sum()
            grads = list(torch.autograd.grad(chosen, attentions))

    with torch.no_grad():
        relevance = _head_relevance(parts, replay, classes, rules)
        records = replay.blocks
        relevances: List[Optional[Tensor]] = [None] * len(records)
        for b in reversed(range(first_block, len(records))):
            record = _detached(records[b])
            to_input = b > first_block or input_relevance
            relevance, relevances[b] = _block_relevance(
                parts.blocks[b], record, relevance, rules, to_input
            )
    return AttentionRelevance(
        logits=logits.detach(),
        classes=classes,
        attentions=[attention.detach() for attention in attentions],
        gradients=grads,
        relevances=relevances,
        input_relevance=relevance if input_relevance else None,
        readout=pool_readout(parts, replay),
    )


#: the ``precision`` option of the LRP methods: the dtype the relevance pass computes in
#: (``"model"``: the model's own dtype)
PRECISIONS = {"float64": torch.float64, "model": None}


def check_precision(precision: str) -> None:
    """Refuse a ``precision`` option that is not one of :data:`PRECISIONS`."""
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {list(PRECISIONS)}, got {precision!r}")


@contextmanager
def computing_in(adapter: ViTAdapter, precision: str) -> Iterator[None]:
    """While active, the relevance pass of the adapter's model computes in the
    dtype of ``precision`` (see :func:`embedding_in`)."""
    dtype = PRECISIONS[precision]
    if dtype is None:
        yield
    else:
        with embedding_in(adapter, dtype):
            yield
