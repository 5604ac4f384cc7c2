"""Independent formulations for the LRP tests: a bias-free copy of a model (on
which conservative rules conserve the logit) and a copy with the LRP rules
patched in, whose plain autograd gradient times input is the relevance (as LXT's
efficient mode computes it). Written without the library's engine."""

import copy
import types
from typing import Callable, Tuple

import timm
import torch
from torch import Tensor, nn


def without_biases(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every bias-like term zero: the biases of the linear
    layers, norms and patch embedding, the class and register tokens and the
    position embedding (timm, Hugging Face and open_clip namings). Its logits are
    then a homogeneous function of the pixels."""
    copied = copy.deepcopy(model)
    with torch.no_grad():
        for name, parameter in copied.named_parameters():
            bias_like = name.endswith(("bias", "position_embedding.weight"))
            if bias_like or name.split(".")[-1] in _BIAS_LIKE:
                parameter.zero_()
    return copied


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


def _scaled_gradient(x: Tensor, factor: float) -> Tensor:
    """``x``, with its gradient multiplied by ``factor``."""
    return x * factor + (x * (1 - factor)).detach()


def _attention_rule_forward(rule: str) -> Callable:
    def forward(attn: nn.Module, x: Tensor, attn_mask=None, **_) -> Tensor:
        n, t, d = x.shape
        q, k, v = attn.qkv(x).reshape(n, t, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
        if rule == "uniform":  # AttnLRP: uniform rule on Q K^T and A V
            q, k, v = _scaled_gradient(q, 0.25), _scaled_gradient(k, 0.25), _scaled_gradient(v, 0.5)
        probabilities = (q * attn.scale @ k.transpose(-2, -1)).softmax(dim=-1)
        if rule == "detached":  # the AH rule
            probabilities = probabilities.detach()
        return attn.proj((probabilities @ v).transpose(1, 2).reshape(n, t, d))

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


def _identity_rule(act: nn.Module) -> Callable:
    def forward(x: Tensor) -> Tensor:
        y = act(x)
        return x * torch.where(x == 0, 0.0, y / x.masked_fill(x == 0, 1)).detach()

    return forward


def rules_patched_copy(model: nn.Module, attention_rule: str) -> nn.Module:
    """A copy of ``model`` whose plain autograd gradient is that of the LRP rules:
    every LayerNorm (block norms, final norm, ``norm_pre``, the embedding's norm)
    with the LN rule, the attention with ``attention_rule`` and the MLP activation
    with the identity rule (as LXT's efficient mode patches a model); timm ViTs and
    Hugging Face DINOv2."""
    copied = copy.deepcopy(model)
    for module in copied.modules():
        if isinstance(module, nn.LayerNorm):
            module.forward = types.MethodType(_ln_rule_forward, module)
        if isinstance(module, timm.models.vision_transformer.Attention):
            module.forward = types.MethodType(_attention_rule_forward(attention_rule), module)
        if isinstance(module, timm.layers.Mlp):
            module.act.forward = _identity_rule(copy.deepcopy(module.act))
        if type(module).__name__ in ("Dinov2Attention", "Dinov2WithRegistersAttention"):
            module.forward = types.MethodType(
                _hugging_face_attention_rule_forward(attention_rule), module
            )
        if type(module).__name__ in ("Dinov2MLP", "Dinov2WithRegistersMLP"):
            module.activation_fn.forward = _identity_rule(copy.deepcopy(module.activation_fn))
    return copied


def gradient_x_input(model: nn.Module, x: Tensor, target: Tensor) -> Tensor:
    x = x.clone().requires_grad_()
    model(x).gather(1, target[:, None]).sum().backward()
    return (x * x.grad).detach()
