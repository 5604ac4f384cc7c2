"""Independent formulations for the LRP tests: a bias-free copy of a model (on
which conservative rules conserve the logit) and a copy with the LRP rules
patched in, whose plain autograd gradient times input is the relevance (as LXT's
efficient mode computes it). Written without the library's engine."""

import copy
import types
from typing import Callable, Tuple

import timm
import torch
import torch.nn.functional as F
from timm.layers import AttentionPoolLatent, GluMlp, RmsNorm, SwiGLU, apply_rot_embed_cat
from torch import Tensor, nn
from transformers.models.beit.modeling_beit import BeitAttention, BeitMLP
from transformers.models.clip.modeling_clip import CLIPMLP, CLIPAttention
from transformers.models.siglip.modeling_siglip import (
    SiglipAttention,
    SiglipMLP,
    SiglipMultiheadAttentionPoolingHead,
)


def without_biases(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every bias-like term zero: the biases of the linear
    layers, norms and patch embedding (q/v biases included), the relative position
    bias tables, the class and register tokens and the position embedding (timm,
    Hugging Face and open_clip namings). Its logits are then a homogeneous function
    of the pixels."""
    copied = copy.deepcopy(model)
    with torch.no_grad():
        for name, parameter in copied.named_parameters():
            bias_like = name.endswith(("bias", "bias_table", "position_embedding.weight"))
            if bias_like or name.split(".")[-1] in _BIAS_LIKE:
                parameter.zero_()
    return copied



def assert_conserves(
    model: nn.Module, images: Tensor, target: Tensor, rtol: float = 1e-3
) -> Tensor:
    """Asserts that ConservativeLRP with the identity activation rule gives each
    example's pixel relevance the sum of its target logit within ``rtol`` (on a
    bias-free ``model``, see :func:`without_biases`); returns those logits."""
    from captum_saco._utils import model_output
    from captum_saco.attr import ConservativeLRP

    relevance = ConservativeLRP(model).attribute(images, target=target, activation_rule="identity")
    with torch.no_grad():
        logits = model_output(model(images)).gather(1, target[:, None]).flatten()
    torch.testing.assert_close(relevance.sum(dim=(1, 2, 3)), logits, rtol=rtol, atol=0)
    return logits

#: the class, register and position embeddings in timm's, Hugging Face's and open_clip's
#: namings (a Hugging Face position embedding is an ``nn.Embedding``'s ``weight``)
_BIAS_LIKE = {
    "cls_token",
    "reg_token",
    "pos_embed",
    "class_embedding",
    "positional_embedding",
    "position_embeddings",
    "register_tokens",
}


def _ln_rule_forward(norm: nn.LayerNorm, x: Tensor) -> Tensor:
    """LayerNorm with its standard deviation a constant (the LN rule)."""
    centred = x - x.mean(dim=-1, keepdim=True)
    std = (centred.square().mean(dim=-1, keepdim=True) + norm.eps).sqrt()
    return centred / std.detach() * norm.weight + norm.bias


def _rms_rule_forward(norm: nn.Module, x: Tensor) -> Tensor:
    """timm's RmsNorm with its root mean square a constant (LXT's ``rms_norm_forward``)."""
    normed = x * (x.square().mean(dim=-1, keepdim=True) + norm.eps).rsqrt().detach()
    return normed if norm.weight is None else normed * norm.weight


def _scaled_gradient(x: Tensor, factor: float) -> Tensor:
    """``x``, with its gradient multiplied by ``factor``."""
    return x * factor + (x * (1 - factor)).detach()


def _qkv_bias(attn: nn.Module):
    """The q/k/v bias of a timm Eva or BEiT attention (its key bias is zero)."""
    return None if attn.q_bias is None else torch.cat((attn.q_bias, attn.k_bias, attn.v_bias))


def _with_rule(rule: str, q: Tensor, k: Tensor, v: Tensor):
    """The operands of the attention products with the rule's gradients."""
    if rule == "uniform":  # AttnLRP: uniform rule on Q K^T and A V
        return _scaled_gradient(q, 0.25), _scaled_gradient(k, 0.25), _scaled_gradient(v, 0.5)
    return q, k, v


