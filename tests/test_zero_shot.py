"""ZeroShotClassifier: the image-text logits of CLIP and SigLIP models of
Hugging Face, open_clip and timm, as a classifier over prompts."""

import copy

import open_clip
import pytest
import torch
import transformers
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

from captum_saco.datasets import load_fashion_mnist_clip, load_fashion_mnist_samples
from captum_saco.evaluation import evaluate
from captum_saco.metrics import aopc, comprehensiveness, saco
from captum_saco.models import ZeroShotClassifier
from tests.clip_reference_builds import (
    hugging_face_model,
    load_reference,
    logit_scale,
    open_clip_model,
    timm_tower,
)


@pytest.fixture(scope="module")
def reference():
    return load_reference()


@pytest.fixture(scope="module")
def char_tokenizer():
    """The character-level CLIP tokenizer shipped with the Fashion-MNIST CLIP (190 ids)."""
    return load_fashion_mnist_clip()[1]


def _saved_and_loaded(model, tmp_path):
    model.save_pretrained(tmp_path)
    return type(model).from_pretrained(tmp_path).eval()


def _text_config(tokenizer):
    eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    return dict(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=40,
        bos_token_id=eot - 1,
        eos_token_id=eot,
        pad_token_id=eot,
    )


VISION = dict(
    image_size=32,
    patch_size=8,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
)
PROMPTS = ["a photo of a cat.", "a photo of a dog.", "a photo of a car."]


