"""The canonical forward pass of a ViT, replayed from the tokens entering block 0.

Methods that need more than the model's own forward pass run each block of the
model's canonical form (:class:`~captum_saco.attr._core.families.ViTParts`)
functionally and keep every activation their rules read: the LRP relevance pass
of :mod:`captum_saco.attr._core.relevance` reads the records, and the
gradient-times-input methods (conservative LRP, AttnLRP) change how the gradient
flows through the replay with named :class:`GradientRules`. The rules never
change a forward value: with any rules the replay returns the model's logits.

The replay computes in the dtype of the tokens it is given; the weights are cast
to it on the fly (a float16 model replayed from float32 tokens computes in
float32).
"""

import math
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, fields
from functools import partial
from typing import Callable, Iterator, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captum_saco.attr._core.families import (
    AttentionPool,
    BlockParts,
    HeadParts,
    ViTAdapter,
    ViTParts,
    _model_lock,
    this_thread_only,
)


@dataclass(frozen=True)
class GradientRules:
    """How the gradient flows through the replay (the forward values never change).

    Each field names the rule of one kind of layer; ``"gradient"`` is the plain
    gradient everywhere. Gradient times input under these rules is the relevance
    of LRP variants for transformers written in gradient-times-input form:

    - ``attention``: ``"detached"`` treats the attention probabilities as
      constants (the AH rule of Ali et al., ICML 2022: the query and key get no
      gradient); ``"uniform"`` keeps the softmax's gradient and divides the
      gradient of the query and the key by 4 and that of the value by 2 (the
      uniform rule on both attention products of AttnLRP, Achtibat et al., ICML
      2024: each operand of ``Q K^T`` and ``A V`` gets half of the relevance).
    - ``norm``: ``"std_detached"`` treats each LayerNorm's standard deviation
      ``sqrt(var + eps)`` (biased variance) as a constant and keeps the gradient
      of the mean (the LN rule of Ali et al.; LXT's ``layer_norm_forward``); the
      same for a head's norm after pooling and, for the L2 normalisation of a
      zero-shot head, the norm ``||x||`` is a constant (see :func:`l2_normalize`).
    - ``gate``: the product ``act(gate) * value`` of a gated MLP (SwiGLU):
      ``"uniform"`` halves the gradient of the product, so that each factor gets
      half of its relevance (AttnLRP's uniform rule; LXT's ``gated_mlp_forward``);
      ``"detached"`` treats the gate ``act(gate)`` as a constant, so that all the
      relevance goes to the value (LXT's ``cp_gated_mlp_forward`` of CP-LRP, the
      gate being treated like the attention probabilities of the AH rule).
    - ``activation``: ``"identity"`` gives the element-wise activation the
      gradient ``act(x) / x`` (0 where ``x == 0``), so that gradient times input
      passes the output's relevance to the input unchanged (AttnLRP's identity
      rule; LXT's ``non_linear_forward``, which divides by ``x + 1e-10``).
    - ``linear_gamma``: if positive, the MLP's linear layers and the heads'
      linear layers (classifier; projection and text matrix of a zero-shot
      head) get zennit's generalised gamma rule with this gamma (see
      :func:`gamma_rule`); the attention projections keep the gradient, as in
      LXT's CP-LRP with zennit. ``embedding_gamma``: the same for the patch
      embedding, which the model runs itself (applied by the caller of the replay).
    """

    attention: str = "gradient"
    norm: str = "gradient"
    activation: str = "gradient"
    gate: str = "gradient"
    linear_gamma: float = 0.0
    embedding_gamma: float = 0.0

    def __post_init__(self) -> None:
        allowed = {
            "attention": ("gradient", "detached", "uniform"),
            "norm": ("gradient", "std_detached"),
            "activation": ("gradient", "identity"),
            "gate": ("gradient", "uniform", "detached"),
        }
        for name in ("linear_gamma", "embedding_gamma"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not 0 <= value < math.inf
            ):
                raise ValueError(f"{name}: expected a finite number >= 0, got {value!r}")
        for field in fields(self):
            value = getattr(self, field.name)
            if field.name in allowed and value not in allowed[field.name]:
                raise ValueError(
                    f"{field.name}_rule: expected one of {allowed[field.name]}, got {value!r}"
                )


