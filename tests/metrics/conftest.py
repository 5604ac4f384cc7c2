"""Tiny models and data shared by the metric tests."""

from typing import Callable

import pytest
import torch
from torch import Tensor, nn


@pytest.fixture
def cnn() -> nn.Module:
    """A small random CNN on 3x8x8 images with 5 classes (pooling to a 4x4 grid)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 5),
    ).eval()


@pytest.fixture
def images() -> Tensor:
    torch.manual_seed(1)
    return torch.randn(4, 3, 8, 8)


@pytest.fixture
def linear_logit() -> Callable[[Tensor], Tensor]:
    """A two-class model whose class-0 logit is linear in the input.

    ``p(0 | x) = sigmoid(sum(weight * x))``, so replacing features changes the
    class-0 probability monotonically in their summed contribution
    ``weight * (x - baseline)``: the true impact of every group is known.
    """

    def make(weight: Tensor) -> Callable[[Tensor], Tensor]:
        def forward(x: Tensor) -> Tensor:
            z = (weight * x).flatten(1).sum(1)
            return torch.stack([z, torch.zeros_like(z)], dim=1)

        return forward

    return make


@pytest.fixture
def tiny_vit() -> nn.Module:
    """A random 2-block timm ViT on 1x8x8 images: 4x4 patches (a 2x2 grid),
    width 8, 3 classes."""
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    return VisionTransformer(
        img_size=8, patch_size=4, in_chans=1, num_classes=3, embed_dim=8, depth=2, num_heads=2
    ).eval()
