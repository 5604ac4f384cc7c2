"""The family of Hugging Face BEiT image classifiers."""

from typing import Dict, List

from torch import Tensor, nn

from captum_saco.attr._core.families.base import (
    BlockParts,
    HeadParts,
    ViTAdapter,
    ViTParts,
    _inexpressible,
    _unsupported,
    mean_readout,
)
from captum_saco.attr._core.families.hf_vit import HuggingFaceViTAdapter, joined_qkv


class HuggingFaceBeitAdapter(HuggingFaceViTAdapter):
    """Hugging Face ``BeitForImageClassification`` (transformers >= 5 layout), with
    a relative position bias in every layer, layer scale and a key projection
    without bias.

    Its head reads the mean of the patch tokens through the pooler's LayerNorm
    (``use_mean_pooling=True``, the default) or the class token; the read-out
    vector follows. Attention is switched to ``eager`` for the call, as for
    Hugging Face ViTs. For the relevance methods the relative position bias is a
    bias added to the scaled scores, computed for the configured image size; the
    bias shared by all layers (``use_shared_relative_position_bias``) is refused
    by them by name.
    """

    model_classes = (("transformers.models.beit.modeling_beit", "BeitForImageClassification"),)
    description = "Hugging Face BeitForImageClassification (transformers >= 5)"

    def __init__(self, model: nn.Module) -> None:
        ViTAdapter.__init__(self, model)  # not the ViT/DeiT layout checks
        self.backbone = model.beit
        if not hasattr(self.backbone, "layers"):
            raise _unsupported(
                model, "this Hugging Face model has the transformers 4 layout (encoder.layer)"
            )
        self.num_prefix_tokens = 1

    def reads_class_token(self) -> bool:
        return self.backbone.pooler.layernorm is None

    def readout(self, num_tokens: int) -> Tensor:
        """The class token, or with ``use_mean_pooling`` the uniform average over the
        patch tokens (all but the class token), the tokens the pooler averages."""
        if self.reads_class_token():
            return super().readout(num_tokens)
        return mean_readout(num_tokens, self.num_prefix_tokens)

    def embedding_path(self) -> Dict[str, str]:
        return {
            "beit.embeddings.patch_embeddings.projection": "linear",
            "beit.embeddings.dropout": "identity",
        }

    def parts(self) -> ViTParts:
        model, config = self.model, self.model.config
        if self.backbone.shared_position_bias is not None:
            raise _inexpressible(
                model,
                "a relative position bias shared by all layers "
                "(use_shared_relative_position_bias), computed before layer 0, which the "
                "relevance methods have no rule for (RawAttention, AttentionRollout, "
                "GradientWeightedAttention, AttentionGradCAM and AttCAT work on it)",
            )
        size = config.image_size
        height, width = size if isinstance(size, (tuple, list)) else (size, size)
        window = (height // config.patch_size, width // config.patch_size)
        blocks: List[BlockParts] = []
        for layer in self.backbone.layers:
            attn = layer.attention
            # the key projection has no bias
            qkv_weight, qkv_bias = joined_qkv(model, attn.q_proj, attn.k_proj, attn.v_proj)
            position_bias = layer.relative_position_bias
            blocks.append(
                BlockParts(
                    norm1=layer.layernorm_before,
                    qkv_weight=qkv_weight,
                    qkv_bias=qkv_bias,
                    num_heads=attn.num_attention_heads,
                    proj=attn.o_proj,
                    norm2=layer.layernorm_after,
                    fc1=layer.mlp.fc1,
                    act=layer.mlp.activation_fn,
                    fc2=layer.mlp.fc2,
                    ls1=layer.lambda_1 if isinstance(layer.lambda_1, Tensor) else None,
                    ls2=layer.lambda_2 if isinstance(layer.lambda_2, Tensor) else None,
                    attention_bias=None if position_bias is None else position_bias(window),
                )
            )
        if not isinstance(model.classifier, nn.Linear):
            raise _inexpressible(model, "no linear classifier head (num_labels=0?)")
        class_token = self.reads_class_token()
        fc_norm = nn.Identity() if class_token else self.backbone.pooler.layernorm
        return ViTParts(
            blocks=blocks,
            norm=self.backbone.layernorm,
            heads=[
                HeadParts.class_token_or_mean(
                    model.classifier, class_token, self.num_prefix_tokens, fc_norm
                )
            ],
            num_prefix_tokens=self.num_prefix_tokens,
        )
