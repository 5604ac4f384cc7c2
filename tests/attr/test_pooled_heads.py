"""timm ViTs whose head does not read the class token (``global_pool="avg"``,
with or without class token, ``fc_norm``, register tokens, ``no_embed_class``,
dynamic image size): the attention-map methods start from the head's read-out
vector ``s``, here the uniform average over exactly the tokens the head averages,
and equal a recomputation from attention probabilities this test captures
itself; Chefer's relevance pass goes through the mean by the z-rule and conserves
each example's unit relevance, and Transformer Attribution and partial LRP chain
from ``s``."""

import copy
from typing import Dict, List, Tuple

import pytest
import torch
from lrp_rules import assert_conserves, gradient_x_input, rules_patched_copy, without_biases
from test_relevance import block0_tokens
from tiny_models import tiny_timm
from torch import Tensor, nn

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
from captum_saco.attr._core.families import vit_parts
from captum_saco.attr._core.relevance import attention_relevance, z_rule_mean
from tests.numerics import relative_error, relative_errors

CONFIGS: Dict[str, Dict] = {
    "avg_with_class_token_and_fc_norm": dict(global_pool="avg"),
    "avg_without_class_token": dict(global_pool="avg", class_token=False),
    "avg_without_fc_norm": dict(global_pool="avg", fc_norm=False),
    "avg_with_registers": dict(global_pool="avg", reg_tokens=2),
    "avg_no_embed_class": dict(global_pool="avg", no_embed_class=True),
    "avg_dynamic_image_size": dict(global_pool="avg", dynamic_img_size=True),
    "avg_with_registers_without_class_token": dict(
        global_pool="avg", class_token=False, reg_tokens=1
    ),
}
WORKING = [
    RawAttention,
    AttentionRollout,
    GradientWeightedAttention,
    AttentionGradCAM,
    AttCAT,
    ConservativeLRP,
    AttnLRP,
    TransformerAttribution,
    PartialLRP,
    FullLRP,
]


def images_of(config: str, n: int = 3) -> Tensor:
    # a dynamic-size model gets a 40x32 image: a 5x4 grid it was not built for
    size = (40, 32) if config == "avg_dynamic_image_size" else (32, 32)
    return torch.rand(n, 3, *size, generator=torch.Generator().manual_seed(3))


def mean_readout(model: nn.Module, num_tokens: int) -> Tensor:
    """``s`` of timm's ``global_pool="avg"``: the mean over the tokens after the
    class and register tokens."""
    s = torch.zeros(num_tokens)
    s[model.num_prefix_tokens :] = 1 / (num_tokens - model.num_prefix_tokens)
    return s


def captured(model: nn.Module, images: Tensor, target: Tensor) -> Tuple[List[Tensor], List[Tensor]]:
    """Each block's attention probabilities and their gradients of the summed target
    logits, captured on a copy of the model with its own hooks."""
    model = copy.deepcopy(model)
    attentions: List[Tensor] = []

    def keep(module: nn.Module, args: Tuple, output: Tensor) -> None:
        output.retain_grad()
        attentions.append(output)

    for block in model.blocks:
        block.attn.fused_attn = False
        block.attn.attn_drop.register_forward_hook(keep)
    model(images).gather(1, target[:, None]).sum().backward()
    return [a.detach() for a in attentions], [a.grad for a in attentions]


def on_grid(row: Tensor, model: nn.Module, images: Tensor) -> Tensor:
    h, w = images.shape[-2] // 8, images.shape[-1] // 8
    return row[:, model.num_prefix_tokens :].reshape(-1, 1, h, w)


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_the_read_out_vector_averages_exactly_the_tokens_the_head_averages(config: str) -> None:
    model = tiny_timm(**CONFIGS[config])
    with torch.no_grad():
        features = model.forward_features(images_of(config))
        pooled = model.forward_head(features, pre_logits=True)
        s = mean_readout(model, features.shape[1])
        torch.testing.assert_close(model.fc_norm(s @ features), pooled)


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_attention_map_methods_equal_a_recomputation_from_the_read_out_vector(
    config: str,
) -> None:
    model = tiny_timm(**CONFIGS[config])
    images, target = images_of(config), torch.tensor([0, 2, 4])
    attentions, gradients = captured(model, images, target)
    s = mean_readout(model, attentions[0].shape[-1])
    eye = torch.eye(s.shape[0])

    raw = s @ attentions[-1].mean(dim=1)
    rollout = s.expand(images.shape[0], 1, -1)
    for attention in reversed(attentions):
        fused = attention.mean(dim=1) + eye
        rollout = rollout @ (fused / fused.sum(dim=-1, keepdim=True))
    weighted = [(g * a).clamp(min=0).mean(dim=1) for a, g in zip(attentions, gradients)]
    chained = eye.expand(images.shape[0], -1, -1)
    for w in weighted:
        chained = chained + w @ chained
    row, gradient = s @ attentions[-1], s @ gradients[-1]  # (N, heads, T)
    head_weights = gradient[:, :, model.num_prefix_tokens :].mean(dim=-1, keepdim=True)
    gradcam = (head_weights * row).mean(dim=1).clamp(min=0)
    expected = {
        "raw": raw,
        "rollout": rollout[:, 0],
        "generic": s @ chained,
        "last_layer": s @ weighted[-1],
        "gradcam": gradcam,
    }
    actual = {
        "raw": RawAttention(model).attribute(images, upsample=False),
        "rollout": AttentionRollout(model).attribute(images, upsample=False),
        "generic": GradientWeightedAttention(model).attribute(
            images, target=target, upsample=False
        ),
        "last_layer": GradientWeightedAttention(model).attribute(
            images, target=target, upsample=False, aggregate_layers=False
        ),
        "gradcam": AttentionGradCAM(model).attribute(images, target=target, upsample=False),
    }
    for name in expected:
        torch.testing.assert_close(
            actual[name], on_grid(expected[name], model, images), rtol=1e-5, atol=1e-7, msg=name
        )