#: the plain gradient everywhere: the model's own forward and backward pass
PLAIN_GRADIENT = GradientRules()


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
    qkv: Tensor  # qkv(normed) with its bias (N, T, 3 * D); q, k and v are views of it
    q: Tensor  # (N, heads, T, d)
    k: Tensor
    v: Tensor
    scores: Tensor  # q @ k^T before the scale (N, heads, T, T)
    attention: Tensor  # softmax(scale * scores)
    context: Tensor  # attention @ v (N, heads, T, d)
    merged: Tensor  # context, heads merged, at the kept positions (after attn_norm): proj input
    projected: Tensor  # proj(merged) with its bias, before ls1
    attention_branch: Tensor  # ls1 * projected, the first residual's branch
    mid: Tensor  # skip + attention_branch, the skip of the second residual
    mlp_in: Tensor  # norm2 output, the fc1 input
    before_act: Tensor  # fc1(mlp_in) with its bias, the activation's input
    hidden: Tensor  # act(before_act) (times value, then mlp_norm, if any), the fc2 input
    mlp_out: Tensor  # fc2(hidden) with its bias, before ls2
    mlp_branch: Tensor  # ls2 * mlp_out, the second residual's branch
    value: Optional[Tensor] = None  # fc_value(mlp_in) with its bias, for a gated MLP
    q_unrotated: Optional[Tensor] = None  # q before the rotary embedding, if any
    k_unrotated: Optional[Tensor] = None


@dataclass(frozen=True)
class PoolRecord:
    """The activations of an attention-pooling head's pool
    (:class:`~captum_saco.attr._core.families.AttentionPool`)."""

    inputs: Tensor  # (N, T', D): the tokens the pool sees, the kv input
    kv: Tensor  # (N, T', 2 * D): kv(inputs) with its bias; k and v are views of it
    q: Tensor  # (1, heads, L, d): the latent queries (after q_norm)
    k: Tensor  # (N, heads, T', d) (after k_norm)
    v: Tensor
    scores: Tensor  # q @ k^T before the scale (N, heads, L, T')
    attention: Tensor  # softmax(scale * scores)
    context: Tensor  # attention @ v (N, heads, L, d)
    merged: Tensor  # (N, L, D): context, heads merged, the proj input
    projected: Tensor  # proj(merged) with its bias, the MLP's skip
    mlp_in: Tensor  # norm(projected), the fc1 input
    before_act: Tensor  # fc1(mlp_in) with its bias
    hidden: Tensor  # act(before_act), the fc2 input
    mlp_out: Tensor  # fc2(hidden) with its bias
    latents: Tensor  # (N, L, D): the pool's output, projected + mlp_out


@dataclass(frozen=True)
class HeadRecord:
    """The activations of one head (:class:`~captum_saco.attr._core.families.HeadParts`)
    that its relevance rules read."""

    pool: Optional[PoolRecord]  # the attention pool's activations, if the head has one
    pooled: Tensor  # (N, F): the reads concatenated, the fc_norm input
    features: Tensor  # (N, F): fc_norm's output, the projection's (or classifier's) input
    projected: Optional[Tensor]  # (N, E): the projection's output with its bias, or None
    normalized: Optional[Tensor]  # (N, E): the L2 normalisation, the classifier input, or None
    logits: Tensor  # (N, C): the classifier's output with its bias (the features if none)


@dataclass(frozen=True)
class ModelRecord:
    """A replay of the whole model: every block's record, the final norm's output
    at the positions the heads read, each head's record and the logits."""

    blocks: List[BlockRecord]
    rows: Optional[List[int]]  # the last block's kept positions (the heads' tokens), None for all
    normed: Tensor  # (N, len(rows) or T, D): the final norm's output at ``rows``
    heads: List[HeadRecord]
    logits: Tensor  # (N, C): mean over the heads of their logits

    def position(self, token: int) -> int:
        """The position of token ``token`` in :attr:`normed`."""
        return _position(self.rows, token)


def _position(rows: Optional[List[int]], token: int) -> int:
    return token if rows is None else rows.index(token)


def _same(index: int) -> int:
    return index


class _ScaledGradient(torch.autograd.Function):
    """Identity forward; the gradient is multiplied by ``factor``."""

    @staticmethod
    def forward(ctx, values: Tensor, factor: float) -> Tensor:  # type: ignore[override]
        ctx.factor = factor
        return values.view_as(values)

    @staticmethod
    def backward(ctx, gradient: Tensor) -> Tuple[Tensor, None]:  # type: ignore[override]
        return gradient * ctx.factor, None


