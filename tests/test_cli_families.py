"""The command line on every model family, offline, the code paths a user runs
(issue 22): ``hf:FOLDER`` of a Hugging Face classifier saved with its image
processor (DINOv2, BEiT, Swin, CLIP, SigLIP), a file model
``path/to/file.py:callable`` built by timm from a real pretrained name (EVA-02,
BEiT, SigLIP's attention-pooled ViT, Swin, CLIP's ViT layout) at a tiny size
(its ``pretrained_cfg`` the real one's, so ``--input-size`` fits it to 32
pixels) with its weights from a ``--checkpoint`` file, the real timm names themselves
(built offline with random weights, as without ``--pretrained``) and zero-shot
SigLIP. Without ``--methods``, the default methods a model does not define are
left out with a note; each run's table names the methods that ran."""

import re
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import pytest
import torch
import transformers
from torch import nn

from captum_saco.cli import main
from captum_saco.datasets import load_fashion_mnist_clip
from captum_saco.evaluation import DEFAULT_METHODS
from captum_saco.models import ModelLoadError, load_model
from tests.test_cli_models import image_folder
from tests.test_zero_shot import VISION as ZERO_SHOT_VISION
from tests.test_zero_shot import _text_config

QUICK = ["--metrics", "saco", "--n-groups", "4", "--no-progress", "--device", "cpu"]
#: the default methods that explain a Swin Transformer (it has no token attention maps)
SWIN_METHODS = ["random", "conservative_lrp", "attn_lrp", "integrated_gradients", "saliency"]

VISION = dict(image_size=32, patch_size=8, hidden_size=24, num_hidden_layers=2)
VISION.update(num_attention_heads=2, intermediate_size=48)
LABELS = dict(id2label={0: "dog", 1: "cat"}, label2id={"dog": 0, "cat": 1})
SQUARE = {"height": 32, "width": 32}


def _dinov2() -> Tuple[nn.Module, object]:
    config = transformers.Dinov2Config(
        **{k: v for k, v in VISION.items() if k != "intermediate_size"},
        use_swiglu_ffn=True,
        **LABELS,
    )
    processor = transformers.BitImageProcessor(size={"shortest_edge": 32}, crop_size=SQUARE)
    return transformers.Dinov2ForImageClassification(config), processor


def _beit() -> Tuple[nn.Module, object]:
    config = transformers.BeitConfig(**VISION, use_relative_position_bias=True, **LABELS)
    processor = transformers.BeitImageProcessor(size=SQUARE, do_center_crop=False)
    return transformers.BeitForImageClassification(config), processor


def _swin() -> Tuple[nn.Module, object]:
    config = transformers.SwinConfig(
        image_size=32, patch_size=4, embed_dim=12, depths=[1, 1], num_heads=[2, 2], window_size=4,
        **LABELS,
    )  # fmt: skip
    processor = transformers.ViTImageProcessor(size=SQUARE)
    return transformers.SwinForImageClassification(config), processor


def _clip() -> Tuple[nn.Module, object]:
    config = transformers.CLIPConfig(vision_config=VISION, **LABELS)
    processor = transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size=32)
    return transformers.CLIPForImageClassification(config), processor


def _siglip() -> Tuple[nn.Module, object]:
    config = transformers.SiglipConfig(vision_config=VISION, **LABELS)
    processor = transformers.SiglipImageProcessor(size=SQUARE)
    return transformers.SiglipForImageClassification(config), processor


#: family -> (builder of a tiny classifier and its image processor, the methods that run)
HF_FAMILIES: Dict[str, Tuple[Callable[[], Tuple[nn.Module, object]], List[str]]] = {
    "dinov2_swiglu": (_dinov2, list(DEFAULT_METHODS)),
    "beit": (_beit, list(DEFAULT_METHODS)),
    "swin": (_swin, SWIN_METHODS),
    "clip": (_clip, list(DEFAULT_METHODS)),
    "siglip": (_siglip, list(DEFAULT_METHODS)),
}

#: the smallest real timm name of each family, and the methods that run on it (the
#: SigLIP tags with an attention-pooling head are feature extractors, the one
#: fine-tuned on ImageNet a 400M-parameter model: the file model adds its classes)
TIMM_FAMILIES: Dict[str, Tuple[str, List[str]]] = {
    "eva02": ("eva02_tiny_patch14_336.mim_in22k_ft_in1k", list(DEFAULT_METHODS)),
    "beit": ("beit_base_patch16_224.in22k_ft_in22k_in1k", list(DEFAULT_METHODS)),
    "siglip_map": ("vit_base_patch16_siglip_224.webli", list(DEFAULT_METHODS)),
    "swin": ("swin_tiny_patch4_window7_224.ms_in1k", SWIN_METHODS),
    "clip": ("vit_base_patch32_clip_224.openai_ft_in1k", list(DEFAULT_METHODS)),
}

#: a user's file building each timm family's real name at a tiny size
TINY_TIMM = """
import timm

TINY = dict(img_size=32, patch_size=8, embed_dim=24, depth=2, num_heads=2, num_classes=3)
SWIN = dict(img_size=32, patch_size=4, window_size=4, embed_dim=24, depths=(1, 1))


def build(name):
    if name.startswith("swin"):
        return timm.create_model(name, **SWIN, num_heads=(2, 2), num_classes=3)
    return timm.create_model(name, **TINY)
""" + "".join(
    f"\n\ndef {family}():\n    return build({name!r})\n"
    for family, (name, _) in TIMM_FAMILIES.items()
)