def _attend(rule: str, q: Tensor, k: Tensor, v: Tensor, scale: float, bias=None) -> Tensor:
    """Softmax attention of the heads ``(N, heads, T, d)`` under ``rule``, heads
    merged ``(N, T, heads * d)``, as the models' unfused paths compute it (the
    queries ``(N or 1, heads, Q, d)`` may be fewer than the keys: a pool's latents)."""
    n, t = v.shape[0], q.shape[2]
    q, k, v = _with_rule(rule, q, k, v)
    scores = q * scale @ k.transpose(-2, -1)
    probabilities = (scores if bias is None else scores + bias).softmax(dim=-1)
    if rule == "detached":  # the AH rule
        probabilities = probabilities.detach()
    return (probabilities @ v).transpose(1, 2).reshape(n, t, -1)


def _project(attn: nn.Module, merged: Tensor) -> Tensor:
    """A timm attention's output norm (if any) and projection."""
    return attn.proj(getattr(attn, "norm", nn.Identity())(merged))


def _heads(values: Tensor, num_heads: int) -> Tensor:
    n, t, _ = values.shape
    return values.reshape(n, t, num_heads, -1).transpose(1, 2)


def _attention_rule_forward(rule: str) -> Callable:
    """timm ``VisionTransformer`` attention (with its query/key norms)."""

    def forward(attn: nn.Module, x: Tensor, attn_mask=None, **_) -> Tensor:
        n, t, d = x.shape
        q, k, v = attn.qkv(x).reshape(n, t, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
        return _project(attn, _attend(rule, attn.q_norm(q), attn.k_norm(k), v, attn.scale))

    return forward


def _eva_attention_rule_forward(rule: str) -> Callable:
    """timm ``EvaAttention``: fused or separate q/k/v, query/key norms, RoPE on the
    tokens after the prefix tokens."""

    def forward(attn: nn.Module, x: Tensor, rope=None, **_) -> Tensor:
        if attn.qkv is not None:
            q, k, v = F.linear(x, attn.qkv.weight, _qkv_bias(attn)).chunk(3, dim=-1)
        else:
            q, k, v = attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)
        q, k, v = (_heads(y, attn.num_heads) for y in (q, k, v))
        q, k = attn.q_norm(q), attn.k_norm(k)
        if rope is not None:
            p, half = attn.num_prefix_tokens, attn.rotate_half
            q, k = (
                torch.cat([y[:, :, :p], apply_rot_embed_cat(y[:, :, p:], rope, half)], dim=2)
                for y in (q, k)
            )
        return _project(attn, _attend(rule, q, k, v, attn.scale))

    return forward


def _beit_attention_rule_forward(rule: str) -> Callable:
    """timm BEiT ``Attention``: q/v biases, relative position bias on the scores."""

    def forward(attn: nn.Module, x: Tensor, shared_rel_pos_bias=None) -> Tensor:
        qkv = F.linear(x, attn.qkv.weight, _qkv_bias(attn)).chunk(3, dim=-1)
        q, k, v = (_heads(y, attn.num_heads) for y in qkv)
        position_bias = None
        if attn.relative_position_bias_table is not None:
            position_bias = attn._get_rel_pos_bias()
        return _project(attn, _attend(rule, q, k, v, attn.scale, position_bias))

    return forward


def _hf_beit_attention_rule_forward(rule: str) -> Callable:
    """Hugging Face ``BeitAttention`` (the relative position bias arrives as the
    attention mask)."""

    def forward(attn: nn.Module, x: Tensor, attention_mask=None, **_) -> Tuple[Tensor, None]:
        q, k, v = (
            _heads(projection(x), attn.num_attention_heads)
            for projection in (attn.q_proj, attn.k_proj, attn.v_proj)
        )
        return attn.o_proj(_attend(rule, q, k, v, attn.scaling, attention_mask)), None

    return forward