class _IdentityRule(torch.autograd.Function):
    """``act(x)`` forward; the gradient is multiplied by ``act(x) / x`` (0 at 0)."""

    @staticmethod
    def forward(ctx, values: Tensor, act: Callable[[Tensor], Tensor]) -> Tensor:  # type: ignore[override]
        output = act(values)
        zero = values == 0
        ctx.save_for_backward((output / values.masked_fill(zero, 1)).masked_fill_(zero, 0))
        return output

    @staticmethod
    def backward(ctx, gradient: Tensor) -> Tuple[Tensor, None]:  # type: ignore[override]
        (ratio,) = ctx.saved_tensors
        return gradient * ratio, None


def _stabilised(values: Tensor) -> Tensor:
    """zennit's default stabiliser: ``values + 1e-6 * sign(values)``, sign(0) = 1."""
    return values + 1e-6 * torch.where(values < 0, -1.0, 1.0).to(values.dtype)


class _GammaRule(torch.autograd.Function):
    """``layer(x, weight, bias)`` forward; zennit's generalised gamma rule backward,
    written as a gradient (relevance divided by the input, 0 where it is 0)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        inputs: Tensor,
        layer: Callable[[Tensor, Tensor, Optional[Tensor]], Tensor],
        weight: Tensor,
        bias: Optional[Tensor],
        gamma: float,
    ) -> Tensor:
        output = layer(inputs, weight, bias)
        ctx.save_for_backward(inputs, output, weight, bias)
        ctx.layer, ctx.gamma = layer, gamma
        return output

    @staticmethod
    def backward(ctx, gradient: Tensor) -> Tuple[Optional[Tensor], ...]:  # type: ignore[override]
        inputs, output, weight, bias = ctx.saved_tensors
        layer, gamma = ctx.layer, ctx.gamma
        relevance = gradient * output
        up, down = weight + gamma * weight.clamp(min=0), weight + gamma * weight.clamp(max=0)
        biases = (
            (None, None)
            if bias is None
            else (
                bias + gamma * bias.clamp(min=0),
                bias + gamma * bias.clamp(max=0),
            )
        )
        with torch.enable_grad():
            positive = inputs.detach().clamp(min=0).requires_grad_()
            negative = inputs.detach().clamp(max=0).requires_grad_()
            # positive outputs: positive inputs with more positive weight; negative outputs alike
            z_up = layer(positive, up, biases[0]) + layer(negative, down, None)
            z_down = layer(positive, down, biases[1]) + layer(negative, up, None)
            scales = (
                torch.where(output > 0, relevance / _stabilised(z_up.detach()), 0),
                torch.where(output < 0, relevance / _stabilised(z_down.detach()), 0),
            )
            from_positive, from_negative = torch.autograd.grad(
                (z_up, z_down), (positive, negative), scales
            )
        input_relevance = positive.detach() * from_positive + negative.detach() * from_negative
        zero = inputs == 0
        input_gradient = (input_relevance / inputs.masked_fill(zero, 1)).masked_fill_(zero, 0)
        return input_gradient, None, None, None, None


def gamma_rule(
    layer: Callable[[Tensor, Tensor, Optional[Tensor]], Tensor],
    inputs: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    gamma: float,
) -> Tensor:
    """``layer(inputs, weight, bias)`` whose gradient is zennit's generalised gamma
    rule (``zennit.rules.Gamma``, stabiliser 1e-6) in gradient-times-input form.

    The output's relevance ``R = gradient * output`` goes, at outputs ``> 0``, to
    the positive inputs through ``w + gamma * w^+`` and to the negative inputs
    through ``w + gamma * w^-`` (the other way round at outputs ``< 0``), in
    proportion to their contributions (bias modified alike in the denominator);
    the input gradient is the input relevance divided by the input (0 where the
    input is 0; LXT's zennit patch divides by ``input + 1e-10``).
    """
    return _GammaRule.apply(inputs, layer, weight, bias, gamma)


def _cast(values: Optional[Tensor], dtype: torch.dtype) -> Optional[Tensor]:
    return None if values is None else values.to(dtype)


def _linear(layer: nn.Linear, inputs: Tensor, gamma: float = 0.0) -> Tensor:
    weight, bias = _cast(layer.weight, inputs.dtype), _cast(layer.bias, inputs.dtype)
    if gamma > 0:
        return gamma_rule(F.linear, inputs, weight, bias, gamma)
    return F.linear(inputs, weight, bias)


def layer_norm(norm: nn.Module, inputs: Tensor, rule: str = "gradient") -> Tensor:
    """``norm(inputs)`` in the dtype of ``inputs``, its gradient as ``rule`` says
    (see :class:`GradientRules`). An ``nn.Identity`` (a model without that norm,
    such as timm's ``final_norm=False``) returns ``inputs``. An ``nn.RMSNorm``
    takes the same rule: with ``"std_detached"`` its root mean square
    ``sqrt(mean(x^2) + eps)`` is a constant (LXT's ``rms_norm_forward``)."""
    if isinstance(norm, nn.Identity):
        return inputs
    if isinstance(norm, nn.RMSNorm):
        return _rms_norm(norm, inputs, rule)
    if not isinstance(norm, nn.LayerNorm):
        if rule == "gradient":
            return norm(inputs)
        raise ValueError(
            f"model: the norm rule {rule!r} needs LayerNorm layers, got {type(norm).__name__}"
        )
    weight, bias = _cast(norm.weight, inputs.dtype), _cast(norm.bias, inputs.dtype)
    if rule == "gradient":
        return F.layer_norm(inputs, norm.normalized_shape, weight, bias, norm.eps)
    centred = inputs - inputs.mean(dim=-1, keepdim=True)
    std = (centred.square().mean(dim=-1, keepdim=True) + norm.eps).sqrt()
    normed = centred / std.detach()
    if weight is not None:
        normed = normed * weight
    return normed if bias is None else normed + bias


def _rms_norm(norm: nn.RMSNorm, inputs: Tensor, rule: str) -> Tensor:
    """:func:`layer_norm` of an ``nn.RMSNorm``."""
    weight = _cast(norm.weight, inputs.dtype)
    eps = torch.finfo(inputs.dtype).eps if norm.eps is None else norm.eps
    if rule == "gradient":
        return F.rms_norm(inputs, norm.normalized_shape, weight, eps)
    normed = inputs * (inputs.square().mean(dim=-1, keepdim=True) + eps).rsqrt().detach()
    return normed if weight is None else normed * weight


@contextmanager
def embedding_norms_as(
    adapter: ViTAdapter, rule: str, dtype: Optional[torch.dtype] = None
) -> Iterator[None]:
    """While active, each norm between the adapter's patch embedding and block 0
    (:meth:`~captum_saco.attr._core.families.base.ViTAdapter.embedding_norms`:
    timm's ``embed_norm_layer`` and ``norm_pre``) computes as :func:`layer_norm`
    with ``rule``, in ``dtype`` (its input's if ``None``): the LayerNorm rule
    reaches the norms the model runs itself, as it reaches the replayed ones.
    The hooks act on this thread's passes only, under the model's capture lock,
    and are removed on exit, also on exceptions."""

    inputs: List[Tensor] = []

    def keep(norm: nn.LayerNorm, args: Tuple) -> Optional[Tuple]:
        # the norm's own forward runs on its dtype (its output is replaced below)
        inputs.append(args[0])
        if norm.weight is not None and args[0].dtype != norm.weight.dtype:
            return (args[0].to(norm.weight.dtype),) + args[1:]
        return None

    def recompute(norm: nn.LayerNorm, args: Tuple, output: Tensor) -> Tensor:
        values = inputs.pop()
        return layer_norm(norm, values if dtype is None else values.to(dtype), rule)

    with ExitStack() as stack:
        stack.enter_context(_model_lock(adapter.model))
        for _, norm in adapter.embedding_norms():
            stack.callback(norm.register_forward_pre_hook(this_thread_only(keep)).remove)
            stack.callback(norm.register_forward_hook(this_thread_only(recompute)).remove)
        yield


def _attention(
    q: Tensor, k: Tensor, v: Tensor, rule: str, bias: Optional[Tensor] = None
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``(q, k, v, scores, attention)`` with the attention rule applied; ``bias`` is
    added to the scaled scores before the softmax."""
    if rule == "uniform":
        q, k = _ScaledGradient.apply(q, 0.25), _ScaledGradient.apply(k, 0.25)
        v = _ScaledGradient.apply(v, 0.5)
    if rule == "detached":
        q, k = q.detach(), k.detach()
    scores = q @ k.transpose(-2, -1)
    logits = scores * q.shape[-1] ** -0.5
    if bias is not None:
        logits = logits + bias
    attention = logits.softmax(dim=-1)
    return q, k, v, scores, attention


def rotation_partner(values: Tensor, half: bool) -> Tensor:
    """``values`` ``(..., d)`` with each feature moved to the place of the feature it
    is rotated with: pairs ``(2i, 2i + 1)``, or with ``half`` ``(i, i + d / 2)``."""
    if half:
        return values.roll(values.shape[-1] // 2, dims=-1)
    return values.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)


def rotary_terms(values: Tensor, block: BlockParts) -> Tuple[Tensor, Tensor]:
    """The two terms ``x * cos`` and ``rotate(x) * sin`` of the block's rotary
    position embedding of ``values`` ``(N, heads, T - rope_skip, d)``, the queries
    or keys of the rotated tokens (as timm's ``apply_rot_embed_cat``): feature ``i``
    of the second term comes from feature ``rotation_partner(i)``."""
    assert block.rope is not None
    sin, cos = block.rope.to(values.dtype).chunk(2, dim=-1)
    if block.rope_half:  # [x0 .. x5] -> [-x3 -x4 -x5 x0 x1 x2]
        first, second = values.chunk(2, dim=-1)
        turned = torch.cat([-second, first], dim=-1)
    else:  # [x0 .. x5] -> [-x1 x0 -x3 x2 -x5 x4]
        turned = torch.stack([-values[..., 1::2], values[..., ::2]], dim=-1).reshape(values.shape)
    return values * cos, turned * sin


def _rotated(values: Tensor, block: BlockParts) -> Tensor:
    """The block's rotary position embedding applied to queries or keys ``values``
    ``(N, heads, T, d)`` after the first ``block.rope_skip`` tokens: a linear map."""
    skip = block.rope_skip
    direct, turned = rotary_terms(values[:, :, skip:], block)
    return torch.cat([values[:, :, :skip], direct + turned], dim=2)


def _norm(norm: Optional[nn.Module], inputs: Tensor, rule: str) -> Tensor:
    """``layer_norm`` for an optional part of the block (``None``: no norm)."""
    return inputs if norm is None else layer_norm(norm, inputs, rule)


def _activated(act: Callable[[Tensor], Tensor], values: Tensor, rule: str) -> Tensor:
    """``act(values)``, its gradient as the ``activation`` ``rule`` says."""
    return _IdentityRule.apply(values, act) if rule == "identity" else act(values)


def _mlp_hidden(
    block: BlockParts, mlp_in: Tensor, rules: GradientRules
) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
    """``(before_act, hidden, value)``: the activation's input, the fc2 input and,
    for a gated MLP, the value ``fc_value(mlp_in)``."""
    before_act = _linear(block.fc1, mlp_in, rules.linear_gamma)
    gate = before_act
    if block.fc_value is not None and rules.gate == "detached":
        gate = before_act.detach()
    hidden = _activated(block.act, gate, rules.activation)
    value = None
    if block.fc_value is not None:
        value = _linear(block.fc_value, mlp_in, rules.linear_gamma)
        hidden = hidden * value
        if rules.gate == "uniform":
            hidden = _ScaledGradient.apply(hidden, 0.5)
    return before_act, _norm(block.mlp_norm, hidden, rules.norm), value


def block_forward(
    block: BlockParts,
    tokens: Tensor,
    rows: Optional[Tensor] = None,
    rules: GradientRules = PLAIN_GRADIENT,
) -> BlockRecord:
    """One block replayed on ``tokens`` ``(N, T, D)``, in their dtype, keeping every
    activation; after the attention only the positions ``rows`` (all if ``None``).

    The optional parts of :class:`BlockParts` take these rules: the norms
    (``q_norm``, ``k_norm``, ``attn_norm``, ``mlp_norm``) that of ``rules.norm``, as
    every LayerNorm; the rotary embedding is a linear map of the queries and keys
    (plain gradient), applied before the attention rule, which acts on the operands
    of ``Q K^T``; the attention bias is a constant added to the scaled scores (it
    takes its share of the softmax's relevance and passes nothing on); the gated
    MLP's product takes ``rules.gate``.
    """
    n, t, dim = tokens.shape
    heads = block.num_heads
    normed = layer_norm(block.norm1, tokens, rules.norm)
    qkv = F.linear(
        normed, _cast(block.qkv_weight, tokens.dtype), _cast(block.qkv_bias, tokens.dtype)
    )
    q, k, v = qkv.reshape(n, t, 3, heads, dim // heads).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = _norm(block.q_norm, q, rules.norm), _norm(block.k_norm, k, rules.norm)
    q_unrotated = k_unrotated = None
    if block.rope is not None:
        q_unrotated, k_unrotated = q, k
        q, k = _rotated(q, block), _rotated(k, block)
    bias = _cast(block.attention_bias, tokens.dtype)
    if bias is not None and bias.shape[-1] != t:
        raise ValueError(
            f"model: its attention bias (relative position bias) is defined for "
            f"{bias.shape[-1]} tokens, the images give {t}: the relevance methods explain "
            "it at the image size it was built for"
        )
    q, k, v, scores, attention = _attention(q, k, v, rules.attention, bias)
    if not attention.requires_grad:
        # Frozen weights and detached tokens, or detached attention: the gradient
        # with respect to the attention still starts here.
        attention.requires_grad_(True)
    context = attention @ v
    merged = context.transpose(1, 2).reshape(n, t, dim)
    skip = tokens
    if rows is not None:
        merged, skip = merged[:, rows], tokens[:, rows]
    merged = _norm(block.attn_norm, merged, rules.norm)
    projected = _linear(block.proj, merged)
    attention_branch = projected
    if block.ls1 is not None:
        attention_branch = projected * _cast(block.ls1, tokens.dtype)
    mid = skip + attention_branch
    mlp_in = layer_norm(block.norm2, mid, rules.norm)
    before_act, hidden, value = _mlp_hidden(block, mlp_in, rules)
    mlp_out = _linear(block.fc2, hidden, rules.linear_gamma)
    mlp_branch = mlp_out
    if block.ls2 is not None:
        mlp_branch = mlp_out * _cast(block.ls2, tokens.dtype)
    return BlockRecord(
        rows,
        skip,
        normed,
        qkv,
        q,
        k,
        v,
        scores,
        attention,
        context,
        merged,
        projected,
        attention_branch,
        mid,
        mlp_in,
        before_act,
        hidden,
        mlp_out,
        mlp_branch,
        value,
        q_unrotated,
        k_unrotated,
    )


def l2_normalize(inputs: Tensor, rule: str = "gradient") -> Tensor:
    """``inputs / ||inputs||`` over the last dimension (as ``F.normalize``), its
    gradient as the ``norm`` ``rule`` of :class:`GradientRules` says: with
    ``"std_detached"`` the norm is a constant (the LayerNorm rule, under which
    gradient times input passes each element's relevance on unchanged)."""
    if rule == "gradient":
        return F.normalize(inputs, dim=-1)
    return inputs / inputs.norm(dim=-1, keepdim=True).clamp_min(1e-12).detach()


def pool_forward(pool: AttentionPool, normed: Tensor, rules: GradientRules) -> PoolRecord:
    """An attention-pooling head's pool replayed on the final norm's output
    ``normed`` ``(N, T, D)``, in its dtype: its attention takes ``rules.attention``
    as the blocks' attention (the latent queries are constants: under the AH rule
    the probabilities are constants, and the pooled values are linear in the
    tokens), its norms ``rules.norm``, its MLP's activation ``rules.activation``
    and its MLP's linear layers ``rules.linear_gamma``; the projections of the
    queries, keys, values and output keep the gradient, as the blocks' do."""
    inputs = normed[:, pool.skip :]
    n, t, dim = inputs.shape
    heads = pool.num_heads
    latent = _cast(pool.latent, inputs.dtype)
    queries = latent if pool.q is None else _linear(pool.q, latent)
    q = queries.reshape(1, -1, heads, dim // heads).transpose(1, 2)
    kv = F.linear(inputs, _cast(pool.kv_weight, inputs.dtype), _cast(pool.kv_bias, inputs.dtype))
    k, v = kv.reshape(n, t, 2, heads, dim // heads).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = _norm(pool.q_norm, q, rules.norm), _norm(pool.k_norm, k, rules.norm)
    q, k, v, scores, attention = _attention(q, k, v, rules.attention)
    context = attention @ v
    merged = context.transpose(1, 2).reshape(n, -1, dim)
    projected = _linear(pool.proj, merged)
    mlp_in = layer_norm(pool.norm, projected, rules.norm)
    before_act = _linear(pool.fc1, mlp_in, rules.linear_gamma)
    hidden = _activated(pool.act, before_act, rules.activation)
    mlp_out = _linear(pool.fc2, hidden, rules.linear_gamma)
    latents = projected + mlp_out
    return PoolRecord(
        inputs, kv, q, k, v, scores, attention, context, merged, projected,
        mlp_in, before_act, hidden, mlp_out, latents,
    )  # fmt: skip


def head_forward(
    head: HeadParts, normed: Tensor, position: Callable[[int], int], rules: GradientRules
) -> HeadRecord:
    """One head replayed on the final norm's output ``normed``, whose token
    ``i`` sits at ``normed[:, position(i)]`` (all tokens where a read averages or
    the head pools through its attention, :func:`pool_forward`, whose latents the
    reads then select)."""
    pool, sequence, at = None, normed, position
    if head.pool is not None:  # the reads select the pool's latents
        pool = pool_forward(head.pool, normed, rules)
        sequence, at = pool.latents, _same
    reads = [
        sequence[:, read].mean(dim=1) if isinstance(read, slice) else sequence[:, at(read)]
        for read in head.reads
    ]
    pooled = reads[0] if len(reads) == 1 else torch.cat(reads, dim=-1)
    features = layer_norm(head.fc_norm, pooled, rules.norm)
    projected = normalized = None
    embedding = features
    if head.projection is not None:
        embedding = projected = _linear(head.projection, features, rules.linear_gamma)
    if head.normalize:
        embedding = normalized = l2_normalize(embedding, rules.norm)
    logits = embedding
    if head.classifier is not None:
        logits = _linear(head.classifier, embedding, rules.linear_gamma)
    return HeadRecord(pool, pooled, features, projected, normalized, logits)


def model_forward(
    parts: ViTParts, tokens: Tensor, rules: GradientRules = PLAIN_GRADIENT
) -> ModelRecord:
    """The whole model replayed from the tokens ``(N, T, D)`` entering block 0, in
    their dtype, to the logits (the mean of the heads' logits, see
    :class:`~captum_saco.attr._core.families.HeadParts`).

    After the last block's attention, only the tokens the heads read are
    computed when no head averages tokens: no other position reaches the logits.
    Every norm of the head (``fc_norm``, the L2 normalisation of a zero-shot
    head) takes the rule of the other norms (``rules.norm``); an attention-pooling
    head's pool takes the rules of the blocks (:func:`pool_forward`).
    """
    read: Optional[List[int]] = None  # the tokens read, None for all
    if not any(head.reads_all_tokens() for head in parts.heads):
        read = sorted({int(token) for head in parts.heads for token in head.reads})
    last_rows = None if read is None else torch.tensor(read, device=tokens.device)
    records: List[BlockRecord] = []
    hidden = tokens
    for b, block in enumerate(parts.blocks):
        rows = last_rows if b == len(parts.blocks) - 1 else None
        records.append(block_forward(block, hidden, rows, rules))
        hidden = records[-1].mid + records[-1].mlp_branch
    normed = layer_norm(parts.norm, hidden, rules.norm)
    position = partial(_position, read)
    heads = [head_forward(head, normed, position, rules) for head in parts.heads]
    logits = torch.stack([head.logits for head in heads]).mean(dim=0)
    return ModelRecord(records, read, normed, heads, logits)


def pool_readout(parts: ViTParts, replay: ModelRecord) -> Optional[Tensor]:
    """The per-example read-out ``(N, T)`` of an attention-pooling head, detached:
    its pool's attention probabilities over the tokens, averaged over its heads and
    over the latents the head reads, zero on the prefix tokens it does not see (see
    :meth:`~captum_saco.attr._core.families.base.ViTAdapter.readout_source`);
    ``None`` for a model without one."""
    for head, record in zip(parts.heads, replay.heads):
        if record.pool is not None:
            probabilities = record.pool.attention.detach().mean(dim=1)  # (N, L, T')
            read = head.reads[0]
            s = probabilities[:, read]
            s = s.mean(dim=1) if isinstance(read, slice) else s
            return F.pad(s, (replay.normed.shape[1] - s.shape[-1], 0))
    return None


def at_rows(values: Tensor, rows: Optional[Tensor], length: int) -> Tensor:
    """``values`` given at token positions ``rows``, zero-filled to ``length`` tokens."""
    if rows is None:
        return values
    full = values.new_zeros(values.shape[0], length, values.shape[2])
    full[:, rows] = values
    return full
