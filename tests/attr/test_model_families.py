"""The attention methods on every supported model family: the original authors'
numbers, prefix tokens, image sizes, canonical parts and clear refusals."""

from typing import Dict

import pytest
import torch
import torch.nn.functional as F
import torchvision
from timm.models.vision_transformer import ResPostBlock
from tiny_models import tiny_hf_deit, tiny_hf_vit, tiny_timm, tiny_timm_distilled
from torch import Tensor, nn
from transformers import (
    DeiTForImageClassification,
    DeiTForImageClassificationWithTeacher,
)

from captum_saco.attr import (
    AttCAT,
    AttentionAttribution,
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
from captum_saco.attr._core.engine import AttentionTrace
from captum_saco.attr._core.families import ViTParts, vit_parts

# reference key -> (method class, options)
REFERENCE_CASES = {
    "raw_attention": (RawAttention, {}),
    "rollout": (AttentionRollout, {}),
    "rollout_start1": (AttentionRollout, {"start_layer": 1}),
    "generic_attention": (GradientWeightedAttention, {}),
    "last_layer_grad_attention": (GradientWeightedAttention, {"aggregate_layers": False}),
    "attn_gradcam": (AttentionGradCAM, {}),
}


def test_converted_models_reproduce_the_reference_logits(
    reference: Dict, reference_model: nn.Module, scores_of
) -> None:
    with torch.no_grad():
        logits = scores_of(reference_model, reference["inputs"])
    torch.testing.assert_close(logits, reference["logits"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("target_kind", ["argmax", "fixed"])
@pytest.mark.parametrize("method", sorted(REFERENCE_CASES))
def test_batched_attribution_equals_the_original_per_image_values(
    reference: Dict, reference_model: nn.Module, method: str, target_kind: str
) -> None:
    cls, options = REFERENCE_CASES[method]
    target = reference["targets"][target_kind]
    maps = cls(reference_model).attribute(
        reference["inputs"], target=target, upsample=False, **options
    )
    expected = reference["token_attributions"][target_kind][method]
    assert maps.shape == (4, 1, 6, 6)
    error = (maps.flatten(1) - expected).abs().max() / expected.abs().max()
    assert error < 1e-4


def test_default_target_is_the_predicted_class(reference: Dict, reference_model: nn.Module) -> None:
    method = GradientWeightedAttention(reference_model)
    default = method.attribute(reference["inputs"], upsample=False)
    argmax = reference["token_attributions"]["argmax"]["generic_attention"]
    torch.testing.assert_close(default.flatten(1), argmax, rtol=1e-4, atol=1e-6)


def _canonical_logits(parts: ViTParts, tokens: Tensor) -> Tensor:
    """The forward pass written out from the canonical parts."""
    x = tokens
    for block in parts.blocks:
        n, t, d = x.shape
        heads = block.num_heads
        q, k, v = (
            F.linear(block.norm1(x), block.qkv_weight, block.qkv_bias)
            .reshape(n, t, 3, heads, d // heads)
            .permute(2, 0, 3, 1, 4)
        )
        attention = ((q @ k.transpose(-1, -2)) * (d // heads) ** -0.5).softmax(-1)
        mixed = block.proj((attention @ v).transpose(1, 2).reshape(n, t, d))
        x = x + (mixed if block.ls1 is None else block.ls1 * mixed)
        mlp = block.fc2(block.act(block.fc1(block.norm2(x))))
        x = x + (mlp if block.ls2 is None else block.ls2 * mlp)
    x = parts.norm(x)
    # class-token heads: each classifier reads its one token
    return torch.stack([head.classifier(x[:, head.reads[0]]) for head in parts.heads]).mean(0)


class _KeepTrace(AttentionAttribution):
    """A rule that keeps the trace it is handed (what a subclass such as
    Transformer Attribution works from)."""

    def _token_relevance(self, trace: AttentionTrace) -> Tensor:
        self.trace = trace
        return trace.attentions[-1][:, :, 0].mean(1)


def _check_parts_reproduce_logits(model: nn.Module, images: Tensor, scores_of) -> None:
    method = _KeepTrace(model)
    method.attribute(images)
    with torch.no_grad():
        logits = _canonical_logits(vit_parts(model), method.trace.tokens)
        expected = scores_of(model, images)
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(method.trace.scores, expected, rtol=1e-4, atol=1e-5)


def test_vit_parts_and_block0_tokens_reproduce_the_logits(
    reference: Dict, reference_model: nn.Module, scores_of
) -> None:
    _check_parts_reproduce_logits(reference_model, reference["inputs"], scores_of)


# --- prefix tokens and image sizes ----------------------------------------------------


PREFIXED_MODELS = {
    "timm_distilled": (tiny_timm_distilled, 2),
    "timm_registers": (lambda: tiny_timm(reg_tokens=4), 5),
    "timm_registers_layer_scale": (lambda: tiny_timm(reg_tokens=2, init_values=0.1), 3),
    "hf_deit": (lambda: tiny_hf_deit(DeiTForImageClassification), 2),
    "hf_deit_with_teacher": (lambda: tiny_hf_deit(DeiTForImageClassificationWithTeacher), 2),
}


def _last_attention_by_hand(model: nn.Module, images: Tensor) -> Tensor:
    """The last block's attention (N, heads, T, T), recomputed from the tokens that
    enter it, for a timm model."""
    block = model.blocks[-1]
    entering = []
    handle = block.register_forward_pre_hook(lambda module, args: entering.append(args[0]))
    try:
        with torch.no_grad():
            model(images)
    finally:
        handle.remove()
    x = block.norm1(entering[0])
    n, t, d = x.shape
    heads = block.attn.num_heads
    q, k, _ = block.attn.qkv(x).reshape(n, t, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
    return ((q @ k.transpose(-1, -2)) * (d // heads) ** -0.5).softmax(-1)


@pytest.mark.parametrize("name", sorted(PREFIXED_MODELS))
@pytest.mark.parametrize(
    "cls", [RawAttention, AttentionRollout, GradientWeightedAttention, AttentionGradCAM, AttCAT]
)
def test_models_with_several_prefix_tokens_give_patch_grid_maps(name: str, cls: type) -> None:
    build, num_prefix = PREFIXED_MODELS[name]
    model = build()
    images = torch.rand(3, 3, 32, 32)
    kept = _KeepTrace(model)
    kept.attribute(images)
    assert kept.trace.num_prefix_tokens == num_prefix
    assert kept.trace.attentions[0].shape[-1] == num_prefix + 16
    grid = cls(model).attribute(images, upsample=False)
    assert grid.shape == (3, 1, 4, 4)
    assert torch.isfinite(grid).all()
    assert cls(model).attribute(images).shape == images.shape


@pytest.mark.parametrize("name", ["timm_distilled", "timm_registers"])
def test_raw_attention_drops_exactly_the_prefix_token_columns(name: str) -> None:
    build, num_prefix = PREFIXED_MODELS[name]
    model = build()
    images = torch.rand(2, 3, 32, 32)
    expected = _last_attention_by_hand(model, images).mean(1)[:, 0, num_prefix:]
    grid = RawAttention(model).attribute(images, upsample=False)
    torch.testing.assert_close(grid.flatten(1), expected)


def test_distilled_models_expose_both_classifier_heads_in_their_parts(scores_of) -> None:
    for model in (tiny_timm_distilled(), tiny_hf_deit(DeiTForImageClassificationWithTeacher)):
        parts = vit_parts(model)
        assert [head.reads for head in parts.heads] == [(0,), (1,)]
        assert parts.num_prefix_tokens == 2
        _check_parts_reproduce_logits(model, torch.rand(2, 3, 32, 32), scores_of)


def test_layer_scale_and_registers_are_expressed_in_the_parts(scores_of) -> None:
    model = tiny_timm(reg_tokens=2, init_values=0.1)
    parts = vit_parts(model)
    assert parts.blocks[0].ls1 is model.blocks[0].ls1.gamma
    assert parts.num_prefix_tokens == 3
    _check_parts_reproduce_logits(model, torch.rand(2, 3, 32, 32), scores_of)


def test_timm_dynamic_image_size_gives_the_grid_of_the_current_input() -> None:
    model = tiny_timm(dynamic_img_size=True)
    images = torch.rand(2, 3, 40, 56)
    grid = AttentionRollout(model).attribute(images, upsample=False)
    assert grid.shape == (2, 1, 5, 7)
    assert AttentionRollout(model).attribute(images).shape == images.shape


def test_huggingface_interpolated_positions_give_the_grid_of_the_current_input() -> None:
    model = tiny_hf_vit()
    images = torch.rand(2, 3, 48, 40)

    def forward(pixel_values: Tensor) -> Tensor:
        return model(pixel_values, interpolate_pos_encoding=True).logits

    grid = GradientWeightedAttention(model, forward).attribute(images, upsample=False)
    assert grid.shape == (2, 1, 6, 5)


# --- refusals ------------------------------------------------------------------------
def test_a_cnn_is_refused_with_the_list_of_supported_models() -> None:
    cnn = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match="Supported models: timm VisionTransformer"):
        RawAttention(cnn)


def test_a_non_module_is_refused() -> None:
    with pytest.raises(TypeError, match="model: expected an nn.Module"):
        RawAttention(lambda x: x)


@pytest.mark.parametrize("pool", ["max", "avgmax", "prr"])
def test_timm_pooling_without_a_read_out_vector_is_refused_by_name(pool: str) -> None:
    with pytest.raises(ValueError, match=f"global_pool='{pool}'.*'token'.*'avg'.*'map'.*supported"):
        AttentionRollout(tiny_timm(global_pool=pool))


def test_parts_the_canonical_block_cannot_express_are_refused() -> None:
    with pytest.raises(ValueError, match="a block of type ResPostBlock"):
        vit_parts(tiny_timm(block_fn=ResPostBlock))  # post-norm: would be silently wrong
    torchvision_with_pre_logits = torchvision.models.VisionTransformer(
        image_size=32,
        patch_size=8,
        num_layers=1,
        num_heads=2,
        hidden_dim=24,
        mlp_dim=48,
        num_classes=5,
        representation_size=12,
    )
    with pytest.raises(ValueError, match="representation_size"):
        vit_parts(torchvision_with_pre_logits)


def test_models_whose_parts_cannot_be_expressed_still_have_readable_attention() -> None:
    model = tiny_timm(block_fn=ResPostBlock)
    grid = RawAttention(model).attribute(torch.rand(1, 3, 32, 32), upsample=False)
    assert grid.shape == (1, 1, 4, 4)


@pytest.mark.parametrize(
    "method", [ConservativeLRP, AttnLRP, TransformerAttribution, PartialLRP, FullLRP]
)
def test_a_module_without_a_rule_before_block_0_is_refused_by_name(method: type) -> None:
    model = tiny_timm()
    model.pos_drop = nn.Sequential(nn.Tanh())  # no relevance rule is known for tanh
    with pytest.raises(ValueError, match=r"runs pos_drop\.0 \(Tanh\) between the input and"):
        method(model).attribute(torch.rand(1, 3, 32, 32), target=0)
    assert model.pos_drop[0]._forward_hooks == {}
