"""Hugging Face ``BeitForImageClassification`` (relative position bias in every
layer, layer scale, no key bias; mean-pooled or class-token head): the canonical
replay is the model, ConservativeLRP conserves the logit on a bias-free copy,
ConservativeLRP and AttnLRP equal their rules patched into a copy of the model,
the attention-map methods equal a recomputation from attention probabilities
this test captures itself, and Chefer's methods work on the class-token head
and refuse the mean-pooled one by name."""

import copy
from typing import List, Tuple

import pytest
import torch
from lrp_rules import assert_conserves, gradient_x_input, rules_patched_copy, without_biases
from tiny_models import tiny_hf_beit
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
from captum_saco.attr._core.relevance import attention_relevance
from captum_saco.attr._core.replay import model_forward
from tests.numerics import relative_error, relative_errors

POOLINGS = {"mean": True, "class_token": False}
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


class Logits(nn.Module):
    """The model's logits as a tensor (the test's own forward functions)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> Tensor:
        return self.model(images).logits


def build(pooling: str) -> nn.Module:
    return tiny_hf_beit(use_mean_pooling=POOLINGS[pooling])


def images_of(n: int = 3, dtype: torch.dtype = torch.float32) -> Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(5)).to(dtype)


def captured(
    model: nn.Module, images: Tensor, target: Tensor
) -> Tuple[List[Tensor], List[Tensor], List[Tensor], List[Tensor]]:
    """Each layer's attention probabilities (eager attention), its input tokens and
    the gradients of the summed target logits with respect to both, captured on a
    copy of the model with this test's own hooks."""
    model = copy.deepcopy(model)
    model.config._attn_implementation = "eager"
    attentions: List[Tensor] = []
    inputs: List[Tensor] = []

    def keep(store: List[Tensor], value: Tensor) -> None:
        value.retain_grad()
        store.append(value)

    for layer in model.beit.layers:
        layer.attention.register_forward_hook(lambda m, a, output: keep(attentions, output[1]))
        layer.register_forward_pre_hook(lambda m, args: keep(inputs, args[0]))
    model(images).logits.gather(1, target[:, None]).sum().backward()
    return (
        [a.detach() for a in attentions],
        [a.grad for a in attentions],
        [x.detach() for x in inputs],
        [x.grad for x in inputs],
    )


def block0_tokens(model: nn.Module, images: Tensor) -> Tensor:
    """The tokens entering layer 0, read with this test's own hook."""
    entering: List[Tensor] = []
    layer = model.beit.layers[0]
    handle = layer.register_forward_pre_hook(lambda m, args: entering.append(args[0]))
    try:
        with torch.no_grad():
            model(images)
    finally:
        handle.remove()
    return entering[0]


@pytest.mark.parametrize("pooling", sorted(POOLINGS))
def test_canonical_parts_replayed_in_float64_equal_the_models_logits(pooling: str) -> None:
    model = build(pooling).double()
    images = images_of(dtype=torch.float64)
    with torch.no_grad():
        replayed = model_forward(vit_parts(model), block0_tokens(model, images)).logits
        assert relative_error(replayed, model(images).logits) < 1e-12


@pytest.mark.parametrize("pooling", sorted(POOLINGS))
def test_conservative_lrp_pixel_relevance_sums_to_the_target_logit_without_biases(
    pooling: str,
) -> None:
    model = without_biases(build(pooling))
    images, target = images_of(), torch.tensor([1, 0, 3])
    assert_conserves(model, images, target)


@pytest.mark.parametrize("pooling", sorted(POOLINGS))
@pytest.mark.parametrize(
    "method, options, attention_rule",
    [(AttnLRP, {}, "uniform"), (ConservativeLRP, {"activation_rule": "identity"}, "detached")],
    ids=["AttnLRP", "ConservativeLRP"],
)
def test_gradient_rule_methods_equal_their_rules_patched_into_a_copy_of_the_model(
    pooling: str, method: type, options: dict, attention_rule: str
) -> None:
    model = build(pooling).double()
    images, target = images_of(dtype=torch.float64), torch.tensor([2, 2, 4])
    patched = Logits(rules_patched_copy(model, attention_rule))
    expected = gradient_x_input(patched, images, target)
    actual = method(model).attribute(images, target=target, **options)
    assert relative_errors(actual, expected).max() < 1e-10


