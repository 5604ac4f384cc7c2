"""The CLIP of tests/data/clip_reference.pt built in open_clip, Hugging Face (the
dual encoder, and the image tower with its projection) and timm (the image
tower), from the recorded weights of each naming."""

from functools import partial
from pathlib import Path
from typing import Any, Dict

import torch
import transformers
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
from timm.models.vision_transformer import VisionTransformer

REFERENCE = Path(__file__).parent / "data" / "clip_reference.pt"


def load_reference() -> Dict[str, Any]:
    return torch.load(REFERENCE, weights_only=True)


def open_clip_model(reference: Dict[str, Any]) -> CLIP:
    model = CLIP(
        embed_dim=32,
        vision_cfg=CLIPVisionCfg(layers=3, width=48, head_width=12, patch_size=16, image_size=96),
        text_cfg=CLIPTextCfg(context_length=12, vocab_size=512, width=32, heads=4, layers=2),
        quick_gelu=True,
    )
    model.load_state_dict(reference["state_dict"])
    return model.eval()


def hugging_face_model(reference: Dict[str, Any]) -> transformers.CLIPModel:
    model = transformers.CLIPModel(transformers.CLIPConfig(**reference["hf_config"]))
    model.load_state_dict(reference["state_dict_hf"])
    return model.eval()


def hugging_face_tower(reference: Dict[str, Any]) -> transformers.CLIPVisionModelWithProjection:
    """The image tower with its projection; its output's ``image_embeds`` is the
    projected image embedding."""
    config = transformers.CLIPConfig(**reference["hf_config"])
    vision_config = config.vision_config
    vision_config.projection_dim = config.projection_dim
    model = transformers.CLIPVisionModelWithProjection(vision_config)
    prefixes = ("vision_model.", "visual_projection.")
    model.load_state_dict(
        {k: v for k, v in reference["state_dict_hf"].items() if k.startswith(prefixes)}
    )
    return model.eval()


def timm_tower(reference: Dict[str, Any]) -> VisionTransformer:
    """The image tower; its output is the projected image embedding."""
    tower = VisionTransformer(
        img_size=96,
        patch_size=16,
        embed_dim=48,
        depth=3,
        num_heads=4,
        pre_norm=True,
        num_classes=32,
        act_layer="quick_gelu",
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-5),
        qkv_bias=True,
    )
    tower.load_state_dict(reference["state_dict_timm"])
    return tower.eval()


def logit_scale(reference: Dict[str, Any]) -> float:
    """The recorded model's factor, exp of its float32 logit_scale parameter."""
    return float(reference["state_dict"]["logit_scale"].double().exp())