def test_the_mean_rule_gives_each_averaged_token_its_share_of_the_relevance() -> None:
    tokens = torch.randn(2, 5, 4, dtype=torch.float64)
    relevance = torch.randn(2, 4, dtype=torch.float64)
    shares = z_rule_mean(tokens, relevance)
    expected = tokens / 5 / tokens.mean(dim=1, keepdim=True) * relevance[:, None]
    torch.testing.assert_close(shares, expected)
    torch.testing.assert_close(shares.sum(dim=1), relevance)


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_the_relevance_pass_conserves_each_examples_unit_relevance_through_the_pooled_head(
    config: str,
) -> None:
    model = tiny_timm(**CONFIGS[config]).double()
    images = images_of(config).double()
    result = attention_relevance(
        vit_parts(model), block0_tokens(model, images), [0, 3, 4], input_relevance=True
    )
    with torch.no_grad():
        torch.testing.assert_close(result.logits, model(images))
    totals = result.input_relevance.sum(dim=(1, 2))
    torch.testing.assert_close(totals, torch.ones_like(totals), rtol=0, atol=1e-6)


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_transformer_attribution_and_partial_lrp_chain_from_the_read_out_vector(
    config: str,
) -> None:
    model = tiny_timm(**CONFIGS[config]).double()
    images, target = images_of(config).double(), torch.tensor([0, 2, 4])
    attentions, gradients = captured(model, images, target)
    relevances = attention_relevance(
        vit_parts(model), block0_tokens(model, images), target, gradients=False
    ).relevances
    s = mean_readout(model, attentions[0].shape[-1]).double()
    for example in range(images.shape[0]):  # one example at a time, as the original
        row = s
        for gradient, relevance in zip(reversed(gradients), reversed(relevances)):
            weighted = (gradient[example] * relevance[example]).clamp(min=0).mean(dim=0)
            row = row + row @ weighted
        partial = s @ relevances[-1][example].clamp(min=0).mean(dim=0)
        for method, expected in ((TransformerAttribution, row), (PartialLRP, partial)):
            actual = method(model).attribute(
                images[example : example + 1], target=target[example], upsample=False
            )
            error = relative_error(actual, on_grid(expected[None], model, images))
            assert error < 1e-10, (method.__name__, error)


def test_rollout_refuses_discard_ratio_on_a_pooled_head_by_name() -> None:
    with pytest.raises(ValueError, match="discard_ratio: .*class-token heads"):
        AttentionRollout(tiny_timm(global_pool="avg")).attribute(
            images_of("avg"), discard_ratio=0.5
        )


@pytest.mark.parametrize(
    "config, method",
    [(config, method) for config in sorted(CONFIGS) for method in WORKING],
    ids=str,
)
def test_an_image_alone_gets_its_map_in_a_batch_and_the_model_is_left_as_found(
    config: str, method: type, state_of, same_state
) -> None:
    model = tiny_timm(**CONFIGS[config])
    before = state_of(model)
    images = images_of(config)
    batch = method(model).attribute(images, target=[3, 3, 3], upsample=False)
    alone = method(model).attribute(images[2:], target=3, upsample=False)
    torch.testing.assert_close(alone, batch[2:], rtol=1e-5, atol=1e-7)
    assert torch.isfinite(batch).all()
    same_state(before, state_of(model))


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_conservative_lrp_pixel_relevance_sums_to_the_target_logit_without_biases(
    config: str,
) -> None:
    model = without_biases(tiny_timm(**CONFIGS[config]))
    images, target = images_of(config), torch.tensor([1, 0, 3])
    assert_conserves(model, images, target)


@pytest.mark.parametrize("config", sorted(CONFIGS))
@pytest.mark.parametrize(
    "method, options, attention_rule",
    [(AttnLRP, {}, "uniform"), (ConservativeLRP, {"activation_rule": "identity"}, "detached")],
)
def test_gradient_rule_methods_equal_their_rules_patched_into_a_copy_of_the_model(
    config: str, method: type, options: Dict, attention_rule: str
) -> None:
    model = tiny_timm(**CONFIGS[config]).double()
    images, target = images_of(config).double(), torch.tensor([2, 2, 4])
    expected = gradient_x_input(rules_patched_copy(model, attention_rule), images, target)
    actual = method(model).attribute(images, target=target, **options)
    assert relative_errors(actual, expected).max() < 1e-10


def test_a_norm_after_the_class_token_takes_the_layernorm_rule() -> None:
    model = tiny_timm(global_pool="token", fc_norm=True).double()
    images, target = images_of("token").double(), torch.tensor([0, 1, 2])
    expected = gradient_x_input(rules_patched_copy(model, "uniform"), images, target)
    assert relative_errors(AttnLRP(model).attribute(images, target=target), expected).max() < 1e-10
    unbiased = without_biases(model)
    relevance = ConservativeLRP(unbiased).attribute(
        images, target=target, activation_rule="identity"
    )
    with torch.no_grad():
        logits = unbiased(images).gather(1, target[:, None]).flatten()
    torch.testing.assert_close(relevance.sum(dim=(1, 2, 3)), logits, rtol=1e-6, atol=0)
