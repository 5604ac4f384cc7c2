"""evaluate() on what users have: an input-blind model, data loaders and
Hugging Face batches, int targets, baselines and further forward arguments,
per-method options, and Captum instances on Hugging Face models."""

import json
import warnings

import pytest
import torch
from captum.attr import IntegratedGradients, Saliency
from timm.models.vision_transformer import VisionTransformer

from captum_saco.attr import TransformerAttribution
from captum_saco.evaluation import evaluate
from captum_saco.metrics import saco


def tiny_vit() -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(
        img_size=8, patch_size=4, in_chans=1, num_classes=3, embed_dim=8, depth=2, num_heads=2
    ).eval()


@pytest.fixture(scope="module")
def model() -> VisionTransformer:
    return tiny_vit()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(1))


def input_blind_vit() -> VisionTransformer:
    """A broken checkpoint: the patch embedding's weights are zero, so the
    output does not depend on the image."""
    vit = tiny_vit()
    with torch.no_grad():
        vit.patch_embed.proj.weight.zero_()
    return vit


def test_an_input_blind_model_gets_nan_with_the_reason_instead_of_a_perfect_saco(images) -> None:
    with pytest.warns(UserWarning, match=r"did not change under any perturbation .* 6 of 6 images"):
        result = evaluate(
            input_blind_vit(), images, methods=["random", "saliency"], batch_size=4
        )
    for r in result.rows:
        assert (r.mean, r.n, r.nan, r.unchanged) == (None, 0, 6, 6), r
    assert all(r["unchanged"] for r in result.per_image)
    table = result.format_table()
    assert "(6, 6 unchanged)" in table
    assert "6 of 6 images unchanged: the model's output did not change" in table
    data = json.loads(result.to_json())
    assert data["unchanged_images"] == list(range(6)) and len(data["notes"]) == 1
    assert all(row["unchanged"] == 6 and row["mean"] is None for row in data["results"])


def test_an_input_blind_model_silences_the_metrics_own_warnings_about_its_images(images) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        evaluate(input_blind_vit(), images, methods=["random"], metrics=["saco"])
    assert [str(w.message)[:44] for w in caught] == [
        "the model's output did not change under any "
    ]


def test_a_model_that_sees_its_input_has_no_unchanged_image(model, images) -> None:
    result = evaluate(model, images, methods=["random"], metrics=["saco", "aopc"])
    assert all(r.unchanged == 0 and r.nan == 0 for r in result.rows)
    assert not any(r["unchanged"] for r in result.per_image)
    assert "unchanged" not in result.format_table()


def test_only_the_images_equal_to_their_baseline_are_unchanged(model, images) -> None:
    x = images.clone()
    x[2] = 0.5  # a constant image equals its per-image mean baseline: nothing is removed
    with pytest.warns(UserWarning, match=r"on 1 of 6 images \(2\)"):
        result = evaluate(model, x, methods=["random"], metrics=["saco"])
    assert [r["unchanged"] for r in result.per_image] == [False, False, True, False, False, False]
    assert result.row("random", "saco").nan == 1 and result.row("random", "saco").unchanged == 1


RANDOM_SALIENCY = dict(methods=["random", "saliency"], metrics=["saco", "aopc"])


def test_a_data_loader_of_image_label_batches_gives_the_tensor_result(model, images) -> None:
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(images, labels), batch_size=4
    )
    streamed = evaluate(model, loader, targets="label", batch_size=4, **RANDOM_SALIENCY)
    direct = evaluate(model, images, targets=labels, batch_size=4, **RANDOM_SALIENCY)
    assert streamed.n_images == 6
    assert [r["label"] for r in streamed.per_image[::2]] == labels.tolist()
    for key, values in direct.per_example.items():
        torch.testing.assert_close(streamed.per_example[key], values)


def test_an_iterable_of_hugging_face_dicts_and_a_list_of_int_targets(model, images) -> None:
    batches = [
        {"pixel_values": images[:4], "labels": torch.tensor([2, 1, 0, 2])},
        {"pixel_values": images[4:], "labels": torch.tensor([1, 0])},
    ]
    targets = [2, 1, 0, 2, 1, 0]
    from_dicts = evaluate(model, iter(batches), targets="label", **RANDOM_SALIENCY)
    from_list = evaluate(model, images, targets=targets, batch_size=4, **RANDOM_SALIENCY)
    assert [r["target"] for r in from_dicts.per_image[::2]] == targets
    for key, values in from_list.per_example.items():
        torch.testing.assert_close(from_dicts.per_example[key], values)


