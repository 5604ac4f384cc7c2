"""Cost of every attribution method on every supported model family, measured
side by side in one run.

Per family (a small random-init model of each, same width, depth and image size),
each method's median time of ``attribute`` on a batch over the median of its
baseline on the same model, in interleaved rounds: ``"forward"`` (one forward
pass without gradient) for the methods that need no gradient (raw attention,
rollout), ``"forward+backward"`` (a forward pass and the gradient of the summed
target logits with respect to the input) for the rest. The last column is that
ratio over the plain timm ViT's ratio for the same method (the issue's goal:
no family above 1.25). A method a family refuses prints "refused". The rounds
interleave every family's jobs.

    python benchmarks/bench_families.py [--rounds 5] [--device cpu] [--batch 8]
"""

import argparse
import statistics
from functools import partial
from typing import Callable, Dict, Optional

import open_clip
import timm
import torch
import torchvision
from common import add_device_option, interleaved_rounds
from torch import Tensor, nn
from transformers import (
    CLIPConfig,
    CLIPForImageClassification,
    Dinov2Config,
    Dinov2ForImageClassification,
    SiglipConfig,
    SiglipModel,
    ViTConfig,
    ViTForImageClassification,
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

SIZE = dict(image=96, patch=16, width=192, depth=6, heads=3, classes=10)
#: methods compared with a forward pass; the others with forward+backward
FORWARD_ONLY = (RawAttention, AttentionRollout)
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


def _timm(**kwargs) -> nn.Module:
    return timm.models.VisionTransformer(
        img_size=SIZE["image"],
        patch_size=SIZE["patch"],
        embed_dim=SIZE["width"],
        depth=SIZE["depth"],
        num_heads=SIZE["heads"],
        num_classes=SIZE["classes"],
        **kwargs,
    )


_HF = dict(
    image_size=SIZE["image"],
    patch_size=SIZE["patch"],
    hidden_size=SIZE["width"],
    num_hidden_layers=SIZE["depth"],
    num_attention_heads=SIZE["heads"],
    num_labels=SIZE["classes"],
)

def _timm_family(cls: type, **kwargs) -> nn.Module:
    """A timm model of class ``cls`` (Eva, Beit) of the plain ViT's size."""
    return cls(
        img_size=SIZE["image"],
        patch_size=SIZE["patch"],
        embed_dim=SIZE["width"],
        depth=SIZE["depth"],
        num_heads=SIZE["heads"],
        num_classes=SIZE["classes"],
        **kwargs,
    )


def _zero_shot_clip() -> nn.Module:
    """open_clip's CLIP of the plain ViT's image size and width, over 10 prompts."""
    clip = open_clip.model.CLIP(
        embed_dim=64,
        vision_cfg=open_clip.model.CLIPVisionCfg(
            layers=SIZE["depth"],
            width=SIZE["width"],
            head_width=SIZE["width"] // SIZE["heads"],
            patch_size=SIZE["patch"],
            image_size=SIZE["image"],
        ),
        text_cfg=open_clip.model.CLIPTextCfg(
            context_length=8, vocab_size=64, width=32, heads=2, layers=1
        ),
    )
    return ZeroShotClassifier(clip, torch.randn(SIZE["classes"], 64))


#: the image towers of the Hugging Face dual encoders, of the plain ViT's size
_HF_VISION = dict(
    image_size=SIZE["image"],
    patch_size=SIZE["patch"],
    hidden_size=SIZE["width"],
    intermediate_size=4 * SIZE["width"],
    num_hidden_layers=SIZE["depth"],
    num_attention_heads=SIZE["heads"],
)
_HF_TEXT = dict(
    vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2
)


def _zero_shot_siglip() -> nn.Module:
    """Hugging Face's SigLIP (attention-pooling head) over 10 prompts."""
    siglip = SiglipModel(SiglipConfig(vision_config=_HF_VISION, text_config=_HF_TEXT))
    return ZeroShotClassifier(siglip, torch.randn(SIZE["classes"], SIZE["width"]))


FAMILIES: Dict[str, Callable[[], nn.Module]] = {
    "timm ViT (class token)": _timm,
    "timm ViT pre_norm (CLIP layout)": partial(_timm, pre_norm=True),
    "timm ViT global_pool='avg'": partial(_timm, global_pool="avg"),
    "timm ViT global_pool='map'": partial(_timm, global_pool="map"),
    "timm ViT qk_norm": partial(_timm, qk_norm=True),
    "timm Eva (EVA-02 layout)": partial(
        _timm_family,
        timm.models.eva.Eva,
        mlp_ratio=4 * 2 / 3,
        swiglu_mlp=True,
        use_rot_pos_emb=True,
        ref_feat_shape=(SIZE["image"] // SIZE["patch"],) * 2,
    ),
    "timm BEiT": partial(
        _timm_family, timm.models.beit.Beit, use_rel_pos_bias=True, init_values=0.1
    ),
    "zero-shot CLIP (open_clip)": _zero_shot_clip,
    "zero-shot SigLIP (HF)": _zero_shot_siglip,
    "HF CLIPForImageClassification": lambda: CLIPForImageClassification(
        CLIPConfig(vision_config=_HF_VISION, text_config=_HF_TEXT)
    ),
    "timm Swin": lambda: timm.models.swin_transformer.SwinTransformer(
        img_size=SIZE["image"],
        patch_size=4,
        window_size=6,
        embed_dim=SIZE["width"] // 4,
        depths=(2, SIZE["depth"] - 2),
        num_heads=(SIZE["heads"], 2 * SIZE["heads"]),
        num_classes=SIZE["classes"],
    ),
    "HF ViT": lambda: ViTForImageClassification(ViTConfig(intermediate_size=768, **_HF)),
    "HF DINOv2": lambda: Dinov2ForImageClassification(Dinov2Config(**_HF)),
    "torchvision Swin v2": lambda: torchvision.models.SwinTransformer(
        patch_size=[4, 4],
        embed_dim=SIZE["width"] // 4,
        depths=[2, SIZE["depth"] - 2],
        num_heads=[SIZE["heads"], 2 * SIZE["heads"]],
        window_size=[6, 6],
        num_classes=SIZE["classes"],
        block=torchvision.models.swin_transformer.SwinTransformerBlockV2,
        downsample_layer=torchvision.models.swin_transformer.PatchMergingV2,
    ),
    "torchvision ViT": lambda: torchvision.models.VisionTransformer(
        image_size=SIZE["image"],
        patch_size=SIZE["patch"],
        num_layers=SIZE["depth"],
        num_heads=SIZE["heads"],
        hidden_dim=SIZE["width"],
        mlp_dim=4 * SIZE["width"],
        num_classes=SIZE["classes"],
    ),
}


def logits(model: nn.Module, images: Tensor) -> Tensor:
    output = model(images)
    return output if isinstance(output, Tensor) else output.logits


def forward_job(model: nn.Module, images: Tensor) -> Callable[[], object]:
    def job() -> object:
        with torch.no_grad():
            return logits(model, images)

    return job


def forward_backward_job(model: nn.Module, images: Tensor) -> Callable[[], object]:
    def job() -> object:
        pixels = images.detach().requires_grad_()
        return torch.autograd.grad(logits(model, pixels)[:, 0].sum(), pixels)

    return job


def jobs_of(model: nn.Module, images: Tensor) -> Dict[str, Callable[[], object]]:
    """The baselines and every method the model's family does not refuse."""
    jobs: Dict[str, Callable[[], object]] = {
        "forward": forward_job(model, images),
        "forward+backward": forward_backward_job(model, images),
    }
    for method in METHODS:
        try:
            explainer = method(model)
            explainer.attribute(images[:1], target=0, upsample=False)
        except ValueError:
            continue  # refused by name
        jobs[method.__name__] = partial(explainer.attribute, images, target=0, upsample=False)
    return jobs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    add_device_option(parser)
    args = parser.parse_args()
    images = torch.rand(args.batch, 3, SIZE["image"], SIZE["image"], device=args.device)
    # every family's jobs in one set of interleaved rounds, so that a slow spell of
    # the machine hits all families alike
    jobs: Dict[str, Callable[[], object]] = {}
    for family, build in FAMILIES.items():
        torch.manual_seed(0)
        model = build().eval().to(args.device)
        for name, job in jobs_of(model, images).items():
            jobs[f"{family}|{name}"] = job
    times = {
        key: statistics.median(t)
        for key, t in interleaved_rounds(jobs, args.rounds, args.device).items()
    }
    table: Dict[str, Dict[str, Optional[float]]] = {}
    for family in FAMILIES:
        table[family] = {}
        for method in METHODS:
            key = f"{family}|{method.__name__}"
            baseline = "forward" if method in FORWARD_ONLY else "forward+backward"
            table[family][method.__name__] = (
                times[key] / times[f"{family}|{baseline}"] if key in times else None
            )
    plain = table["timm ViT (class token)"]
    print(f"{'family':34s} {'method':26s} {'ratio':>7s} {'vs plain ViT':>13s}")
    for family, row in table.items():
        for name, ratio in row.items():
            if ratio is None:
                print(f"{family:34s} {name:26s} {'refused':>7s}")
                continue
            relative = ratio / plain[name] if plain[name] else float("nan")
            print(f"{family:34s} {name:26s} {ratio:7.2f} {relative:13.2f}")


if __name__ == "__main__":
    main()
