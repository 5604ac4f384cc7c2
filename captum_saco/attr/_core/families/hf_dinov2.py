"""The family of Hugging Face ``Dinov2ForImageClassification``."""

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
    """Hugging Face ``Dinov2ForImageClassification`` (transformers >= 5 layout).

    Its head reads the class token *and* the mean of the patch tokens (their
    concatenation goes into one linear layer), so its read-out vector is
    ``s = ½ e_0 + ½ mean of the patch tokens``. Attention is switched to
    ``eager`` for the call, as for Hugging Face ViTs. The LRP methods have no rule
    for the concatenating head yet and refuse the model (see :meth:`parts`).
    """

    model_classes = (
        ("transformers.models.dinov2.modeling_dinov2", "Dinov2ForImageClassification"),
    )
    description = "Hugging Face Dinov2ForImageClassification (attention-map methods)"

    def __init__(self, model: nn.Module) -> None:
        ViTAdapter.__init__(self, model)  # not the ViT/DeiT layout checks
        self.backbone = model.dinov2
        self.num_prefix_tokens = 1

    def blocks(self) -> List[nn.Module]:
        return list(self.backbone.encoder.layer)

    def patch_embedding(self) -> nn.Module:
        return self.backbone.embeddings.patch_embeddings.projection

    def prefix_tokens(self) -> Tensor:
        return _joined([self.backbone.embeddings.cls_token])

    def embedding_path(self) -> Dict[str, str]:
        return {
            "dinov2.embeddings.patch_embeddings.projection": "linear",
            "dinov2.embeddings.dropout": "identity",
        }

    def attention_sources(self) -> List[Tuple[nn.Module, Callable[[object], Tensor]]]:
        return [(layer.attention, _second) for layer in self.backbone.encoder.layer]

    def reads_class_token(self) -> bool:
        return False

    def readout(self, num_tokens: int) -> Tensor:
        """``½ e_0 + ½`` the uniform average over the patch tokens (all tokens after
        the class token), as the head reads ``[class token, mean of patch tokens]``."""
        s = torch.full((num_tokens,), 0.5 / (num_tokens - 1))
        s[0] = 0.5
        return s

    def parts(self) -> ViTParts:
        raise _inexpressible(
            self.model,
            "a head reading the class token and the mean of the patch tokens together, "
            "for which the LRP methods have no rule yet (RawAttention, AttentionRollout, "
            "GradientWeightedAttention, AttentionGradCAM and AttCAT work on it)",
        )
