"""Tiny randomly initialised ViTs of every supported family, shared by the
attribution tests (contract tests run on these, not on the reference file)."""

from typing import Callable, Dict

import timm
import torch
import torchvision
from torch import nn
from transformers import DeiTConfig, ViTConfig, ViTForImageClassification


def tiny_timm(**kwargs) -> nn.Module:
    """A 2-block timm ViT on 32x32 images with 8x8 patches; ``kwargs`` override."""
    torch.manual_seed(0)
    config = dict(img_size=32, patch_size=8, embed_dim=24, depth=2, num_heads=2, num_classes=5)
    config.update(kwargs)
    return timm.models.VisionTransformer(**config).eval()


def tiny_timm_distilled() -> nn.Module:
    """The same size as :func:`tiny_timm`, as a distilled DeiT (two prefix tokens)."""
    torch.manual_seed(0)
    return timm.models.deit.VisionTransformerDistilled(
        img_size=32, patch_size=8, embed_dim=24, depth=2, num_heads=2, num_classes=5
    ).eval()


_HF_SIZE = dict(
    image_size=32,
    patch_size=8,
    hidden_size=24,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=48,
    num_labels=5,
)


def tiny_hf_deit(cls: type) -> nn.Module:
    """A Hugging Face DeiT model class ``cls`` of the size of :func:`tiny_timm`."""
    torch.manual_seed(0)
    return cls(DeiTConfig(**_HF_SIZE)).eval()


def tiny_hf_vit() -> nn.Module:
    """A Hugging Face ``ViTForImageClassification`` of the size of :func:`tiny_timm`."""
    torch.manual_seed(0)
    return ViTForImageClassification(ViTConfig(**_HF_SIZE)).eval()


def tiny_torchvision() -> nn.Module:
    """A torchvision ``VisionTransformer`` of the size of :func:`tiny_timm`."""
    torch.manual_seed(0)
    return torchvision.models.VisionTransformer(
        image_size=32,
        patch_size=8,
        num_layers=2,
        num_heads=2,
        hidden_dim=24,
        mlp_dim=48,
        num_classes=5,
    ).eval()


#: family name -> builder of its tiny model (32x32 images, 4x4 patches, 5 classes)
TINY_FAMILIES: Dict[str, Callable[[], nn.Module]] = {
    "timm": tiny_timm,
    "huggingface": tiny_hf_vit,
    "torchvision": tiny_torchvision,
}
