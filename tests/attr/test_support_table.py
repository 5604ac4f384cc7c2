"""The README's architecture x method table is what actually runs: this test
calls every method on a tiny model of every listed architecture and fails if
the README's table differs from the outcome ("yes": a map; "refused": a
ValueError naming the model; anything else, such as a crash, fails the test)."""

import re
from functools import partial
from pathlib import Path
from typing import Callable, Dict, List

import open_clip
import pytest
import timm
import torch
import torchvision
from tiny_models import (
    tiny_beit,
    tiny_eva,
    tiny_hf_beit,
    tiny_hf_deit,
    tiny_hf_vit,
    tiny_timm,
    tiny_timm_distilled,
    tiny_torchvision,
)
from torch import nn
from transformers import (
    CLIPConfig,
    CLIPForImageClassification,
    CLIPModel,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
    DeiTForImageClassificationWithTeacher,
    Dinov2Config,
    Dinov2ForImageClassification,
    Dinov2WithRegistersConfig,
    Dinov2WithRegistersForImageClassification,
    SiglipConfig,
    SiglipForImageClassification,
    SiglipModel,
    SwinConfig,
    SwinForImageClassification,
)

from captum_saco.attr import (
    AttCAT,
    AttentionGradCAM,
    AttentionRollout,
    AttnLRP,
    ConservativeLRP,
    FullLRP,
    GradientWeightedAttention,
    PartialLRP,
    RawAttention,
    TransformerAttribution,
)
from captum_saco.models import ZeroShotClassifier

README = Path(__file__).resolve().parents[2] / "README.md"
START, END = "<!-- support-table:start -->", "<!-- support-table:end -->"

METHODS = [
    RawAttention,
    AttentionRollout,
    AttentionGradCAM,
    GradientWeightedAttention,
    AttCAT,
    TransformerAttribution,
    PartialLRP,
    FullLRP,
    ConservativeLRP,
    AttnLRP,
]


