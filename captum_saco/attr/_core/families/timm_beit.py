"""The family of timm ``Beit`` (BEiT, BEiT v2)."""

from typing import Dict

import torch
from torch import nn

from captum_saco.attr._core.families.base import (
    BlockParts,
    ViTParts,
    _check_square_attention,
    _inexpressible,
    _unsupported,
)
from captum_saco.attr._core.families.timm_vit import TimmAdapter, block_norm, mlp_parts


class TimmBeitAdapter(TimmAdapter):
    """timm ``Beit``: BEiT and BEiT v2 (``beit_*``, ``beitv2_*``), with a relative
    position bias in every block (``use_rel_pos_bias``), layer scale
    (``init_values``), q/v biases without a key bias, and optionally SwiGLU MLPs
    and a norm before ``fc2`` (``swiglu_mlp``, ``scale_mlp``).

    The read-out vector follows ``global_pool``: ``"avg"`` (timm's default, with
    ``fc_norm``) averages the patch tokens, ``"token"`` reads the class token.
    Fused attention is switched off for the call; the probabilities are the output
    of ``attn.attn_drop``.

    For the relevance methods, the relative position bias is a bias added to the
    scaled attention scores (:class:`BlockParts` ``attention_bias``). The relative
    position bias shared by all blocks (``use_shared_rel_pos_bias``, BEiT's
    pre-training layout) is computed before block 0 by a module of its own; the
    relevance methods refuse it by name, the attention-map methods support it.
    """

    model_classes = (("timm.models.beit", "Beit"),)
    description = (
        "timm Beit (relative position bias, layer scale; global_pool='avg' or 'token')"
    )

    def __init__(self, model: nn.Module) -> None:
        from timm.models.beit import Attention, Block

        super().__init__(model)
        if model.global_pool not in ("avg", "token"):
            raise _unsupported(
                model,
                f"timm Beit with global_pool={model.global_pool!r} has no pooled head; "
                "global_pool='avg' (mean of the patch tokens) and 'token' (class token) "
                "are supported",
            )
        for index, block in enumerate(model.blocks):
            if type(block) is not Block or type(block.attn) is not Attention:
                raise _unsupported(
                    model, f"timm Beit block {index} is a {type(block).__name__}"
                )

    def embedding_path(self) -> Dict[str, str]:
        return {
            "patch_embed.proj": "linear",
            "patch_embed.norm": "patch_layernorm",
            "pos_drop": "identity",
        }

    def parts(self) -> ViTParts:
        model = self.model
        if model.rel_pos_bias is not None:
            raise _inexpressible(
                model,
                "a relative position bias shared by all blocks (use_shared_rel_pos_bias), "
                "computed before block 0, which the relevance methods have no rule for "
                "(RawAttention, AttentionRollout, GradientWeightedAttention, "
                "AttentionGradCAM and AttCAT work on it)",
            )
        if self.reads_class_token() and not isinstance(model.fc_norm, nn.Identity):
            raise _inexpressible(model, "a norm after pooling (fc_norm) of the class token")
        blocks = []
        for block in model.blocks:
            attn = block.attn
            dim = block.norm1.normalized_shape[0]
            _check_square_attention(model, dim, attn.qkv.out_features // 3)
            bias = None
            if attn.q_bias is not None:
                bias = torch.cat((attn.q_bias, attn.k_bias, attn.v_bias))
            blocks.append(
                BlockParts(
                    norm1=block_norm(model, block.norm1, "norm1"),
                    qkv_weight=attn.qkv.weight,
                    qkv_bias=bias,
                    num_heads=attn.num_heads,
                    proj=attn.proj,
                    norm2=block_norm(model, block.norm2, "norm2"),
                    ls1=block.gamma_1,
                    ls2=block.gamma_2,
                    attention_bias=(
                        None
                        if attn.relative_position_bias_table is None
                        else attn._get_rel_pos_bias()
                    ),
                    **mlp_parts(model, block.mlp),
                )
            )
        return self._one_head_parts(blocks)
