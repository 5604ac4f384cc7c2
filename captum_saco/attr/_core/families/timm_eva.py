"""The family of timm ``Eva`` (EVA, EVA-02 and the timm ViTs built on it)."""

from typing import Dict, Optional, Tuple

import torch
from torch import Tensor, nn

from captum_saco.attr._core.families.base import (
    BlockParts,
    ViTParts,
    _check_square_attention,
    _inexpressible,
    _unsupported,
)
from captum_saco.attr._core.families.timm_vit import (
    TimmAdapter,
    block_norm,
    mlp_parts,
    optional_norm,
)


class TimmEvaAdapter(TimmAdapter):
    """timm ``Eva``: EVA and EVA-02 (``eva02_*``), with rotary position embedding
    (RoPE), SwiGLU MLPs (``swiglu_mlp``, packed as ``GluMlp`` or split as
    ``SwiGLU``), sub-LayerNorms (``scale_mlp``: a norm before ``fc2``;
    ``scale_attn_inner``: a norm of the attention output before ``proj``),
    query/key norms (``qk_norm``), layer scale (``init_values``), register tokens
    and a pre-block norm (``use_pre_transformer_norm``).

    The read-out vector follows ``global_pool``: ``"avg"`` (timm's default for
    Eva) averages the tokens after the prefix tokens (class and register tokens),
    ``"token"`` reads the class token. Fused attention is switched off for the
    call, as for timm ``VisionTransformer``; the probabilities are the output of
    ``attn.attn_drop``.

    The relevance methods replay each block in canonical form (:meth:`parts`):
    RoPE rotates the queries and keys of the patch tokens after their norms, as
    timm does (the prefix tokens are not rotated). They refuse, by name, the
    parts it cannot express: post-norm blocks (``use_post_norm``), the
    ``AttentionRope`` attention (``attn_type="rope"``), gated attention, the
    per-depth (``rope_type="mixed"``) and other non-``"cat"`` rotary embeddings,
    and RoPE with ``dynamic_img_size``. RmsNorm layers (``norm_layer=RmsNorm``)
    take the LayerNorm rule as LayerNorms do (their root mean square a constant).
    """

    model_classes = (("timm.models.eva", "Eva"),)
    description = (
        "timm Eva (EVA-02: RoPE, SwiGLU, sub-LN, qk_norm, layer scale; "
        "global_pool='avg' or 'token')"
    )

    def __init__(self, model: nn.Module) -> None:
        from timm.models.eva import EvaAttention, EvaBlock

        super().__init__(model)
        if model.attn_pool is not None or model.global_pool not in ("avg", "token"):
            raise _unsupported(
                model,
                f"timm Eva with global_pool={model.global_pool!r} reads its tokens in a way "
                "no read-out vector over the tokens is defined for here; global_pool='avg' "
                "(mean of the patch tokens) and 'token' (class token) are supported",
            )
        for index, block in enumerate(model.blocks):
            if type(block) is not EvaBlock or type(block.attn) is not EvaAttention:
                raise _unsupported(
                    model,
                    f"timm Eva block {index} is a {type(block).__name__} with a "
                    f"{type(block.attn).__name__}; pre-norm EvaBlocks with EvaAttention "
                    "are supported (not use_post_norm, not attn_type='rope')",
                )

    def embedding_path(self) -> Dict[str, str]:
        path = {
            "patch_embed.proj": "linear",
            "patch_embed.norm": "patch_layernorm",
            "pos_drop": "identity",
            "norm_pre": "layernorm",
        }
        if self.model.patch_drop is not None:
            path["patch_drop"] = "identity"
        return path

    def _rope(self) -> Optional[Tensor]:
        """The rotary embedding ``(number of patches, 2 * head_dim)`` of the model's
        patch grid, or ``None`` without RoPE."""
        from timm.layers import RotaryEmbeddingCat

        rope = self.model.rope
        if rope is None:
            return None
        if type(rope) is not RotaryEmbeddingCat or self.model.rope_mixed:
            raise _inexpressible(self.model, f"a {type(rope).__name__} rotary embedding")
        if rope.feat_shape is None:
            raise _inexpressible(self.model, "a rotary embedding for dynamic image sizes")
        return rope.get_embed()

    def parts(self) -> ViTParts:
        model = self.model
        if self.reads_class_token() and not isinstance(model.fc_norm, nn.Identity):
            raise _inexpressible(model, "a norm after pooling (fc_norm) of the class token")
        rope = self._rope()
        blocks = []
        for block in model.blocks:
            attn = block.attn
            if attn.gate is not None:
                raise _inexpressible(model, "a gated attention output (gated_attn)")
            dim = block.norm1.normalized_shape[0]
            _check_square_attention(model, dim, attn.num_heads * attn.head_dim)
            weight, bias = _qkv(attn)
            blocks.append(
                BlockParts(
                    norm1=block_norm(model, block.norm1, "norm1"),
                    qkv_weight=weight,
                    qkv_bias=bias,
                    num_heads=attn.num_heads,
                    proj=attn.proj,
                    norm2=block_norm(model, block.norm2, "norm2"),
                    ls1=block.gamma_1,
                    ls2=block.gamma_2,
                    q_norm=optional_norm(model, attn.q_norm, "the query norm (qk_norm)"),
                    k_norm=optional_norm(model, attn.k_norm, "the key norm (qk_norm)"),
                    rope=rope,
                    rope_skip=attn.num_prefix_tokens,
                    rope_half=attn.rotate_half,
                    attn_norm=optional_norm(model, attn.norm, "the attention output norm"),
                    **mlp_parts(model, block.mlp),
                )
            )
        return self._one_head_parts(blocks)


def _qkv(attn: nn.Module) -> Tuple[Tensor, Optional[Tensor]]:
    """The q/k/v weight ``(3 * D, D)`` and bias of a timm ``EvaAttention``, fused or
    not; its key bias is zero (a buffer of zeros when fused, none when not)."""
    if attn.qkv is not None:
        if attn.q_bias is None:
            return attn.qkv.weight, attn.qkv.bias
        return attn.qkv.weight, torch.cat((attn.q_bias, attn.k_bias, attn.v_bias))
    layers = (attn.q_proj, attn.k_proj, attn.v_proj)
    weight = torch.cat([layer.weight for layer in layers])
    if all(layer.bias is None for layer in layers):
        return weight, None
    biases = [
        torch.zeros_like(layer.weight[:, 0]) if layer.bias is None else layer.bias
        for layer in layers
    ]
    return weight, torch.cat(biases)
