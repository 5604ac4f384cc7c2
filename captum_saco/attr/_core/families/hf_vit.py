"""The family of Hugging Face ViT and DeiT image classifiers."""

from contextlib import contextmanager
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import torch
from torch import Tensor, nn

from captum_saco.attr._core.families.base import (
    BlockParts,
    HeadParts,
    ViTAdapter,
    ViTParts,
    _check_square_attention,
    _inexpressible,
    _joined,
    _second,
    _unsupported,
)


class HuggingFaceViTAdapter(ViTAdapter):
    """Hugging Face ``ViTForImageClassification``, ``DeiTForImageClassification`` and
    ``DeiTForImageClassificationWithTeacher`` (transformers >= 5 layout).

    The configured attention implementation (``sdpa`` by default) is switched to
    ``eager`` for the call, which returns the probabilities from each attention
    module; every configuration object's setting is restored afterwards.
    """

    model_classes = (
        ("transformers.models.vit.modeling_vit", "ViTForImageClassification"),
        ("transformers.models.deit.modeling_deit", "DeiTForImageClassification"),
        ("transformers.models.deit.modeling_deit", "DeiTForImageClassificationWithTeacher"),
    )
    description = (
        "Hugging Face ViTForImageClassification, DeiTForImageClassification and "
        "DeiTForImageClassificationWithTeacher (transformers >= 5)"
    )

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self.backbone = model.deit if hasattr(model, "deit") else model.vit
        if not hasattr(self.backbone, "layers"):
            raise _unsupported(
                model, "this Hugging Face model has the transformers 4 layout (encoder.layer)"
            )
        self.num_prefix_tokens = 2 if hasattr(self.backbone.embeddings, "distillation_token") else 1

    def blocks(self) -> List[nn.Module]:
        return list(self.backbone.layers)

    def patch_embedding(self) -> nn.Module:
        return self.backbone.embeddings.patch_embeddings.projection

    def embedding_path(self) -> Dict[str, str]:
        embeddings = "deit" if hasattr(self.model, "deit") else "vit"
        return {
            f"{embeddings}.embeddings.patch_embeddings.projection": "linear",
            f"{embeddings}.embeddings.dropout": "identity",
        }

    def prefix_tokens(self) -> Tensor:
        embeddings = self.backbone.embeddings
        return _joined([embeddings.cls_token, getattr(embeddings, "distillation_token", None)])

    def attention_sources(self) -> List[Tuple[nn.Module, Callable[[object], Tensor]]]:
        return [(layer.attention, _second) for layer in self.backbone.layers]

    @contextmanager
    def attention_mode(self) -> Iterator[None]:
        from transformers import PretrainedConfig

        configs = {
            id(module.config): module.config
            for module in self.model.modules()
            if isinstance(getattr(module, "config", None), PretrainedConfig)
        }
        saved = {key: config._attn_implementation_internal for key, config in configs.items()}
        try:
            for config in configs.values():
                config._attn_implementation = "eager"
            yield
        finally:
            for key, config in configs.items():
                config._attn_implementation_internal = saved[key]

    def parts(self) -> ViTParts:
        model = self.model
        blocks = []
        for layer in self.backbone.layers:
            attn = layer.attention
            qkv_weight, qkv_bias = joined_qkv(model, attn.q_proj, attn.k_proj, attn.v_proj)
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
                )
            )
        if hasattr(model, "cls_classifier"):
            classifiers = [model.cls_classifier, model.distillation_classifier]
        else:
            classifiers = [model.classifier]
        if not all(isinstance(head, nn.Linear) for head in classifiers):
            raise _inexpressible(model, "no linear classifier head (num_labels=0?)")
        return ViTParts(
            blocks=blocks,
            norm=self.backbone.layernorm,
            heads=[HeadParts((i,), head) for i, head in enumerate(classifiers)],
            num_prefix_tokens=self.num_prefix_tokens,
        )


def joined_qkv(
    model: nn.Module, q: nn.Linear, k: nn.Linear, v: nn.Linear
) -> Tuple[Tensor, Optional[Tensor]]:
    """The separate query, key and value projections of a Hugging Face attention as
    one ``(3 * D, D)`` weight and bias, as
    :class:`~captum_saco.attr._core.families.BlockParts` holds them: a projection
    without a bias (BEiT's key) contributes zeros, and the bias is ``None`` when
    none has one."""
    _check_square_attention(model, q.in_features, q.out_features)
    projections = (q, k, v)
    weight = torch.cat([p.weight for p in projections])
    if all(p.bias is None for p in projections):
        return weight, None
    biases = [p.weight.new_zeros(p.out_features) if p.bias is None else p.bias for p in projections]
    return weight, torch.cat(biases)