@pytest.mark.parametrize("pooling", sorted(POOLINGS))
def test_attention_map_methods_equal_a_recomputation_from_captured_attention(
    pooling: str,
) -> None:
    model = build(pooling)
    images, target = images_of(), torch.tensor([0, 2, 4])
    attentions, gradients, inputs, input_gradients = captured(model, images, target)
    s = torch.zeros(attentions[0].shape[-1])
    if pooling == "mean":
        s[1:] = 1 / (len(s) - 1)
    else:
        s[0] = 1
    eye = torch.eye(len(s))
    rollout = s.expand(images.shape[0], 1, -1)
    for attention in reversed(attentions):
        fused = attention.mean(dim=1) + eye
        rollout = rollout @ (fused / fused.sum(dim=-1, keepdim=True))
    weighted = [(g * a).clamp(min=0).mean(dim=1) for a, g in zip(attentions, gradients)]
    chained = eye.expand(images.shape[0], -1, -1)
    for w in weighted:
        chained = chained + w @ chained
    row, gradient = s @ attentions[-1], s @ gradients[-1]
    head_weights = gradient[:, :, 1:].mean(dim=-1, keepdim=True)
    expected = {
        RawAttention: s @ attentions[-1].mean(dim=1),
        AttentionRollout: rollout[:, 0],
        GradientWeightedAttention: s @ chained,
        AttentionGradCAM: (head_weights * row).mean(dim=1).clamp(min=0),
        AttCAT: sum(
            (x * g).sum(dim=-1) * a.mean(dim=(1, 2))
            for x, g, a in zip(inputs, input_gradients, attentions)
        ),
    }
    for method, value in expected.items():
        actual = method(model).attribute(images, target=target, upsample=False)
        grid = value[:, 1:].reshape(-1, 1, 4, 4)
        torch.testing.assert_close(actual, grid, rtol=1e-5, atol=1e-6, msg=method.__name__)


def test_chefer_relevance_conserves_the_unit_seed_on_the_class_token_head() -> None:
    model = build("class_token")
    tokens = block0_tokens(model, images_of()).double()
    result = attention_relevance(vit_parts(model), tokens, input_relevance=True)
    totals = result.input_relevance.sum(dim=(1, 2))
    torch.testing.assert_close(totals, torch.ones(3, dtype=totals.dtype), rtol=0, atol=1e-6)


@pytest.mark.parametrize("pooling", sorted(POOLINGS))
@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.__name__)
def test_an_image_alone_gets_its_map_in_a_batch_and_the_model_is_left_as_found(
    pooling: str, method: type, state_of, same_state
) -> None:
    model = build(pooling)
    before = state_of(model)
    images = images_of()
    batch = method(model).attribute(images, target=[3, 3, 3], upsample=False)
    alone = method(model).attribute(images[2:], target=3, upsample=False)
    torch.testing.assert_close(alone, batch[2:], rtol=1e-5, atol=1e-7)
    assert torch.isfinite(batch).all()
    same_state(before, state_of(model))


def test_a_relative_position_bias_shared_by_all_layers_is_refused_by_the_lrp_methods() -> None:
    model = tiny_hf_beit(
        use_relative_position_bias=False, use_shared_relative_position_bias=True
    )
    with pytest.raises(ValueError, match="shared by all layers.*RawAttention"):
        AttnLRP(model).attribute(images_of())
    assert torch.isfinite(RawAttention(model).attribute(images_of())).all()


def test_images_of_another_size_are_refused_by_the_lrp_methods_by_name() -> None:
    model = build("mean")
    images = torch.rand(1, 3, 40, 40)
    with pytest.raises(ValueError, match="defined for 17 tokens, the images give 26"):
        AttnLRP(model).attribute(images, additional_forward_args=(None, True))
