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
