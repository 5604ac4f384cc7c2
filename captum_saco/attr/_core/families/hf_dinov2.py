"""The family of Hugging Face DINOv2 image classifiers (with or without registers)."""

from typing import Callable, Dict, List, Tuple

import torch
from torch import Tensor, nn

from captum_saco.attr._core.families.base import (
    BlockParts,
    HeadParts,
    ViTAdapter,
    ViTParts,
    _inexpressible,
    _joined,
    _second,
)
from captum_saco.attr._core.families.hf_vit import HuggingFaceViTAdapter, joined_qkv


class HuggingFaceDinov2Adapter(HuggingFaceViTAdapter):
    """Hugging Face ``Dinov2ForImageClassification`` and
    ``Dinov2WithRegistersForImageClassification`` (transformers >= 5 layout).

    Its head reads the class token *and* the mean of the patch tokens (their
    concatenation goes into one linear layer; register tokens are in neither),
    so its read-out vector is ``s = ½ e_0 + ½ mean of the patch tokens``. Attention is switched to
    ``eager`` for the call, as for Hugging Face ViTs. Its blocks are canonical
    pre-norm blocks with layer scale, their MLP ``fc2(act(fc1(x)))`` or, with
    ``use_swiglu_ffn=True``, the gated ``down_proj(silu(gate_proj(x)) * up_proj(x))``.
    """

    model_classes = (
        ("transformers.models.dinov2.modeling_dinov2", "Dinov2ForImageClassification"),
        (
            "transformers.models.dinov2_with_registers.modeling_dinov2_with_registers",
            "Dinov2WithRegistersForImageClassification",
        ),
    )
    description = (
        "Hugging Face Dinov2ForImageClassification and Dinov2WithRegistersForImageClassification"
    )

    def __init__(self, model: nn.Module) -> None:
        ViTAdapter.__init__(self, model)  # not the ViT/DeiT layout checks
        registers = hasattr(model, "dinov2_with_registers")
        self.backbone_name = "dinov2_with_registers" if registers else "dinov2"
        self.backbone = getattr(model, self.backbone_name)
        self.num_prefix_tokens = 1 + (model.config.num_register_tokens if registers else 0)

    def blocks(self) -> List[nn.Module]:
        return list(self.backbone.encoder.layer)

    def patch_embedding(self) -> nn.Module:
        return self.backbone.embeddings.patch_embeddings.projection

    def prefix_tokens(self) -> Tensor:
        embeddings = self.backbone.embeddings
        return _joined([embeddings.cls_token, getattr(embeddings, "register_tokens", None)])

    def embedding_path(self) -> Dict[str, str]:
        return {
            f"{self.backbone_name}.embeddings.patch_embeddings.projection": "linear",
            f"{self.backbone_name}.embeddings.dropout": "identity",
        }

    def attention_sources(self) -> List[Tuple[nn.Module, Callable[[object], Tensor]]]:
        return [(layer.attention, _second) for layer in self.backbone.encoder.layer]

    def reads_class_token(self) -> bool:
        return False

    def readout(self, num_tokens: int) -> Tensor:
        """``½ e_0 + ½`` the uniform average over the patch tokens (the tokens after
        the class and register tokens), as the head reads ``[class token, mean of
        patch tokens]``."""
        s = torch.zeros(num_tokens)
        s[0] = 0.5
        s[self.num_prefix_tokens :] = 0.5 / (num_tokens - self.num_prefix_tokens)
        return s

    def parts(self) -> ViTParts:
        """The blocks, the final ``layernorm`` and the head
        ``classifier(concat(class token, mean of the patch tokens))``."""
        model = self.model
        if not isinstance(model.classifier, nn.Linear):
            raise _inexpressible(model, "no linear classifier head (num_labels=0?)")
        blocks = []
        for layer in self.blocks():
            attn = layer.attention
            qkv_weight, qkv_bias = joined_qkv(model, attn.q_proj, attn.k_proj, attn.v_proj)
            blocks.append(
                BlockParts(
                    norm1=layer.norm1,
                    qkv_weight=qkv_weight,
                    qkv_bias=qkv_bias,
                    num_heads=attn.num_attention_heads,
                    proj=attn.o_proj,
                    norm2=layer.norm2,
                    ls1=layer.layer_scale1.lambda1,
                    ls2=layer.layer_scale2.lambda1,
                    **_mlp_parts(layer.mlp),
                )
            )
        reads = (0, slice(self.num_prefix_tokens, None))
        return ViTParts(
            blocks=blocks,
            norm=self.backbone.layernorm,
            heads=[HeadParts(reads, model.classifier)],
            num_prefix_tokens=self.num_prefix_tokens,
        )


def _mlp_parts(mlp: nn.Module) -> Dict[str, object]:
    """The MLP fields of :class:`BlockParts` of a DINOv2 MLP ``fc2(act(fc1(x)))``
    or SwiGLU MLP ``down_proj(act_fn(gate_proj(x)) * up_proj(x))`` (``gate_proj``
    the gate, ``up_proj`` the value)."""
    if hasattr(mlp, "gate_proj"):
        return dict(fc1=mlp.gate_proj, fc_value=mlp.up_proj, act=mlp.act_fn, fc2=mlp.down_proj)
    return dict(fc1=mlp.fc1, act=mlp.activation_fn, fc2=mlp.fc2)
