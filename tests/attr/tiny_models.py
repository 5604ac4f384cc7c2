"""Tiny randomly initialised ViTs of every supported family, shared by the
attribution tests (contract tests run on these, not on the reference file)."""

from typing import Callable, Dict

import timm
import torch
import torchvision
from torch import nn
from transformers import (
    BeitConfig,
    BeitForImageClassification,
    DeiTConfig,
    ViTConfig,
    ViTForImageClassification,
)


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


def perturbed(model: nn.Module) -> nn.Module:
    """``model`` with every parameter moved by noise (std 0.3): biases, q/v biases,
    relative position tables and layer scales that timm initialises to zero or a
    constant become generic, so that no rule is tested on a degenerate value."""
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    return model.eval()


#: EVA-02 options (timm ``eva02_base_patch14_224``: separate q/k/v, SwiGLU with a
#: norm before fc2, RoPE), at the size of :func:`tiny_timm`
EVA02 = dict(
    mlp_ratio=4 * 2 / 3,
    qkv_fused=False,
    swiglu_mlp=True,
    scale_mlp=True,
    use_rot_pos_emb=True,
    ref_feat_shape=(4, 4),
)


def tiny_eva(**kwargs) -> nn.Module:
    """A 2-block timm ``Eva`` with the EVA-02 options (:data:`EVA02`) on 32x32
    images with 8x8 patches, its parameters perturbed; ``kwargs`` override."""
    torch.manual_seed(0)
    config = dict(img_size=32, patch_size=8, embed_dim=24, depth=2, num_heads=2, num_classes=5)
    config.update(EVA02, **kwargs)
    return perturbed(timm.models.eva.Eva(**config))


def tiny_beit(**kwargs) -> nn.Module:
    """A 2-block timm ``Beit`` as timm's ``beit_base_patch16_224`` (relative
    position bias in every block, layer scale, no absolute position embedding) on
    32x32 images with 8x8 patches, its parameters perturbed; ``kwargs`` override."""
    torch.manual_seed(0)
    config = dict(img_size=32, patch_size=8, embed_dim=24, depth=2, num_heads=2, num_classes=5)
    config.update(use_abs_pos_emb=False, use_rel_pos_bias=True, init_values=0.1)
    config.update(kwargs)
    return perturbed(timm.models.beit.Beit(**config))


def tiny_hf_beit(**kwargs) -> nn.Module:
    """A Hugging Face ``BeitForImageClassification`` of the size of :func:`tiny_timm`
    with a relative position bias in every layer and layer scale, mean-pooled (as
    ``microsoft/beit-base-patch16-224``), its parameters perturbed; ``kwargs``
    override the config."""
    torch.manual_seed(0)
    config = dict(_HF_SIZE, use_relative_position_bias=True, layer_scale_init_value=0.1)
    config.update(kwargs)
    return perturbed(BeitForImageClassification(BeitConfig(**config)))


#: family name -> builder of its tiny model (32x32 images, 4x4 patches, 5 classes)
TINY_FAMILIES: Dict[str, Callable[[], nn.Module]] = {
    "timm": tiny_timm,
    "huggingface": tiny_hf_vit,
    "torchvision": tiny_torchvision,
}