def test_hf_clip_logits_equal_the_models_logits_per_image(tmp_path, char_tokenizer):
    torch.manual_seed(0)
    config = transformers.CLIPConfig(
        text_config=_text_config(char_tokenizer), vision_config=VISION, projection_dim=16
    )
    model = _saved_and_loaded(transformers.CLIPModel(config), tmp_path)
    images = torch.randn(4, 3, 32, 32)
    classifier = ZeroShotClassifier.from_prompts(model, char_tokenizer, ["cat", "dog", "car"])
    tokens = char_tokenizer(PROMPTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = model(pixel_values=images, **tokens).logits_per_image
        assert torch.allclose(classifier(images), expected, atol=1e-5, rtol=1e-5)
    assert classifier.prompts == PROMPTS


def test_hf_siglip_logits_include_its_scale_and_bias(tmp_path, char_tokenizer):
    torch.manual_seed(0)
    config = transformers.SiglipConfig(
        text_config=_text_config(char_tokenizer), vision_config=VISION
    )
    model = transformers.SiglipModel(config)
    with torch.no_grad():
        model.logit_bias.fill_(-3.0)
        model.logit_scale.fill_(2.0)
    model = _saved_and_loaded(model, tmp_path)
    images = torch.randn(4, 3, 32, 32)
    classifier = ZeroShotClassifier.from_prompts(model, char_tokenizer, ["cat", "dog", "car"])
    tokens = char_tokenizer(PROMPTS, padding="max_length", max_length=40, return_tensors="pt")
    with torch.no_grad():
        expected = model(pixel_values=images, input_ids=tokens["input_ids"]).logits_per_image
        assert torch.allclose(classifier(images), expected, atol=1e-5, rtol=1e-5)


def test_open_clip_logits_equal_the_models_own_with_scale_and_bias():
    torch.manual_seed(0)
    tokenizer = open_clip.get_tokenizer("ViT-B-32", context_length=16)
    for bias in (None, -4.0):
        model = CLIP(
            embed_dim=16,
            vision_cfg=CLIPVisionCfg(
                layers=1, width=32, head_width=16, patch_size=8, image_size=32
            ),
            text_cfg=CLIPTextCfg(context_length=16, vocab_size=49408, width=16, heads=2, layers=1),
            init_logit_bias=bias,
        ).eval()
        images = torch.randn(3, 3, 32, 32)
        classifier = ZeroShotClassifier.from_prompts(model, tokenizer, ["cat", "dog", "car"])
        with torch.no_grad():
            image_features, text_features, scale, *rest = model(images, tokenizer(PROMPTS))
            expected = scale * image_features @ text_features.T + (rest[0] if rest else 0)
            assert torch.allclose(classifier(images), expected, atol=1e-5, rtol=1e-5)


def test_open_clip_build_of_the_reference_weights_gives_the_recorded_logits(reference):
    model = open_clip_model(reference)
    with torch.no_grad():
        text = model.encode_text(reference["input_ids"])
        logits = ZeroShotClassifier(model, text)(reference["inputs"])
    assert torch.allclose(logits, reference["logits"], atol=2e-5, rtol=0)


def test_hf_builds_of_the_reference_weights_give_the_recorded_logits(reference, tmp_path):
    model = _saved_and_loaded(hugging_face_model(reference), tmp_path / "clip")
    with torch.no_grad():
        text = model.get_text_features(input_ids=reference["input_ids"]).pooler_output
        logits = ZeroShotClassifier(model, text)(reference["inputs"])
        assert torch.allclose(logits, reference["logits"], atol=2e-5, rtol=0)
        # the image tower alone, with the scale given
        vision_config = model.config.vision_config
        vision_config.projection_dim = model.config.projection_dim
        tower = transformers.CLIPVisionModelWithProjection(vision_config)
        tower.vision_model.load_state_dict(model.vision_model.state_dict())
        tower.visual_projection.load_state_dict(model.visual_projection.state_dict())
        tower = _saved_and_loaded(tower, tmp_path / "tower")
        scale = float(model.logit_scale.exp())
        logits = ZeroShotClassifier(tower, text, logit_scale=scale)(reference["inputs"])
        assert torch.allclose(logits, reference["logits"], atol=2e-5, rtol=0)


def test_timm_image_tower_of_the_reference_weights_with_given_scale_gives_the_recorded_logits(
    reference,
):
    tower = timm_tower(reference)
    classifier = ZeroShotClassifier(
        tower, reference["text_embeds"], logit_scale=logit_scale(reference)
    )
    with torch.no_grad():
        assert torch.allclose(
            classifier(reference["inputs"]), reference["logits"], atol=2e-5, rtol=0
        )
    with pytest.raises(ValueError, match="from_prompts knows"):
        ZeroShotClassifier.from_prompts(tower, None, ["a"])


def test_float64_classifier_gives_the_recorded_float64_logits(reference):
    tower = timm_tower(reference)
    scale = logit_scale(reference)
    classifier = ZeroShotClassifier(
        tower.eval(), reference["text_embeds_float64"], logit_scale=scale
    ).double()
    with torch.no_grad():
        logits = classifier(reference["inputs"].double())
    assert logits.dtype == torch.float64
    assert torch.allclose(logits, reference["logits_float64"], atol=1e-12, rtol=0)


def test_bad_arguments_are_refused_by_name(char_tokenizer):
    tower = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 8))
    with pytest.raises(ValueError, match="logit_scale: Sequential has no logit scale"):
        ZeroShotClassifier(tower, torch.randn(3, 8))
    with pytest.raises(ValueError, match="logit_scale: expected a positive number"):
        ZeroShotClassifier(tower, torch.randn(3, 8), logit_scale=-1.0)
    with pytest.raises(ValueError, match="text_embeddings: expected a floating-point"):
        ZeroShotClassifier(tower, torch.randn(8), logit_scale=1.0)
    with pytest.raises(ValueError, match="text_embeddings: every row"):
        ZeroShotClassifier(tower, torch.zeros(2, 8), logit_scale=1.0)
    with pytest.raises(TypeError, match="model: expected an nn.Module"):
        ZeroShotClassifier("clip", torch.randn(2, 8), logit_scale=1.0)
    with pytest.raises(ValueError, match="text_embeddings: have dimension 4"):
        ZeroShotClassifier(tower, torch.randn(2, 4), logit_scale=1.0)(torch.randn(1, 3, 2, 2))
    model, _ = load_fashion_mnist_clip()
    with pytest.raises(ValueError, match="logit_scale: CLIPModel has its own"):
        ZeroShotClassifier(model, torch.randn(2, 32), logit_scale=100.0)
    with pytest.raises(ValueError, match="template: expected a string with"):
        ZeroShotClassifier.from_prompts(model, char_tokenizer, ["a"], template="a photo")


def test_a_deep_copy_runs_its_own_copy_of_the_model(char_tokenizer):
    torch.manual_seed(0)
    config = transformers.CLIPConfig(
        text_config=_text_config(char_tokenizer), vision_config=VISION, projection_dim=16
    )
    classifier = ZeroShotClassifier(transformers.CLIPModel(config).eval(), torch.randn(3, 16))
    copied = copy.deepcopy(classifier)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = classifier(images)
        for parameter in copied.model.vision_model.parameters():
            parameter.mul_(2)
        assert torch.equal(classifier(images), before)
        assert not torch.allclose(copied(images), before)


def test_text_embeddings_are_copied_not_modified():
    text = torch.randn(3, 8) * 5
    before = text.clone()
    classifier = ZeroShotClassifier(torch.nn.Linear(4, 8), text, logit_scale=10.0)
    assert torch.equal(text, before)
    assert torch.allclose(classifier.text_embeddings.norm(dim=-1), torch.ones(3))


