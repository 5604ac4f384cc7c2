"""Hugging Face ``Dinov2ForImageClassification`` and
``Dinov2WithRegistersForImageClassification``: its head reads the class token
and the mean of the patch tokens, so the attention-map methods start from
``s = ½ e_0 + ½ mean of the patch tokens`` and equal a recomputation from
attention probabilities this test captures itself; the LRP methods replay the
head ``classifier(concat(class token, mean of the patch tokens))``: plain
gradient times input through the replay is the model's own, conservative LRP
conserves the logit without biases, ConservativeLRP and AttnLRP equal their rules
patched into a copy of the model, and Chefer's pass conserves each example's
unit relevance; with DINOv2's plain MLP and with its SwiGLU MLP
(``use_swiglu_ffn=True``, the gated ``down_proj(silu(gate_proj(x)) * up_proj(x))``).
The model is saved and loaded back, the path a user takes."""

import copy
from pathlib import Path
from typing import List, Tuple

import pytest
import torch
from lrp_rules import assert_conserves, rules_patched_copy, without_biases
from lrp_rules import gradient_x_input as patched_gradient_x_input
from test_relevance import block0_tokens
from torch import Tensor, nn
from transformers import (
    Dinov2Config,
    Dinov2ForImageClassification,
    Dinov2WithRegistersConfig,
    Dinov2WithRegistersForImageClassification,
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
from captum_saco.attr._core.families import adapter_for, vit_parts
from captum_saco.attr._core.gradient_x_input import gradient_x_input
from captum_saco.attr._core.relevance import attention_relevance
from captum_saco.attr._core.replay import PLAIN_GRADIENT
from tests.numerics import relative_error

WORKING = [
    RawAttention,
    AttentionRollout,
    GradientWeightedAttention,
    AttentionGradCAM,
    AttCAT,
    TransformerAttribution,
    PartialLRP,
    FullLRP,
    ConservativeLRP,
    AttnLRP,
]


SIZE = dict(image_size=32, patch_size=8, hidden_size=24, num_hidden_layers=2, num_attention_heads=2)


@pytest.fixture(
    scope="module",
    params=["dinov2", "dinov2_with_registers", "dinov2_swiglu", "dinov2_with_registers_swiglu"],
)
def dinov2(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> nn.Module:
    torch.manual_seed(0)
    swiglu = request.param.endswith("_swiglu")
    if request.param.startswith("dinov2_with_registers"):
        cls = Dinov2WithRegistersForImageClassification
        config = Dinov2WithRegistersConfig(
            num_labels=5, num_register_tokens=2, use_swiglu_ffn=swiglu, **SIZE
        )
    else:
        cls = Dinov2ForImageClassification
        config = Dinov2Config(num_labels=5, use_swiglu_ffn=swiglu, **SIZE)
    folder: Path = tmp_path_factory.mktemp(request.param)
    cls(config).save_pretrained(folder)
    return cls.from_pretrained(folder).eval()


def num_prefix_tokens(model: nn.Module) -> int:
    return 1 + getattr(model.config, "num_register_tokens", 0)


def images(n: int = 3) -> Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(4))


def captured(model: nn.Module, x: Tensor, target: Tensor) -> Tuple[List[Tensor], List[Tensor]]:
    """Each layer's attention probabilities and their gradients of the summed
    target logits, captured on an eager-attention copy with the test's own hooks."""
    model = copy.deepcopy(model)
    model.config._attn_implementation = "eager"
    attentions: List[Tensor] = []

    def keep(module: nn.Module, args: Tuple, output: Tuple) -> None:
        output[1].retain_grad()
        attentions.append(output[1])

    backbone = getattr(model, "dinov2_with_registers", None) or model.dinov2
    for layer in backbone.encoder.layer:
        layer.attention.register_forward_hook(keep)
    model(x).logits.gather(1, target[:, None]).sum().backward()
    return [a.detach() for a in attentions], [a.grad for a in attentions]


def test_attention_map_methods_equal_a_recomputation_from_half_class_half_patch_mean(
    dinov2: nn.Module,
) -> None:
    x, target = images(), torch.tensor([0, 1, 4])
    attentions, gradients = captured(dinov2, x, target)
    t, p = attentions[0].shape[-1], num_prefix_tokens(dinov2)
    s = torch.zeros(t)
    s[0], s[p:] = 0.5, 0.5 / (t - p)
    eye = torch.eye(t)
    rollout = s.expand(3, 1, -1)
    for attention in reversed(attentions):
        fused = attention.mean(dim=1) + eye
        rollout = rollout @ (fused / fused.sum(dim=-1, keepdim=True))
    weighted = [(g * a).clamp(min=0).mean(dim=1) for a, g in zip(attentions, gradients)]
    chained = eye.expand(3, -1, -1)
    for w in weighted:
        chained = chained + w @ chained
    row, gradient = s @ attentions[-1], s @ gradients[-1]
    gradcam = (gradient[:, :, p:].mean(dim=-1, keepdim=True) * row).mean(dim=1).clamp(min=0)
    expected = {
        "raw": s @ attentions[-1].mean(dim=1),
        "rollout": rollout[:, 0],
        "generic": s @ chained,
        "gradcam": gradcam,
    }
    actual = {
        "raw": RawAttention(dinov2).attribute(x, upsample=False),
        "rollout": AttentionRollout(dinov2).attribute(x, upsample=False),
        "generic": GradientWeightedAttention(dinov2).attribute(x, target=target, upsample=False),
        "gradcam": AttentionGradCAM(dinov2).attribute(x, target=target, upsample=False),
    }
    for name in expected:
        torch.testing.assert_close(
            actual[name], expected[name][:, p:].reshape(3, 1, 4, 4), rtol=1e-5, atol=1e-7, msg=name
        )


def test_the_replay_with_plain_gradients_is_the_models_own_gradient_times_input(
    dinov2: nn.Module,
) -> None:
    model = copy.deepcopy(dinov2).double()
    x, target = images().double().requires_grad_(), torch.tensor([0, 3, 4])
    model(x).logits.gather(1, target[:, None]).sum().backward()
    result = gradient_x_input(adapter_for(model), model, x.detach(), target, (), PLAIN_GRADIENT)
    assert relative_error(result.pixels, x.detach() * x.grad) < 1e-10


@pytest.mark.parametrize(
    "method, options, attention_rule",
    [(AttnLRP, {}, "uniform"), (ConservativeLRP, {"activation_rule": "identity"}, "detached")],
)
def test_gradient_rule_methods_equal_their_rules_patched_into_a_copy_of_the_model(
    dinov2: nn.Module, method: type, options: dict, attention_rule: str
) -> None:
    model = copy.deepcopy(dinov2).double()
    x, target = images().double(), torch.tensor([2, 2, 4])
    patched = rules_patched_copy(model, attention_rule)
    expected = patched_gradient_x_input(lambda x: patched(x).logits, x, target)
    actual = method(model).attribute(x, target=target, **options)
    assert relative_error(actual, expected) < 1e-10


def test_conservative_lrp_relevance_sums_to_the_target_logit_without_biases(
    dinov2: nn.Module,
) -> None:
    model = without_biases(dinov2)
    x, target = images(), torch.tensor([1, 0, 3])
    assert_conserves(model, x, target)


def test_the_relevance_pass_conserves_each_examples_unit_relevance_through_the_head(
    dinov2: nn.Module,
) -> None:
    model = copy.deepcopy(dinov2).double()
    with torch.no_grad():  # Hugging Face initialises them to zero, a trained model's are not:
        for name, parameter in model.named_parameters():  # on zero tokens Chefer's
            if name.endswith("register_tokens"):  # z-rules divide 0 by 0 and drop relevance
                parameter.normal_()
    x = images().double()
    result = attention_relevance(vit_parts(model), block0_tokens(model, x), input_relevance=True)
    with torch.no_grad():
        torch.testing.assert_close(result.logits, model(x).logits)
    totals = result.input_relevance.sum(dim=(1, 2))
    torch.testing.assert_close(totals, torch.ones_like(totals), rtol=0, atol=1e-6)


@pytest.mark.parametrize("method", WORKING, ids=lambda m: m.__name__)
def test_an_image_alone_gets_its_map_in_a_batch_and_the_model_is_left_as_found(
    dinov2: nn.Module, method: type, state_of, same_state
) -> None:
    before = state_of(dinov2)
    x = images()
    batch = method(dinov2).attribute(x, target=[2, 2, 2], upsample=False)
    alone = method(dinov2).attribute(x[:1], target=2, upsample=False)
    torch.testing.assert_close(alone, batch[:1], rtol=1e-5, atol=1e-7)
    assert torch.isfinite(batch).all()
    same_state(before, state_of(dinov2))
