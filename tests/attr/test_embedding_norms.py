"""timm ViTs with norms outside the blocks: ``pre_norm=True`` (the CLIP layout,
``norm_pre`` before block 0), ``embed_norm_layer`` (a norm inside the patch
embedding) and ``final_norm=False`` (no final norm). Every relevance method gives
these norms the LayerNorm rule, proven by conservation, by an independent
formulation of the rules patched into a copy of the model, and against a float64
copy of the model; no method crashes on them or returns a noise-level map."""

import copy
from typing import Dict

import pytest
import torch
from lrp_rules import assert_conserves, gradient_x_input, rules_patched_copy, without_biases
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
from captum_saco.attr._core.relevance import attention_relevance, z_rule_rescaled
from tests.numerics import relative_errors

CONFIGS: Dict[str, Dict] = {
    "pre_norm": dict(pre_norm=True),
    "embed_norm_layer": dict(embed_norm_layer=nn.LayerNorm),
    "final_norm_false": dict(final_norm=False),
    "clip_layout_with_embed_norm": dict(pre_norm=True, embed_norm_layer=nn.LayerNorm),
}
ALL_METHODS = [
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


def model_of(config: str) -> nn.Module:
    """The tiny timm ViT of ``config``, with every norm's weight and bias drawn at
    random (timm initialises them to 1 and 0, which would hide a missing weight)."""
    model = tiny_timm(**CONFIGS[config])
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.LayerNorm):
                module.weight.copy_(1 + 0.3 * torch.randn(module.weight.shape, generator=generator))
                module.bias.copy_(0.2 * torch.randn(module.bias.shape, generator=generator))
    return model


def images(n: int = 3) -> Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(2))


# --- conservation ------------------------------------------------------------------------
@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_conservative_lrp_pixel_relevance_sums_to_the_target_logit_without_biases(
    config: str,
) -> None:
    # Before the norms outside the blocks got the LayerNorm rule, norm_pre and the
    # embedding's norm passed a plain gradient, and the sum was 1e-4..1e-6 of the logit.
    model = without_biases(model_of(config))
    x, target = images(), torch.tensor([0, 3, 4])
    assert_conserves(model, x, target)


@pytest.mark.parametrize("config", ["pre_norm", "embed_norm_layer", "clip_layout_with_embed_norm"])
def test_full_lrp_passes_the_relevance_through_the_norms_before_block_0_unchanged(
    config: str,
) -> None:
    # Chefer's LayerNorm rule is the identity: the relevance of the tokens entering
    # block 0 is that of norm_pre's input, which the residual rule splits between the
    # token embeddings and the position embedding; the patch norm hands its share
    # on to the convolution's output. Recomputed here from the test's own hooks.
    model = model_of(config).double()
    x, target = images().double(), [1, 2, 0]
    seen: Dict[str, Tensor] = {}
    hooks = [
        model.patch_embed.register_forward_hook(lambda m, a, out: seen.setdefault("patches", out)),
        model.blocks[0].register_forward_pre_hook(lambda m, a: seen.setdefault("tokens", a[0])),
        model.norm_pre.register_forward_pre_hook(lambda m, a: seen.setdefault("sum", a[0])),
    ]
    with torch.no_grad():
        model(x)
    for hook in hooks:
        hook.remove()
    relevance = attention_relevance(
        vit_parts(model), seen["tokens"], target, gradients=False, input_relevance=True
    ).input_relevance
    embedded = torch.cat([model.cls_token.expand(len(x), -1, -1), seen["patches"]], dim=1)
    summed = seen.get("sum", seen["tokens"])
    with torch.no_grad():
        expected, _ = z_rule_rescaled(embedded, summed - embedded, relevance)
    actual = FullLRP(model).attribute(x, target=target, upsample=False)
    assert relative_errors(actual.flatten(1), expected[:, 1:].sum(dim=-1)).max() < 1e-10


# --- the rules patched into a copy of the model ------------------------------------------
@pytest.mark.parametrize("config", sorted(CONFIGS))
@pytest.mark.parametrize(
    "method, options, attention_rule",
    [
        (AttnLRP, {}, "uniform"),
        (ConservativeLRP, {"activation_rule": "identity"}, "detached"),
    ],
)
def test_gradient_rule_methods_equal_their_rules_patched_into_a_copy_of_the_model(
    config: str, method: type, options: Dict, attention_rule: str
) -> None:
    model = model_of(config).double()
    x, target = images().double(), torch.tensor([1, 2, 0])
    expected = gradient_x_input(rules_patched_copy(model, attention_rule), x, target)
    actual = method(model).attribute(x, target=target, **options)
    assert relative_errors(actual, expected).max() < 1e-10


# --- Chefer's relevance pass in float64 ----------------------------------------------------
@pytest.mark.parametrize("config", sorted(CONFIGS))
@pytest.mark.parametrize("method", [TransformerAttribution, PartialLRP])
def test_float64_relevance_of_a_float32_model_equals_that_of_its_float64_copy(
    config: str, method: type
) -> None:
    # The float64 pass once crashed here ("mixed dtype"): the float64 patch
    # embedding ran into the float32 norm_pre / embedding norm.
    model = model_of(config)
    x, target = images(), [4, 0, 2]
    actual = method(model).attribute(x, target=target, upsample=False)
    expected = method(copy.deepcopy(model).double()).attribute(
        x.double(), target=target, upsample=False
    )
    assert actual.dtype == torch.float32
    assert relative_errors(actual.double(), expected).max() < 1e-6


# --- every method runs, batch independent, model left as found ----------------------------
@pytest.mark.parametrize(
    "config, method",
    [(config, method) for config in sorted(CONFIGS) for method in ALL_METHODS],
    ids=str,
)
def test_an_image_alone_gets_its_map_in_a_batch_and_the_model_is_left_as_found(
    config: str, method: type, state_of, same_state
) -> None:
    model = model_of(config)
    before = state_of(model)
    x = images()
    batch = method(model).attribute(x, target=[1, 1, 1], upsample=False)
    alone = method(model).attribute(x[1:2], target=1, upsample=False)
    torch.testing.assert_close(alone, batch[1:2], rtol=1e-5, atol=1e-6)
    assert torch.isfinite(batch).all()
    same_state(before, state_of(model))


@pytest.mark.parametrize("method", [ConservativeLRP, AttnLRP, TransformerAttribution, PartialLRP])
def test_the_norms_hooks_are_removed_after_a_failing_call(
    method: type, state_of, same_state
) -> None:
    model = model_of("clip_layout_with_embed_norm")
    before = state_of(model)
    with pytest.raises(ValueError, match="target"):
        method(model).attribute(images(1), target=99)
    same_state(before, state_of(model))
