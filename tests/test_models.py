"""Models by name with their own preprocessing, class names and weights
(``captum_saco.models``), as ``--model`` loads them."""

import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from captum_saco.models import ModelLoadError, Preprocessing, load_model
from captum_saco.models.loading import did_you_mean


def save_tiny_hf_vit(folder: Path, id2label=None) -> Path:
    """A random tiny ``ViTForImageClassification`` and its ``ViTImageProcessor``
    (32 px, mean and std 0.5, as HF ViT checkpoints have) saved with
    ``save_pretrained``, for ``hf:FOLDER``."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    id2label = id2label or {0: "dog", 1: "cat"}
    config = ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=len(id2label),
        id2label=id2label,
        label2id={v: k for k, v in id2label.items()},
    )
    torch.manual_seed(0)
    ViTForImageClassification(config).save_pretrained(folder)
    processor = ViTImageProcessor(
        size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )
    processor.save_pretrained(folder)
    return folder


def photo(size=(32, 32)) -> Image.Image:
    torch.manual_seed(1)
    pixels = torch.randint(0, 256, (size[1], size[0], 3), dtype=torch.uint8)
    return Image.fromarray(pixels.numpy(), "RGB")


def test_hf_local_folder_is_preprocessed_by_its_image_processor(tmp_path: Path) -> None:
    from transformers import AutoImageProcessor

    folder = save_tiny_hf_vit(tmp_path / "vit")
    loaded = load_model(f"hf:{folder}")
    p = loaded.preprocessing
    assert (p.input_size, p.mean, p.std, p.interpolation) == (
        (3, 32, 32),
        (0.5, 0.5, 0.5),
        (0.5, 0.5, 0.5),
        "bilinear",
    )
    expected = AutoImageProcessor.from_pretrained(folder)(photo(), return_tensors="pt")
    torch.testing.assert_close(p.transform()(photo()), expected["pixel_values"][0])
    assert loaded.class_names == ["dog", "cat"] and not loaded.random_weights


def test_torchvision_model_is_preprocessed_as_its_weights_transforms(tmp_path: Path) -> None:
    from torchvision.models import ResNet18_Weights

    loaded = load_model("torchvision:resnet18")
    image = photo((300, 260))
    expected = ResNet18_Weights.DEFAULT.transforms()(image)
    torch.testing.assert_close(loaded.preprocessing.transform()(image), expected)
    assert loaded.class_names[:2] == ["tench", "goldfish"] and loaded.random_weights
    assert loaded.synsets[0] == "n01440764"


def test_timm_names_with_and_without_prefix_use_timms_data_config() -> None:
    from timm.data import resolve_data_config

    for spec in ("test_vit", "timm:test_vit"):
        loaded = load_model(spec)
        config = resolve_data_config(model=loaded.model)
        assert loaded.preprocessing.input_size == tuple(config["input_size"]) == (3, 160, 160)
        assert loaded.preprocessing.mean == tuple(config["mean"])
        assert loaded.synsets[217] == "n02102040" and loaded.random_weights


MY_MODEL = """
import torch

def build():
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 2, 5, stride=8), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(), torch.nn.Linear(2, 3),
    )
    model.pretrained_cfg = {
        "input_size": (3, 40, 40), "mean": (0.1, 0.2, 0.3), "std": (0.4, 0.5, 0.6),
        "interpolation": "bilinear", "crop_pct": 1.0,
    }
    return model