def test_an_iterable_is_refused_by_name_for_resume_and_for_too_few_targets(
    model, images, tmp_path
) -> None:
    with pytest.raises(ValueError, match="resume: needs inputs read by position"):
        evaluate(model, [images], per_image_file=str(tmp_path / "r.jsonl"), resume=True)
    with pytest.raises(ValueError, match=r"targets: 4 classes given, but the inputs hold more"):
        evaluate(model, [images[:4], images[4:]], targets=[0, 1, 2, 0], **RANDOM_SALIENCY)
    with pytest.raises(TypeError, match="inputs: a dict item needs the key 'pixel_values'"):
        evaluate(model, [{"image": images}], methods=["random"])


class Magnitude(Saliency):
    """Gradient-free maps, the inputs' magnitude, to compare with saco() directly."""

    def attribute(self, inputs, target=None, additional_forward_args=None):
        return inputs.detach().abs()


def _predicted(forward, x, *args):
    with torch.no_grad():
        return forward(x, *args).argmax(dim=1)


@pytest.mark.parametrize("baselines", [0.0, "per image"])
def test_baselines_give_what_saco_gives_with_them(model, images, baselines) -> None:
    if baselines == "per image":
        baselines = torch.randn(images.shape, generator=torch.Generator().manual_seed(3))
    result = evaluate(
        model,
        images,
        methods={"m": Magnitude(model)},
        metrics=["saco"],
        baselines=baselines,
        batch_size=4,
    )
    expected = saco(
        model, images, images.abs(), baselines=baselines, target=_predicted(model, images)
    )
    torch.testing.assert_close(result.per_example[("m", "saco")], expected.double())


class Gained(torch.nn.Module):
    """A model with a further forward argument: a gain per image."""

    def __init__(self, vit):
        super().__init__()
        self.vit = vit

    def forward(self, x, gain):
        return self.vit(x * gain[:, None, None, None])


def test_additional_forward_args_reach_the_model_the_methods_and_the_metrics(
    model, images
) -> None:
    gained = Gained(model).eval()
    gain = torch.tensor([1.0, 0.1, 3.0, 0.5, 2.0, 0.0])
    with pytest.warns(UserWarning, match=r"on 1 of 6 images \(5\)"):
        result = evaluate(
            gained,
            images,
            methods={"m": Magnitude(gained), "saliency": "saliency"},
            metrics=["saco"],
            additional_forward_args=(gain,),
            batch_size=4,
        )
    target = _predicted(gained, images, gain)
    assert [r["target"] for r in result.per_image[::2]] == target.tolist()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # image 5: SaCo 1 of a blind output, as the issue says
        expected = saco(gained, images, images.abs(), additional_forward_args=(gain,), target=target)
    torch.testing.assert_close(result.per_example[("m", "saco")][:5], expected.double()[:5])
    # gain 0: the model sees a black image, whatever the perturbation
    assert [r["unchanged"] for r in result.per_image[::2]] == [False] * 5 + [True]
    saliency = Saliency(lambda x, g: gained(x, g)).attribute(
        images.clone().requires_grad_(), target=target, additional_forward_args=(gain,)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = saco(gained, images, saliency, additional_forward_args=(gain,), target=target)
    torch.testing.assert_close(
        result.per_example[("saliency", "saco")][:5], expected.double()[:5]
    )


def test_per_method_options_reach_attribute(model, images) -> None:
    result = evaluate(
        model,
        images,
        methods={
            "TA, start 1": (TransformerAttribution, {"start_layer": 1}),
            "IG, 5 steps": ("integrated_gradients", {"n_steps": 5}),
        },
        metrics=["saco"],
    )
    target = _predicted(model, images)
    maps = TransformerAttribution(model).attribute(images, target=target, start_layer=1)
    torch.testing.assert_close(
        result.per_example[("TA, start 1", "saco")],
        saco(model, images, maps, target=target).double(),
    )
    ig = IntegratedGradients(model).attribute(images, target=target, n_steps=5)
    torch.testing.assert_close(
        result.per_example[("IG, 5 steps", "saco")],
        saco(model, images, ig, target=target).double(),
    )
    with pytest.raises(ValueError, match="methods: unknown method 'rolout' for 'x'"):
        evaluate(model, images, methods={"x": ("rolout", {})})


def test_a_captum_instance_on_a_hugging_face_model_is_evaluated(tmp_path) -> None:
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(
        image_size=8,
        patch_size=4,
        num_channels=1,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=3,
    )
    torch.manual_seed(0)
    ViTForImageClassification(config).save_pretrained(tmp_path)
    hf = ViTForImageClassification.from_pretrained(tmp_path).eval()
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    method = Saliency(hf)
    result = evaluate(hf, x, methods={"saliency": method}, metrics=["saco"])
    assert method.forward_func is hf  # the user's instance is left as it was
    target = _predicted(lambda t: hf(t).logits, x)
    maps = Saliency(lambda t: hf(t).logits).attribute(x.clone().requires_grad_(), target=target)
    torch.testing.assert_close(
        result.per_example[("saliency", "saco")], saco(hf, x, maps, target=target).double()
    )
