"""Attention methods on zero-shot CLIP classifiers, against Chefer et al.'s CLIP
relevance (Transformer-MM-Explainability's ``interpret``) recorded in
tests/data/clip_reference.pt, for the open_clip, Hugging Face and timm builds of
the same weights. The text side is the recorded float64 text embeddings of the
prompts (tests/test_zero_shot.py checks each library's own text encoding)."""

import pytest
import torch

from captum_saco.attr import (
    AttentionRollout,
    ConservativeLRP,
    GradientWeightedAttention,
    RawAttention,
    TransformerAttribution,
)
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


def _open_clip(reference):
    return ZeroShotClassifier(open_clip_model(reference), reference["text_embeds_float64"])


def _hugging_face(reference):
    return ZeroShotClassifier(hugging_face_model(reference), reference["text_embeds_float64"])


def _timm(reference):
    text = reference["text_embeds_float64"]
    return ZeroShotClassifier(timm_tower(reference), text, logit_scale=logit_scale(reference))


BUILDS = {"open_clip": _open_clip, "hugging_face": _hugging_face, "timm": _timm}


@pytest.mark.parametrize("target", ["argmax", "fixed"])
@pytest.mark.parametrize("build", BUILDS)
def test_gradient_weighted_attention_equals_chefers_clip_interpret_in_float64(
    reference, build, target
):
    classifier = BUILDS[build](reference).double()
    method = GradientWeightedAttention(classifier)
    images, targets = reference["inputs"].double(), reference["targets"][target]
    expected = reference["attributions"][target]
    for aggregate, key in (
        (True, "chefer_interpret_float64"),
        (False, "chefer_interpret_last_float64"),
    ):
        maps = method.attribute(images, target=targets, aggregate_layers=aggregate, upsample=False)
        error = (maps.flatten(1) - expected[key]).abs().max() / expected[key].abs().max()
        # Hugging Face's eager attention (the path that returns probabilities)
        # computes its softmax in float32 also for float64 models
        assert error < (1e-6 if build == "hugging_face" else 1e-10), (key, float(error))


@pytest.mark.parametrize("build", BUILDS)
def test_gradient_weighted_attention_in_float32_is_within_the_recorded_precision(reference, build):
    classifier = BUILDS[build](reference)
    targets = reference["targets"]["argmax"]
    maps = GradientWeightedAttention(classifier).attribute(
        reference["inputs"], target=targets, upsample=False
    )
    expected = reference["attributions"]["argmax"]["chefer_interpret_float64"].float()
    assert torch.allclose(
        maps.flatten(1), expected, atol=1e-4 * float(expected.abs().max()), rtol=0
    )


@pytest.mark.parametrize("build", BUILDS)
def test_raw_attention_and_rollout_read_the_towers_own_probabilities(reference, build):
    classifier = BUILDS[build](reference)
    images = reference["inputs"][:2]
    # the test's own capture: each block's probabilities recomputed from its input
    # with the open_clip weights, which all three builds share
    model = _open_clip(reference).model.visual
    captured = []
    with torch.no_grad():
        x = model._embeds(images)
        for block in model.transformer.resblocks:
            h = block.ln_1(x)
            q, k, _ = torch.nn.functional.linear(
                h, block.attn.in_proj_weight, block.attn.in_proj_bias
            ).chunk(3, -1)
            split = lambda t: t.unflatten(-1, (4, 12)).transpose(1, 2)  # noqa: E731
            captured.append((split(q) @ split(k).transpose(-1, -2) / 12**0.5).softmax(-1))
            x = block(x)
    mean = [a.mean(1) for a in captured]
    raw = RawAttention(classifier).attribute(images, upsample=False).flatten(1)
    assert torch.allclose(raw, mean[-1][:, 0, 1:], atol=1e-5)
    rollout = torch.eye(37).expand(2, -1, -1)
    for a in mean:
        a = a + torch.eye(37)
        rollout = (a / a.sum(-1, keepdim=True)) @ rollout
    maps = AttentionRollout(classifier).attribute(images, upsample=False).flatten(1)
    assert torch.allclose(maps, rollout[:, 0, 1:], atol=1e-5)


def test_the_models_are_left_as_found(reference):
    hf, oc = _hugging_face(reference), _open_clip(reference)
    implementation = hf.model.config._attn_implementation
    before = {k: v.clone() for k, v in oc.state_dict().items()}
    for classifier in (hf, oc):
        GradientWeightedAttention(classifier).attribute(reference["inputs"][:1], target=0)
    assert hf.model.config._attn_implementation == implementation
    assert all(
        "forward" not in block.attn.__dict__ for block in oc.model.visual.transformer.resblocks
    )
    assert all(torch.equal(before[k], v) for k, v in oc.state_dict().items())


@pytest.mark.parametrize("method", [ConservativeLRP, TransformerAttribution])
def test_relevance_methods_refuse_the_zero_shot_head_by_name(reference, method):
    with pytest.raises(ValueError, match="no rule for a ZeroShotClassifier's head"):
        method(_open_clip(reference)).attribute(reference["inputs"][:1], target=0)


@pytest.mark.parametrize("build", BUILDS)
def test_one_image_alone_gets_the_map_it_gets_in_a_batch(reference, build):
    method = GradientWeightedAttention(BUILDS[build](reference).double())
    images = reference["inputs"].double()
    batch = method.attribute(images, target=1, upsample=False)
    alone = method.attribute(images[2:3], target=1, upsample=False)
    assert torch.allclose(alone, batch[2:3], atol=1e-12, rtol=0)