"""


def test_a_file_callable_model_honours_its_pretrained_cfg(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "mine.py").write_text(MY_MODEL)
    p = load_model(f"{tmp_path}/models/mine.py:build").preprocessing
    assert (p.input_size, p.mean, p.std, p.interpolation, p.crop_pct) == (
        (3, 40, 40),
        (0.1, 0.2, 0.3),
        (0.4, 0.5, 0.6),
        "bilinear",
        1.0,
    )


def test_a_module_callable_is_found_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "mymodel_in_cwd.py").write_text(MY_MODEL)
    monkeypatch.chdir(tmp_path)
    # as under the console script, whose sys.path lacks the working directory
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    loaded = load_model("mymodel_in_cwd:build")
    assert loaded.preprocessing.input_size == (3, 40, 40)


def test_overrides_replace_the_models_own_settings() -> None:
    p = Preprocessing((3, 224, 224), (0.5,) * 3, (0.5,) * 3, "bilinear", 1.0)
    q = p.overridden(input_size=64, mean=[0.1, 0.2, 0.3], interpolation="bicubic", crop_pct=0.5)
    assert (q.input_size, q.mean, q.std, q.interpolation, q.crop_pct) == (
        (3, 64, 64),
        (0.1, 0.2, 0.3),
        (0.5,) * 3,
        "bicubic",
        0.5,
    )
    assert q.transform()(photo((100, 80))).shape == (3, 64, 64)
    with pytest.raises(ValueError, match="mean: expected 3 values"):
        p.overridden(mean=[0.5])


def test_checkpoint_weights_are_loaded_into_the_architecture(tmp_path: Path) -> None:
    folder = save_tiny_hf_vit(tmp_path / "vit")
    state = {
        k: torch.full_like(v, 0.25)
        for k, v in load_model(f"hf:{folder}").model.state_dict().items()
    }
    # as saved from DataParallel, under "state_dict"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "w.pt")
    loaded = load_model(f"hf:{folder}", checkpoint=tmp_path / "w.pt")
    assert all(bool((v == 0.25).all()) for v in loaded.model.state_dict().values())
    torch.save({"no_such_layer.weight": torch.zeros(1)}, tmp_path / "bad.pt")
    with pytest.raises(ModelLoadError, match="does not fit the model: missing"):
        load_model("timm:test_vit", checkpoint=tmp_path / "bad.pt")


@pytest.mark.parametrize("spec", ["timm:test_vit", "hf:someone/no-such-model-here", "test_resnet"])
def test_without_network_a_hub_model_fails_at_once_naming_model_and_cause(
    spec: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    # An endpoint on this machine that refuses connections: no real network is touched.
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(ModelLoadError) as error:
        load_model(spec, pretrained=True)
    message = str(error.value)
    assert spec in message and "no network: cannot reach 127.0.0.1" in message
    assert "\n" not in message
    assert constants.HF_HUB_OFFLINE is False  # the setting is restored


@pytest.mark.parametrize(
    "name, choices, expected",
    [
        ("rolout", ["attention_rollout", "raw_attention", "saliency"], "attention_rollout"),
        ("vit_tiny_patch16_22", None, "vit_tiny_patch16_224"),
        ("sacco", ["saco", "aopc", "lodds"], "saco"),
    ],
)
def test_unknown_names_suggest_the_closest(name: str, choices, expected: str) -> None:
    if choices is None:
        import timm

        choices = timm.list_models()
    assert f"did you mean {expected}" in did_you_mean(name, choices)


def test_an_unknown_timm_name_suggests_the_closest() -> None:
    with pytest.raises(ModelLoadError, match="did you mean vit_tiny_patch16_224"):
        load_model("vit_tiny_patch16_22")


def test_the_embedded_models_preprocessing_is_its_own_grey_28_by_28_transform() -> None:
    from captum_saco.datasets import fashion_mnist_transform

    loaded = load_model("fashion_mnist_vit")
    for image in (photo((40, 30)).convert("L"), photo((28, 28)).convert("L")):
        torch.testing.assert_close(
            loaded.preprocessing.transform()(image), fashion_mnist_transform()(image)
        )
    assert loaded.preprocessing.mode == "L" and not loaded.random_weights


def test_class_folders_map_through_torchvision_categories_and_timm_descriptions() -> None:
    from captum_saco.datasets import class_indices

    torchvision_names = load_model("torchvision:resnet18").class_names
    assert class_indices(["goldfish", "tench"], torchvision_names) == {"goldfish": 1, "tench": 0}
    timm_names = load_model("timm:test_vit").class_names  # "tench, Tinca tinca", ...
    assert class_indices(["Tinca_tinca", "goldfish"], timm_names) == {
        "Tinca_tinca": 0,
        "goldfish": 1,
    }