def _gated_rule_forward(rule: str) -> Callable:
    """timm ``SwiGLU`` and ``GluMlp``: ``fc2(norm(act(gate) * value))``, and Hugging
    Face DINOv2's SwiGLU MLP ``down_proj(act_fn(gate_proj(x)) * up_proj(x))``, with
    AttnLRP's rules (identity rule on the activation, the uniform rule on the
    product: its gradient halved, LXT's ``gated_mlp_forward``) or CP-LRP's (the
    gate a constant, LXT's ``cp_gated_mlp_forward``)."""

    def forward(mlp: nn.Module, x: Tensor) -> Tensor:
        if isinstance(mlp, SwiGLU):
            gate, value = mlp.fc1_g(x), mlp.fc1_x(x)
        elif isinstance(mlp, GluMlp):
            first, second = mlp.fc1(x).chunk(2, dim=-1)
            gate, value = (second, first) if mlp.gate_last else (first, second)
        else:
            gate, value = mlp.gate_proj(x), mlp.up_proj(x)
        act = getattr(mlp, "act_fn", None) or mlp.act
        if rule == "uniform":
            hidden = _scaled_gradient(_identity_rule(act)(gate) * value, 0.5)
        else:
            hidden = act(gate.detach()) * value
        if hasattr(mlp, "down_proj"):
            return mlp.down_proj(hidden)
        return mlp.fc2(mlp.norm(hidden))

    return forward


def _hugging_face_attention_rule_forward(rule: str) -> Callable:
    """The same for a Hugging Face attention with separate q/k/v projections
    (DINOv2), returning ``(output, probabilities)`` as it does."""

    def forward(attn: nn.Module, x: Tensor, *args, **kwargs) -> Tuple[Tensor, Tensor]:
        n, t, d = x.shape
        q, k, v = (
            projection(x).view(n, t, -1, attn.head_dim).transpose(1, 2)
            for projection in (attn.q_proj, attn.k_proj, attn.v_proj)
        )
        if rule == "uniform":
            q, k, v = _scaled_gradient(q, 0.25), _scaled_gradient(k, 0.25), _scaled_gradient(v, 0.5)
        probabilities = (q * attn.scaling @ k.transpose(-2, -1)).softmax(dim=-1)
        if rule == "detached":
            probabilities = probabilities.detach()
        context = (probabilities @ v).transpose(1, 2).reshape(n, t, d)
        return attn.o_proj(context), probabilities

    return forward


def _clip_attention_rule_forward(rule: str) -> Callable:
    """Hugging Face ``CLIPAttention`` and ``SiglipAttention`` (separate q/k/v
    projections, ``out_proj``), returning ``(output, None)``."""

    def forward(attn: nn.Module, hidden_states: Tensor, *_, **__) -> Tuple[Tensor, None]:
        q, k, v = (
            _heads(p(hidden_states), attn.num_heads)
            for p in (attn.q_proj, attn.k_proj, attn.v_proj)
        )
        return attn.out_proj(_attend(rule, q, k, v, attn.scale)), None

    return forward


def _latent_pool_rule_forward(rule: str) -> Callable:
    """timm ``AttentionPoolLatent``: the latent queries attend to the tokens under
    ``rule``, then ``proj``, the MLP added residually and the pooling of the latents."""

    def forward(pool: nn.Module, x: Tensor, attn_mask=None) -> Tensor:
        n, t, d = x.shape
        q = _heads(pool.q(pool.latent), pool.num_heads)
        k, v = pool.kv(x).reshape(n, t, 2, pool.num_heads, -1).permute(2, 0, 3, 1, 4)
        latents = pool.proj(_attend(rule, pool.q_norm(q), pool.k_norm(k), v, pool.scale))
        latents = latents + pool.mlp(pool.norm(latents))
        return latents[:, 0] if pool.pool == "token" else latents.mean(dim=1)

    return forward