def _seeded(build: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    def seeded() -> nn.Module:
        torch.manual_seed(0)
        return build().eval()

    return seeded


def _zero_shot(model_class: type, config_class: type) -> nn.Module:
    """A zero-shot classifier over 5 random prompts of a tiny HF dual encoder."""
    config = config_class(
        text_config=dict(
            vocab_size=64,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=8,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=0,
        ),
        vision_config=dict(
            image_size=32,
            patch_size=8,
            hidden_size=24,
            intermediate_size=48,
            num_hidden_layers=2,
            num_attention_heads=2,
        ),
        projection_dim=16,
    )
    model = model_class(config).eval()
    dim = getattr(config, "projection_dim", 24) if model_class is CLIPModel else 24
    return ZeroShotClassifier(model, torch.randn(5, dim))


_HF_VISION = dict(
    image_size=32,
    patch_size=8,
    hidden_size=24,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=2,
)


def _hf_classifier(model_class: type, config_class: type) -> nn.Module:
    """A tiny HF CLIP or SigLIP image classifier with 5 classes."""
    return model_class(config_class(vision_config=_HF_VISION, num_labels=5)).eval()


#: architecture (as the README names it) -> builder of a tiny model on 32x32 images
ARCHITECTURES: Dict[str, Callable[[], nn.Module]] = {
    "timm ViT, class token": tiny_timm,
    "timm DeiT distilled": tiny_timm_distilled,
    "timm ViT, registers + `no_embed_class`": partial(tiny_timm, reg_tokens=2, no_embed_class=True),
    "timm ViT, `pre_norm` (CLIP layout)": partial(tiny_timm, pre_norm=True),
    "timm ViT, `embed_norm_layer`": partial(tiny_timm, embed_norm_layer=nn.LayerNorm),
    "timm ViT, `final_norm=False`": partial(tiny_timm, final_norm=False),
    "timm ViT, `qk_norm`": partial(tiny_timm, qk_norm=True),
    "timm ViT, `global_pool='avg'`": partial(tiny_timm, global_pool="avg"),
    "timm ViT, `global_pool='avg'`, no class token": partial(
        tiny_timm, global_pool="avg", class_token=False
    ),
    "timm ViT, `global_pool='map'` (SigLIP)": partial(tiny_timm, global_pool="map"),
    "HF ViT": tiny_hf_vit,
    "HF DeiT with teacher": partial(tiny_hf_deit, DeiTForImageClassificationWithTeacher),
    "HF BEiT": tiny_hf_beit,
    "torchvision ViT": tiny_torchvision,
    "HF DINOv2": _seeded(
        lambda: Dinov2ForImageClassification(
            Dinov2Config(
                image_size=32,
                patch_size=8,
                hidden_size=24,
                num_hidden_layers=2,
                num_attention_heads=2,
                num_labels=5,
            )
        )
    ),
    "HF DINOv2 with registers": _seeded(
        lambda: Dinov2WithRegistersForImageClassification(
            Dinov2WithRegistersConfig(
                image_size=32,
                patch_size=8,
                hidden_size=24,
                num_hidden_layers=2,
                num_attention_heads=2,
                num_register_tokens=2,
                num_labels=5,
            )
        )
    ),
    "HF DINOv2, SwiGLU MLP": _seeded(
        lambda: Dinov2ForImageClassification(
            Dinov2Config(
                image_size=32,
                patch_size=8,
                hidden_size=24,
                num_hidden_layers=2,
                num_attention_heads=2,
                num_labels=5,
                use_swiglu_ffn=True,
            )
        )
    ),
    "zero-shot CLIP, HF `CLIPModel`": _seeded(lambda: _zero_shot(CLIPModel, CLIPConfig)),
    "zero-shot CLIP, open_clip": _seeded(
        lambda: ZeroShotClassifier(
            open_clip.model.CLIP(
                embed_dim=16,
                vision_cfg=open_clip.model.CLIPVisionCfg(
                    layers=2, width=24, head_width=12, patch_size=8, image_size=32
                ),
                text_cfg=open_clip.model.CLIPTextCfg(
                    context_length=8, vocab_size=64, width=16, heads=2, layers=1
                ),
            ).eval(),
            torch.randn(5, 16),
        )
    ),
    "zero-shot CLIP, HF `CLIPVisionModelWithProjection`": _seeded(
        lambda: ZeroShotClassifier(
            CLIPVisionModelWithProjection(CLIPVisionConfig(**_HF_VISION, projection_dim=16)),
            torch.randn(5, 16),
            logit_scale=100.0,
        )
    ),
    "zero-shot CLIP, timm tower (`pre_norm`)": _seeded(
        lambda: ZeroShotClassifier(
            tiny_timm(pre_norm=True, num_classes=16), torch.randn(5, 16), logit_scale=100.0
        )
    ),
    "zero-shot SigLIP, HF `SiglipModel`": _seeded(lambda: _zero_shot(SiglipModel, SiglipConfig)),
    "HF `SiglipForImageClassification`": _seeded(
        lambda: _hf_classifier(SiglipForImageClassification, SiglipConfig)
    ),
    "HF `CLIPForImageClassification`": _seeded(
        lambda: _hf_classifier(CLIPForImageClassification, CLIPConfig)
    ),
    "timm Eva (EVA-02)": tiny_eva,
    "timm BEiT": tiny_beit,
    "timm Swin": _seeded(
        lambda: timm.models.swin_transformer.SwinTransformer(
            img_size=32,
            patch_size=4,
            window_size=4,
            embed_dim=24,
            depths=(1, 1),
            num_heads=(2, 2),
            num_classes=5,
        )
    ),
    "torchvision Swin": _seeded(
        lambda: torchvision.models.SwinTransformer(
            patch_size=[4, 4],
            embed_dim=24,
            depths=[1, 1],
            num_heads=[2, 2],
            window_size=[4, 4],
            num_classes=5,
        )
    ),
    "torchvision Swin v2": _seeded(
        lambda: torchvision.models.SwinTransformer(
            patch_size=[4, 4],
            embed_dim=24,
            depths=[1, 1],
            num_heads=[2, 2],
            window_size=[4, 4],
            num_classes=5,
            block=torchvision.models.swin_transformer.SwinTransformerBlockV2,
            downsample_layer=torchvision.models.swin_transformer.PatchMergingV2,
        )
    ),
    "HF Swin": _seeded(
        lambda: SwinForImageClassification(
            SwinConfig(
                image_size=32,
                patch_size=4,
                window_size=4,
                embed_dim=24,
                depths=[1, 1],
                num_heads=[2, 2],
                num_labels=5,
            )
        )
    ),
}


def outcome(build: Callable[[], nn.Module], method: type) -> str:
    model = build()
    try:
        method(model).attribute(torch.rand(2, 3, 32, 32), target=1, upsample=False)
    except ValueError as error:
        assert str(error).startswith(("model:", "discard_ratio:")), str(error)
        return "refused"
    return "yes"


def support_table() -> str:
    header = "| architecture | " + " | ".join(f"`{m.__name__}`" for m in METHODS) + " |"
    rows: List[str] = [header, "|---" * (len(METHODS) + 1) + "|"]
    for name, build in ARCHITECTURES.items():
        cells = [outcome(build, method) for method in METHODS]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def test_the_readme_table_is_what_runs() -> None:
    text = README.read_text()
    found = re.search(re.escape(START) + r"\n(.*?)\n" + re.escape(END), text, re.S)
    assert found, f"README.md lacks the markers {START} ... {END}"
    expected = support_table()
    assert found.group(1) == expected, "README.md's table should read:\n" + expected


if __name__ == "__main__":  # prints the table for the README
    print(support_table())
    pytest.main([__file__])
