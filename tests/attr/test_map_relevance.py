"""The relevance methods on attention-pooled (MAP) heads: timm
``VisionTransformer(global_pool="map")`` (``AttentionPoolLatent``) and SigLIP's
pooling head (``nn.MultiheadAttention`` on a learned probe, then a LayerNorm and an
MLP added residually), zero-shot included.

The MAP head is an attention layer and takes the attention rules: under
ConservativeLRP its probabilities are constants (the latent query is a learned
constant, so the pooled values are linear in the tokens and the logit is
conserved), under AttnLRP its products take the uniform rule, and Chefer's pass
crosses it as a block's attention. Each is checked against the model itself
(float64 replay), conservation on a bias-free copy, the rules patched into a
copy of the model (``lrp_rules.rules_patched_copy``, plain autograd) and the
pool's attention captured by the test itself."""

from typing import Callable, Dict

import pytest
import torch
from lrp_rules import assert_conserves, gradient_x_input, rules_patched_copy, without_biases
from test_attention_pooled_heads import (
    MAP_MODELS,
    captured,
    images_of,
    logits_of,
    on_grid,
    sharpened,
    timm_map,
)
from test_relevance import block0_tokens, relevance_of
from timm.layers import AttentionPoolLatent
from torch import Tensor, nn

import captum_saco.models.zero_shot as zero_shot_module
from captum_saco.attr import (
    AttnLRP,
    ConservativeLRP,
    FullLRP,
    PartialLRP,
    RawAttention,
    TransformerAttribution,
)
from captum_saco.attr._core.families import vit_parts
from captum_saco.attr._core.replay import model_forward
from captum_saco.models import ZeroShotClassifier
from tests.numerics import relative_error

RELEVANCE = [TransformerAttribution, PartialLRP, FullLRP, ConservativeLRP, AttnLRP]


def timm_two_latents() -> nn.Module:
    """A timm MAP head with two latent queries averaged (``pool_type='avg'``) and
    query/key LayerNorms (``qk_norm``)."""
    model = timm_map(class_token=False)
    model.attn_pool = AttentionPoolLatent(
        24, num_heads=2, mlp_ratio=2.0, latent_len=2, pool_type="avg", qk_norm=True,
        norm_layer=nn.LayerNorm,
    )  # fmt: skip
    return sharpened(model)


MODELS: Dict[str, Callable[[], nn.Module]] = {
    **MAP_MODELS,
    "timm_two_latents_qk_norm": timm_two_latents,
    # timm's SigLIP image towers have no classifier (num_classes=0): the pooled
    # latent is the image embedding
    "zero_shot_timm_tower": lambda: ZeroShotClassifier(
        timm_map(class_token=False, num_classes=0), torch.randn(5, 24), logit_scale=10.0
    ),
}


def _rule_normalize(x: Tensor, dim: int = 1, **_) -> Tensor:
    """The L2 normalisation of a zero-shot head with its norm a constant."""
    return x / x.norm(dim=dim, keepdim=True).detach()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_the_float64_replay_of_the_parts_gives_the_models_logits(name: str) -> None:
    model, images = MODELS[name]().double(), images_of().double()
    with torch.no_grad():
        replayed = model_forward(vit_parts(model), block0_tokens(model, images)).logits
        expected = logits_of(model(images))
    assert relative_error(replayed, expected) < 1e-12


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_conservative_lrp_pixel_relevance_sums_to_the_target_logit_without_biases(
    name: str, dtype: torch.dtype
) -> None:
    # The latent query (the SigLIP probe) is not a bias: a learned constant query,
    # it makes the probabilities constants under the AH rule, and the pooled values
    # stay linear in the tokens. SigLIP's logit bias is a bias and is zeroed.
    model = without_biases(MODELS[name]()).to(dtype)
    images, target = images_of().to(dtype), torch.tensor([1, 0, 3])
    tolerance = 1e-3 if dtype == torch.float32 else 1e-10
    logits = assert_conserves(model, images, target, rtol=tolerance)
    assert logits.abs().min() > 1e-3


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize(
    "method, options, attention_rule",
    [(AttnLRP, {}, "uniform"), (ConservativeLRP, {"activation_rule": "identity"}, "detached")],
)
def test_gradient_rule_methods_equal_their_rules_patched_into_a_copy_of_the_model(
    name: str, method: type, options: Dict, attention_rule: str, monkeypatch
) -> None:
    model, images = MODELS[name]().double(), images_of().double()
    target = torch.tensor([2, 2, 4])
    patched = rules_patched_copy(model, attention_rule)
    with monkeypatch.context() as patch:
        patch.setattr(zero_shot_module.F, "normalize", _rule_normalize)
        expected = gradient_x_input(lambda x: logits_of(patched(x)), images, target)
    actual = method(model).attribute(images, target=target, **options)
    assert relative_error(actual, expected) < 1e-10


@pytest.mark.parametrize("name", sorted(MODELS))
def test_chefers_pass_hands_the_tokens_three_quarters_of_the_unit_relevance(name: str) -> None:
    # A V gives half to the values; Q K^T gives half of the other half to the keys
    # and half to the latent queries, constants of the model that keep it.
    model = MODELS[name]().double()
    result = relevance_of(model, images_of().double(), input_relevance=True)
    totals = result.input_relevance.sum(dim=(1, 2))
    torch.testing.assert_close(totals, torch.full_like(totals, 0.75), rtol=0, atol=1e-6)


class RelevanceReadOut(TransformerAttribution):
    """The read-out vector of the relevance pass's trace itself, as a map."""

    def _token_relevance(self, trace, **_):
        return trace.readout_rows()[:, 0]


@pytest.mark.parametrize("name", sorted(MAP_MODELS))
def test_transformer_attribution_starts_from_the_pools_attention_of_each_image(name: str) -> None:
    model, images = MAP_MODELS[name](), images_of()
    _, _, s, prefix = captured(name, model, images, torch.zeros(3, dtype=torch.long))
    actual = RelevanceReadOut(model).attribute(images, target=0, upsample=False)
    torch.testing.assert_close(actual.float(), on_grid(s, prefix), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("method", RELEVANCE, ids=lambda m: m.__name__)
def test_an_image_alone_gets_its_map_in_a_batch_and_the_model_is_left_as_found(
    name: str, method: type, state_of, same_state
) -> None:
    model, images = MODELS[name](), images_of()
    before = state_of(model)
    batch = method(model).attribute(images, target=[1, 1, 1], upsample=False)
    alone = method(model).attribute(images[1:2], target=1, upsample=False)
    assert torch.isfinite(batch).all()
    assert relative_error(alone, batch[1:2]) < 1e-5  # float32 rounding of the gradients
    same_state(before, state_of(model))


def test_a_pool_with_its_own_position_embedding_is_refused_by_the_relevance_methods() -> None:
    model = timm_map(class_token=False)
    model.attn_pool = AttentionPoolLatent(
        24, num_heads=2, mlp_ratio=2.0, pos_embed="abs", feat_size=16, norm_layer=nn.LayerNorm
    )
    with pytest.raises(
        ValueError,
        match=r"^model: VisionTransformer has a position embedding in its attention-pooling "
        r"\(MAP\) head, which TransformerAttribution, .* have no rule for; RawAttention, "
        "AttentionRollout, AttentionGradCAM, GradientWeightedAttention and AttCAT explain it",
    ):
        AttnLRP(model).attribute(images_of(), target=0)
    assert RawAttention(model).attribute(images_of(), upsample=False).shape == (3, 1, 4, 4)