def _siglip_pool_rule_forward(rule: str) -> Callable:
    """Hugging Face ``SiglipMultiheadAttentionPoolingHead``: its
    ``nn.MultiheadAttention`` (one input projection for q, k and v) from the probe
    to the tokens under ``rule``, then the LayerNorm and the MLP added residually."""

    def forward(head: nn.Module, x: Tensor) -> Tensor:
        mha = head.attention
        wq, wk, wv = mha.in_proj_weight.chunk(3)
        bq, bk, bv = mha.in_proj_bias.chunk(3)
        q = _heads(F.linear(head.probe, wq, bq), mha.num_heads)
        k, v = (_heads(F.linear(x, w, b), mha.num_heads) for w, b in ((wk, bk), (wv, bv)))
        scale = (mha.embed_dim // mha.num_heads) ** -0.5
        latents = mha.out_proj(_attend(rule, q, k, v, scale))
        return (latents + head.mlp(head.layernorm(latents)))[:, 0]

    return forward


def _identity_rule(act: nn.Module) -> Callable:
    def forward(x: Tensor) -> Tensor:
        y = act(x)
        return x * torch.where(x == 0, 0.0, y / x.masked_fill(x == 0, 1)).detach()

    return forward


def rules_patched_copy(model: nn.Module, attention_rule: str) -> nn.Module:
    """A copy of ``model`` whose plain autograd gradient is that of the LRP rules:
    every LayerNorm and RmsNorm (block norms, final norm, ``norm_pre``, the
    embedding's norm, query/key norms, sub-LayerNorms, an attention pool's norms)
    with the LN rule, the attention (timm ViT, Eva, BEiT, Hugging Face BEiT,
    DINOv2, CLIP and SigLIP, and the attention-pooling heads: timm
    ``AttentionPoolLatent``, SigLIP's pooling head) with ``attention_rule``, the
    MLP activation with the identity rule and a gated MLP's (timm
    ``SwiGLU``/``GluMlp``, Hugging Face DINOv2's SwiGLU)
    product with the rule that goes with ``attention_rule`` (``"uniform"``:
    AttnLRP's uniform rule; ``"detached"``: CP-LRP's constant gate), as LXT's
    efficient mode patches a model."""
    forwards = {
        timm.models.vision_transformer.Attention: _attention_rule_forward,
        timm.models.eva.EvaAttention: _eva_attention_rule_forward,
        timm.models.beit.Attention: _beit_attention_rule_forward,
        BeitAttention: _hf_beit_attention_rule_forward,
        CLIPAttention: _clip_attention_rule_forward,
        SiglipAttention: _clip_attention_rule_forward,
        AttentionPoolLatent: _latent_pool_rule_forward,
        SiglipMultiheadAttentionPoolingHead: _siglip_pool_rule_forward,
        SwiGLU: _gated_rule_forward,
        GluMlp: _gated_rule_forward,
    }
    copied = copy.deepcopy(model)
    for module in copied.modules():
        if isinstance(module, nn.LayerNorm):
            module.forward = types.MethodType(_ln_rule_forward, module)
        if isinstance(module, RmsNorm):
            module.forward = types.MethodType(_rms_rule_forward, module)
        if type(module) in forwards:
            module.forward = types.MethodType(forwards[type(module)](attention_rule), module)
        if isinstance(module, timm.layers.Mlp):
            module.act.forward = _identity_rule(copy.deepcopy(module.act))
        if type(module).__name__ in ("Dinov2SwiGLUFFN", "Dinov2WithRegistersSwiGLUFFN"):
            module.forward = types.MethodType(_gated_rule_forward(attention_rule), module)
        if type(module).__name__ in ("Dinov2Attention", "Dinov2WithRegistersAttention"):
            module.forward = types.MethodType(
                _hugging_face_attention_rule_forward(attention_rule), module
            )
        if isinstance(module, (BeitMLP, CLIPMLP, SiglipMLP)) or type(module).__name__ in (
            "Dinov2MLP",
            "Dinov2WithRegistersMLP",
        ):
            module.activation_fn.forward = _identity_rule(copy.deepcopy(module.activation_fn))
    return copied


def gradient_x_input(model: nn.Module, x: Tensor, target: Tensor) -> Tensor:
    x = x.clone().requires_grad_()
    model(x).gather(1, target[:, None]).sum().backward()
    return (x * x.grad).detach()
