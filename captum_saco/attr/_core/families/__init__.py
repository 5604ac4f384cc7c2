"""The Vision Transformer families, one file each.

A family is a :class:`~captum_saco.attr._core.families.base.ViTAdapter`
subclass that names where its models keep the tokens, blocks, attention
probabilities, norms, pooling and head. Adding a family is one file here and
one entry in :data:`FAMILIES`.
"""

import sys
from typing import List, Type

from torch import nn

from captum_saco.attr._core.families.base import (
    AttentionPool,
    AttentionRecord,
    BlockParts,
    HeadParts,
    LinearMap,
    ViTAdapter,
    ViTParts,
    _model_lock,
    _unsupported,
    this_thread_only,
)
from captum_saco.attr._core.families.hf_beit import HuggingFaceBeitAdapter
from captum_saco.attr._core.families.hf_clip import HuggingFaceClipClassifierAdapter
from captum_saco.attr._core.families.hf_dinov2 import HuggingFaceDinov2Adapter
from captum_saco.attr._core.families.hf_siglip import HuggingFaceSiglipClassifierAdapter
from captum_saco.attr._core.families.hf_vit import HuggingFaceViTAdapter
from captum_saco.attr._core.families.swin import swin_adapter_for, swin_refusal
from captum_saco.attr._core.families.timm_beit import TimmBeitAdapter
from captum_saco.attr._core.families.timm_eva import TimmEvaAdapter
from captum_saco.attr._core.families.timm_vit import TimmViTAdapter
from captum_saco.attr._core.families.torchvision_vit import TorchvisionViTAdapter
from captum_saco.attr._core.families.zero_shot import ZeroShotAdapter

#: every family, in the order :func:`adapter_for` tries them
FAMILIES: List[Type[ViTAdapter]] = [
    TimmViTAdapter,
    TimmEvaAdapter,
    TimmBeitAdapter,
    HuggingFaceViTAdapter,
    HuggingFaceDinov2Adapter,
    HuggingFaceBeitAdapter,
    HuggingFaceClipClassifierAdapter,
    HuggingFaceSiglipClassifierAdapter,
    TorchvisionViTAdapter,
    ZeroShotAdapter,
]

SUPPORTED_MODELS = ", ".join(family.description for family in FAMILIES)


def _is_member(model: nn.Module, family: Type[ViTAdapter]) -> bool:
    """Whether ``model`` is an instance of one of the family's classes. A library
    module that is not imported yet cannot have made ``model``, so nothing is
    imported here."""
    for module_name, class_name in family.model_classes:
        module = sys.modules.get(module_name)
        cls = getattr(module, class_name, None) if module is not None else None
        if cls is not None and isinstance(model, cls):
            return True
    return False


def adapter_for(model: nn.Module) -> ViTAdapter:
    """The adapter of ``model``'s family.

    Raises:
        TypeError: if ``model`` is not an ``nn.Module``.
        ValueError: if the model is not one of the supported ViTs (Swin
            Transformers are refused naming the methods that explain them), or
            classifies from something no read-out vector over the tokens is
            defined for.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    for family in FAMILIES:
        if _is_member(model, family):
            return family(model)
    if swin_adapter_for(model) is not None:
        raise swin_refusal(model)
    raise _unsupported(model, f"{type(model).__name__} is not a supported Vision Transformer")


def vit_parts(model: nn.Module) -> ViTParts:
    """``model`` in the canonical pre-norm ViT form of :class:`ViTParts`.

    Args:
        model (nn.Module): a supported ViT (see :data:`SUPPORTED_MODELS`).

    Returns:
        ViTParts: the blocks, final norm and classifier heads, sharing the model's
        parameters (no copies of ``nn.Module`` weights except Hugging Face's
        separate q/k/v weights, which are concatenated).

    Raises:
        ValueError: for unsupported models, for parts the canonical form cannot
            express (timm post-norm blocks, torchvision ``representation_size``,
            ...) and for attention-pooling (MAP) heads, which have no relevance
            rule yet.

    Examples::

        >>> import torch, timm
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> vit = timm.models.VisionTransformer(
        ...     img_size=32, patch_size=8, embed_dim=24, depth=2, num_heads=2, num_classes=5)
        >>> parts = vit_parts(vit)
        >>> len(parts.blocks), parts.blocks[0].qkv_weight.shape, parts.num_prefix_tokens
        (2, torch.Size([72, 24]), 1)
    """
    return adapter_for(model).relevance_parts()


__all__ = [
    "FAMILIES",
    "SUPPORTED_MODELS",
    "AttentionPool",
    "AttentionRecord",
    "BlockParts",
    "HeadParts",
    "LinearMap",
    "ViTAdapter",
    "ViTParts",
    "_model_lock",
    "adapter_for",
    "this_thread_only",
    "vit_parts",
]
