"""The family of Hugging Face DINOv2 image classifiers (with or without registers)."""

from typing import Callable, Dict, List, Tuple

import torch
from torch import Tensor, nn

from captum_saco.attr._core.families.base import (
    ViTAdapter,
    ViTParts,
    _inexpressible,
    _joined,
    _second,
)
from captum_saco.attr._core.families.hf_vit import HuggingFaceViTAdapter


class HuggingFaceDinov2Adapter(HuggingFaceViTAdapter):
    """Hugging Face ``Dinov2ForImageClassification`` and
    ``Dinov2WithRegistersForImageClassification`` (transformers >= 5 layout).

    Its head reads the class token *and* the mean of the patch tokens (their
    concatenation goes into one linear layer; register tokens are in neither),
    so its read-out vector is ``s = ½ e_0 + ½ mean of the patch tokens``. Attention is switched to
    ``eager`` for the call, as for Hugging Face ViTs. The LRP methods have no rule
    for the concatenating head yet and refuse the model (see :meth:`parts`).
    """

    model_classes = (
        ("transformers.models.dinov2.modeling_dinov2", "Dinov2ForImageClassification"),
        (
            "transformers.models.dinov2_with_registers.modeling_dinov2_with_registers",
            "Dinov2WithRegistersForImageClassification",
        ),
    )
    description = (
        "Hugging Face Dinov2ForImageClassification and "
        "Dinov2WithRegistersForImageClassification (attention-map methods)"
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
        raise _inexpressible(
            self.model,
            "a head reading the class token and the mean of the patch tokens together, "
            "for which the LRP methods have no rule yet (RawAttention, AttentionRollout, "
            "GradientWeightedAttention, AttentionGradCAM and AttCAT work on it)",
        )