def ran(output: str) -> List[str]:
    """The methods that the printed table has a row for, in its order."""
    table = output.split("\n\n")[0]
    return [m for m in re.findall(r"^(\w+) ", table, re.M) if m in DEFAULT_METHODS]


def left_out(methods: List[str]) -> List[str]:
    return [m for m in DEFAULT_METHODS if m not in methods]


def assert_ran(capsys: pytest.CaptureFixture, methods: List[str]) -> str:
    """Checks that the table names ``methods`` and the note the left-out defaults;
    returns what was written to stderr."""
    captured = capsys.readouterr()
    assert ran(captured.out) == methods
    if left_out(methods):
        note = f"the default methods {', '.join(left_out(methods))} are not defined"
        assert note in captured.err
    return captured.err


@pytest.mark.parametrize("family", HF_FAMILIES)
def test_a_saved_hugging_face_classifier_runs_every_method_it_defines(
    family: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    build, methods = HF_FAMILIES[family]
    torch.manual_seed(0)
    model, processor = build()
    model.save_pretrained(tmp_path / family)
    processor.save_pretrained(tmp_path / family)
    images = image_folder(tmp_path / "images", ["cat", "dog"])
    argv = ["--model", f"hf:{tmp_path / family}", "--images", str(images), "--target", "label"]
    assert main(argv + QUICK) == 0
    assert_ran(capsys, methods)


@pytest.mark.parametrize("family", TIMM_FAMILIES)
def test_a_file_model_built_from_a_real_timm_name_with_a_checkpoint_runs_its_methods(
    family: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    (tmp_path / "tiny_timm.py").write_text(TINY_TIMM)
    spec = f"{tmp_path}/tiny_timm.py:{family}"
    torch.manual_seed(1)
    torch.save(load_model(spec).model.state_dict(), tmp_path / "weights.pt")
    images = image_folder(tmp_path / "images", ["a"], 48)
    argv = ["--model", spec, "--checkpoint", str(tmp_path / "weights.pt"), "--images", str(images)]
    assert main(argv + ["--input-size", "32", *QUICK]) == 0
    assert_ran(capsys, TIMM_FAMILIES[family][1])


@pytest.mark.parametrize("family", [f for f in TIMM_FAMILIES if f != "siglip_map"])
def test_a_real_timm_name_builds_offline_with_random_weights_its_preprocessing_and_classes(
    family: str,
) -> None:
    loaded = load_model(f"timm:{TIMM_FAMILIES[family][0]}")
    assert loaded.random_weights and not loaded.model.training
    config = loaded.model.pretrained_cfg
    assert loaded.preprocessing.input_size == config["input_size"]
    assert loaded.preprocessing.mean == tuple(config["mean"])
    assert len(loaded.class_names) == len(loaded.synsets) == loaded.model.num_classes == 1000


def test_a_timm_feature_extractor_is_refused_naming_the_ways_out() -> None:
    with pytest.raises(ModelLoadError, match="is a feature extractor .* --zero-shot"):
        load_model(f"timm:{TIMM_FAMILIES['siglip_map'][0]}")


def test_zero_shot_siglip_runs_every_method_through_its_attention_pooling_head(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    tokenizer = load_fashion_mnist_clip()[1]  # the character-level CLIP tokenizer it ships
    torch.manual_seed(0)
    config = transformers.SiglipConfig(
        text_config=_text_config(tokenizer), vision_config=ZERO_SHOT_VISION
    )
    folder = tmp_path / "siglip"
    transformers.SiglipModel(config).save_pretrained(folder)
    image_processor = transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size=32)
    transformers.CLIPProcessor(image_processor, tokenizer).save_pretrained(folder)
    images = image_folder(tmp_path / "images", ["cat", "dog"])
    argv = ["--model", f"hf:{folder}", "--images", str(images), "--zero-shot", "cat,dog,car"]
    assert main(argv + QUICK) == 0
    assert_ran(capsys, list(DEFAULT_METHODS))


@pytest.mark.parametrize("saved", ["clip", "siglip", "dinov2"])
def test_a_hugging_face_model_saved_without_its_classifier_is_refused_naming_the_ways_out(
    saved: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # hf:openai/clip-vit-base-patch32, hf:google/siglip-base-patch16-224 and
    # hf:facebook/dinov2-small hold no image classification head
    tokenizer = load_fashion_mnist_clip()[1]
    model = {
        "clip": lambda: transformers.CLIPModel(
            transformers.CLIPConfig(text_config=_text_config(tokenizer), vision_config=VISION)
        ),
        "siglip": lambda: transformers.SiglipModel(
            transformers.SiglipConfig(text_config=_text_config(tokenizer), vision_config=VISION)
        ),
        "dinov2": lambda: transformers.Dinov2Model(
            transformers.Dinov2Config(
                **{k: v for k, v in VISION.items() if k != "intermediate_size"}
            )
        ),
    }[saved]()
    model.save_pretrained(tmp_path / saved)
    image_processor = transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size=32)
    if saved == "dinov2":
        image_processor.save_pretrained(tmp_path / saved)
    else:  # with the processor the zero-shot path uses, saved as processor_config.json
        transformers.CLIPProcessor(image_processor, tokenizer).save_pretrained(tmp_path / saved)
    images = image_folder(tmp_path / "images", ["cat"])
    assert main(["--model", f"hf:{tmp_path / saved}", "--images", str(images), *QUICK]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "is not an image classifier" in err and "would draw classifier." in err
    assert "--zero-shot" in err
