"""Hugging Face ``Dinov2ForImageClassification`` and
``Dinov2WithRegistersForImageClassification``: its head reads the class token
and the mean of the patch tokens, so the attention-map methods start from
``s = ½ e_0 + ½ mean of the patch tokens`` and equal a recomputation from
attention probabilities this test captures itself; the LRP methods refuse the
model by name. The model is saved and loaded back, the path a user takes."""

import copy
from pathlib import Path
from typing import List, Tuple

import pytest
import torch
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

WORKING = [RawAttention, AttentionRollout, GradientWeightedAttention, AttentionGradCAM, AttCAT]
REFUSING = [TransformerAttribution, PartialLRP, FullLRP, ConservativeLRP, AttnLRP]


SIZE = dict(image_size=32, patch_size=8, hidden_size=24, num_hidden_layers=2, num_attention_heads=2)


@pytest.fixture(scope="module", params=["dinov2", "dinov2_with_registers"])
def dinov2(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> nn.Module:
    torch.manual_seed(0)
    if request.param == "dinov2":
        cls, config = Dinov2ForImageClassification, Dinov2Config(num_labels=5, **SIZE)
    else:
        cls = Dinov2WithRegistersForImageClassification
        config = Dinov2WithRegistersConfig(num_labels=5, num_register_tokens=2, **SIZE)
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


@pytest.mark.parametrize("method", REFUSING, ids=lambda m: m.__name__)
def test_lrp_methods_refuse_the_class_plus_mean_head_by_name(
    dinov2: nn.Module, method: type, state_of, same_state
) -> None:
    before = state_of(dinov2)
    with pytest.raises(ValueError, match="Dinov2.*ForImageClassification has a head reading"):
        method(dinov2).attribute(images(1), target=0)
    same_state(before, state_of(dinov2))


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