@pytest.fixture(scope="module")
def fashion():
    model, tokenizer = load_fashion_mnist_clip()
    samples = load_fashion_mnist_samples(limit=6)
    return ZeroShotClassifier.from_prompts(model, tokenizer, samples.class_names), samples


def test_shipped_fashion_clip_has_learned_the_classes():
    model, tokenizer = load_fashion_mnist_clip()
    samples = load_fashion_mnist_samples()
    classifier = ZeroShotClassifier.from_prompts(model, tokenizer, samples.class_names)
    with torch.no_grad():
        accuracy = (classifier(samples.images).argmax(1) == samples.labels).float().mean()
    assert accuracy > 0.7


def test_metrics_accept_the_classifier_with_the_prompt_index_as_target(fashion):
    classifier, samples = fashion
    attributions = torch.rand(samples.images.shape, generator=torch.Generator().manual_seed(0))
    target = samples.labels
    for metric in (saco, aopc, comprehensiveness):
        scores = metric(classifier, samples.images, attributions, target=target)
        assert scores.shape == (6,) and torch.isfinite(scores).all()
    result = evaluate(
        classifier,
        samples.images,
        targets=target,
        methods=["random", "gradient_weighted_attention"],
        metrics=["saco"],
    )
    assert result.methods == ["random", "gradient_weighted_attention"]


@pytest.fixture
def image_folder(tmp_path):
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    generator = torch.Generator().manual_seed(0)
    for i in range(3):
        pixels = torch.randint(0, 256, (40, 48, 3), generator=generator, dtype=torch.uint8)
        Image.fromarray(pixels.numpy()).save(folder / f"{i}.png")
    return folder


def _run_cli(*argv):
    from captum_saco.cli import main

    return main(
        [
            *argv,
            "--methods",
            "random",
            "gradient_weighted_attention",
            "--metrics",
            "saco",
            "--n-groups",
            "4",
            "--no-progress",
        ]
    )


@pytest.mark.parametrize(
    "model_class, config_class, options",
    [
        (transformers.CLIPModel, transformers.CLIPConfig, {"projection_dim": 16}),
        (transformers.SiglipModel, transformers.SiglipConfig, {}),
    ],
    ids=["clip", "siglip"],
)
def test_cli_zero_shot_with_a_saved_hugging_face_clip_or_siglip(
    tmp_path, image_folder, char_tokenizer, capsys, model_class, config_class, options
):
    torch.manual_seed(0)
    config = config_class(
        text_config=_text_config(char_tokenizer), vision_config=VISION, **options
    )
    folder = tmp_path / "model"
    model_class(config).save_pretrained(folder)
    image_processor = transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size=32)
    transformers.CLIPProcessor(image_processor, char_tokenizer).save_pretrained(folder)
    classes = tmp_path / "classes.txt"
    classes.write_text("cat\ndog\n\ncar\n")
    assert (
        _run_cli(
            "--model", f"hf:{folder}", "--images", str(image_folder), "--zero-shot", str(classes)
        )
        == 0
    )
    assert "gradient_weighted_attention" in capsys.readouterr().out


def test_cli_zero_shot_with_an_open_clip_checkpoint(tmp_path, image_folder, capsys):
    import json

    torch.manual_seed(0)
    config = {
        "embed_dim": 16,
        "vision_cfg": {
            "image_size": 32,
            "layers": 1,
            "width": 32,
            "head_width": 16,
            "patch_size": 8,
        },
        "text_cfg": {
            "context_length": 16,
            "vocab_size": 49408,
            "width": 16,
            "heads": 2,
            "layers": 1,
        },
    }
    (tmp_path / "tiny-clip-test.json").write_text(json.dumps(config))
    open_clip.add_model_config(tmp_path / "tiny-clip-test.json")
    checkpoint = tmp_path / "tiny.pt"
    torch.save(open_clip.create_model("tiny-clip-test").state_dict(), checkpoint)
    model_name = f"open_clip:tiny-clip-test/{checkpoint}"
    argv = ("--model", model_name, "--images", str(image_folder), "--zero-shot", "cat, dog,car")
    assert _run_cli(*argv, "--prompt-template", "a drawing of a {}") == 0
    assert "saco" in capsys.readouterr().out


def test_cli_zero_shot_refuses_bad_options_by_name(image_folder, capsys):
    assert (
        _run_cli("--model", "timm:vit_tiny", "--images", str(image_folder), "--zero-shot", "a,b")
        == 2
    )
    assert "--model: expected 'hf:NAME_OR_PATH'" in capsys.readouterr().err
    assert _run_cli("--images", str(image_folder), "--prompt-template", "a {}") == 2
    assert "--prompt-template applies only with --zero-shot" in capsys.readouterr().err
