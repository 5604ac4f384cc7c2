"""Tiny randomly initialised timm ViTs shared by the attribution tests."""

import timm
import torch
from torch import nn
from transformers import DeiTConfig


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


def tiny_hf_deit(cls: type) -> nn.Module:
    """A Hugging Face DeiT model class ``cls`` of the size of :func:`tiny_timm`."""
    torch.manual_seed(0)
    config = DeiTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=24,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=48,
        num_labels=5,
    )
    return cls(config).eval()
