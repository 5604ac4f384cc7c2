"""The LRP relevance pass behind Transformer Attribution: the original authors'
numbers in batch, on every model family, its rules' conservation properties, and
independence of the examples of a batch."""

import copy
from dataclasses import replace
from typing import Callable, Dict

import pytest
import torch
from tiny_models import tiny_timm, tiny_timm_distilled
from torch import Tensor, nn

from captum_saco.attr import GradientWeightedAttention
from captum_saco.attr._core.families import adapter_for, vit_parts
from captum_saco.attr._core.relevance import (
    CHEFER_RULES,
    AttentionRelevance,
    alpha1_beta0,
    attention_relevance,
    embedding_in,
    pass_through,
    z_box,
    z_rule_half_each,
    z_rule_rescaled,
)
from tests.numerics import relative_error


def block0_tokens(model: nn.Module, images: Tensor) -> Tensor:
    """The tokens entering block 0 when ``model`` runs on ``images``."""
    with adapter_for(model).capture() as record, torch.no_grad():
        model(images)
    assert record.tokens is not None
    return record.tokens


def relevance_of(model: nn.Module, images: Tensor, target=None, **options) -> AttentionRelevance:
    return attention_relevance(vit_parts(model), block0_tokens(model, images), target, **options)


def partial_lrp(result: AttentionRelevance, num_prefix_tokens: int = 1) -> Tensor:
    """``mean_h clamp(R(A_last), min=0)``, class-token row, patch columns."""
    return result.relevances[-1].clamp(min=0).mean(dim=1)[:, 0, num_prefix_tokens:]


# --- the original numbers ----------------------------------------------------------------
def test_replay_from_block0_tokens_reproduces_the_models_logits(
    reference: Dict, reference_model: nn.Module, scores_of
) -> None:
    result = relevance_of(reference_model, reference["inputs"])
    with torch.no_grad():
        expected = scores_of(reference_model, reference["inputs"])
    torch.testing.assert_close(result.logits, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(result.logits, reference["logits"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("target_kind", ["argmax", "fixed"])
def test_batched_partial_lrp_equals_the_original_per_image_values(
    reference: Dict, reference_model: nn.Module, target_kind: str
) -> None:
    target = reference["targets"][target_kind]
    result = relevance_of(reference_model, reference["inputs"], target)
    expected = reference["token_attributions"][target_kind]["partial_lrp"]
    assert relative_error(partial_lrp(result), expected) < 1e-4


def test_default_target_is_the_predicted_class(
    reference: Dict, timm_reference_model: nn.Module
) -> None:
    result = relevance_of(timm_reference_model, reference["inputs"])
    assert result.classes.tolist() == reference["targets"]["argmax"].tolist()
    expected = reference["token_attributions"]["argmax"]["partial_lrp"]
    assert relative_error(partial_lrp(result), expected) < 1e-4


def test_gradients_are_those_of_the_model_itself(
    reference: Dict, reference_model: nn.Module
) -> None:
    class KeepTrace(GradientWeightedAttention):
        def _token_relevance(self, trace, **options):
            self.trace = trace
            return super()._token_relevance(trace, **options)

    target = reference["targets"]["fixed"]
    method = KeepTrace(reference_model)
    method.attribute(reference["inputs"], target=target)
    result = relevance_of(reference_model, reference["inputs"], target)
    for mine, models in zip(result.gradients, method.trace.gradients):
        torch.testing.assert_close(mine, models, rtol=1e-4, atol=1e-6)
    for mine, models in zip(result.attentions, method.trace.attentions):
        torch.testing.assert_close(mine, models, rtol=1e-4, atol=1e-7)


def test_shapes_are_per_block_batch_heads_tokens_tokens(
    reference: Dict, timm_reference_model: nn.Module
) -> None:
    result = relevance_of(timm_reference_model, reference["inputs"])
    for tensors in (result.attentions, result.gradients, result.relevances):
        assert len(tensors) == 4
        assert all(t.shape == (4, 3, 37, 37) for t in tensors)
    assert result.input_relevance is None
    assert relevance_of(
        timm_reference_model, reference["inputs"], input_relevance=True
    ).input_relevance.shape == (4, 37, 48)


# --- conservation -------------------------------------------------------------------------
def test_each_example_conserves_its_unit_relevance_down_to_the_block0_tokens(
    reference: Dict, reference_model: nn.Module
) -> None:
    result = relevance_of(reference_model, reference["inputs"], [0, 3, 7, 9], input_relevance=True)
    totals = result.input_relevance.sum(dim=(1, 2))
    torch.testing.assert_close(totals, torch.ones(4), rtol=0, atol=1e-4)


@pytest.mark.parametrize(
    "build",
    [tiny_timm_distilled, lambda: tiny_timm(reg_tokens=2, init_values=0.1)],
    ids=["distilled_two_heads", "registers_layer_scale"],
)
def test_prefix_tokens_heads_and_layer_scale_keep_logits_and_conservation(
    build: Callable[[], nn.Module],
) -> None:
    model = build()
    images = torch.rand(3, 3, 32, 32)
    result = relevance_of(model, images, input_relevance=True)
    with torch.no_grad():
        torch.testing.assert_close(result.logits, model(images), rtol=1e-5, atol=1e-5)
    totals = result.input_relevance.sum(dim=(1, 2))
    torch.testing.assert_close(totals, torch.ones(3), rtol=0, atol=1e-4)


def two_product_alpha1_beta0(inputs: Tensor, weight: Tensor, relevance: Tensor) -> Tensor:
    """alpha1-beta0 with its denominator as the original computes it:
    ``x+ @ W+^T + x- @ W-^T + 1e-9``, two matrix products."""
    positive_in, negative_in = inputs.clamp(min=0), inputs.clamp(max=0)
    positive_w, negative_w = weight.clamp(min=0), weight.clamp(max=0)
    scale = relevance / (positive_in @ positive_w.t() + negative_in @ negative_w.t() + 1e-9)
    return positive_in * (scale @ positive_w) + negative_in * (scale @ negative_w)


def test_linear_rule_conserves_relevance_except_of_outputs_without_positive_contributions() -> None:
    torch.manual_seed(0)
    inputs, weight = torch.randn(2, 5, 8), torch.randn(6, 8)
    relevance = torch.randn(2, 5, 6)
    result = alpha1_beta0(inputs, weight, inputs @ weight.t(), relevance)
    positive_parts = (
        inputs.clamp(min=0) @ weight.clamp(min=0).t()
        + inputs.clamp(max=0) @ weight.clamp(max=0).t()
    )
    assert (positive_parts == 0).any()  # such outputs absorb their relevance
    torch.testing.assert_close(result.sum(dim=-1), (relevance * (positive_parts > 0)).sum(dim=-1))


def test_linear_rule_is_alpha1_beta0_with_one_shared_denominator() -> None:
    torch.manual_seed(0)
    x, w, r = torch.randn(8), torch.randn(8), torch.randn(())
    positive = x.clamp(min=0) * w.clamp(min=0) + x.clamp(max=0) * w.clamp(max=0)
    single = alpha1_beta0(x[None], w[None], (x @ w)[None], r[None])[0]
    torch.testing.assert_close(single, positive / positive.sum() * r)


def test_linear_rule_denominator_from_the_forward_product_equals_the_two_product_one() -> None:
    # z = (x W^T + |x| |W|^T) / 2 from the layer's output less its bias, as the relevance
    # pass calls the rule, gives the relevance of the original's z = x+ W+^T + x- W-^T to
    # float64 rounding, also next to an output without positive contributions (z = 0).
    torch.manual_seed(0)
    inputs = torch.randn(3, 7, 48, dtype=torch.float64)
    weight, bias = torch.randn(24, 48, dtype=torch.float64), torch.randn(24, dtype=torch.float64)
    weight[0] = -inputs[0, 0].sign() * weight[0].abs()  # output 0 of token 0: nothing positive
    relevance = torch.randn(3, 7, 24, dtype=torch.float64)
    product = torch.nn.functional.linear(inputs, weight, bias) - bias
    result = alpha1_beta0(inputs, weight, product, relevance)
    expected = two_product_alpha1_beta0(inputs, weight, relevance)
    torch.testing.assert_close(result, expected, rtol=1e-12, atol=1e-14)


def test_linear_rule_passes_nothing_from_an_output_without_positive_contributions() -> None:
    # The output's scale R / (0 + 1e-9) is huge; its terms in x+ (s W+) + x- (s W-) are
    # exactly 0, where (x (s W) + |x| (s |W|)) / 2 would cancel it with rounding errors.
    torch.manual_seed(0)
    signs = torch.where(torch.rand(16) < 0.5, -1.0, 1.0).double()
    inputs = signs * torch.randn(4, 16, dtype=torch.float64).abs()  # same signs in every row
    weight = torch.randn(8, 16, dtype=torch.float64)
    weight[3] = -signs * weight[3].abs()  # output 3: every contribution negative
    relevance = torch.rand(4, 8, dtype=torch.float64)
    silenced = relevance.clone()
    silenced[:, 3] = 0
    expected = alpha1_beta0(inputs, weight, inputs @ weight.t(), silenced)
    for huge in (1.0, 1e6):
        relevance[:, 3] = huge
        assert torch.equal(alpha1_beta0(inputs, weight, inputs @ weight.t(), relevance), expected)


def test_linear_rule_in_float16_is_finite_and_silent_where_nothing_is_positive() -> None:
    # 1e-9 vanishes in float16 and the forward's product less its bias is off by ~1e-3 of
    # the bias: z comes from the two products, exactly 0 for output 3, not a tiny rounding
    # that would overflow R / z to inf (and inf * 0 to NaN).
    torch.manual_seed(0)
    signs = torch.where(torch.rand(16) < 0.5, -1.0, 1.0)
    inputs = (signs * torch.rand(4, 16) * 1e-2).half()
    weight = (torch.randn(8, 16) * 1e-2).half()
    weight[3] = -signs.half() * weight[3].abs()
    bias = torch.full((8,), 0.01).half()
    product = torch.nn.functional.linear(inputs, weight, bias) - bias
    relevance = torch.ones(4, 8).half()
    silenced = relevance.clone()
    silenced[:, 3] = 0
    result = alpha1_beta0(inputs, weight, product, relevance)
    assert result.isfinite().all()
    assert torch.equal(result, alpha1_beta0(inputs, weight, product, silenced))


def test_residual_rule_conserves_each_example_and_shares_by_absolute_branch_totals() -> None:
    torch.manual_seed(0)
    skip, branch, relevance = torch.randn(3, 4, 5), torch.randn(3, 4, 5), torch.randn(3, 4, 5)
    skip_relevance, branch_relevance = z_rule_rescaled(skip, branch, relevance)
    totals = relevance.sum(dim=(1, 2))
    torch.testing.assert_close(skip_relevance.sum((1, 2)) + branch_relevance.sum((1, 2)), totals)
    z_skip = (skip * relevance / (skip + branch)).sum(dim=(1, 2))
    z_branch = (branch * relevance / (skip + branch)).sum(dim=(1, 2))
    share = z_skip.abs() / (z_skip.abs() + z_branch.abs())
    torch.testing.assert_close(skip_relevance.sum((1, 2)), share * totals)
    # within a branch, the z-rule's proportions are kept
    ratio = skip_relevance / (skip * relevance / (skip + branch))
    torch.testing.assert_close(ratio, ratio[:, :1, :1].expand_as(ratio))


def test_attention_products_give_each_operand_half_of_the_relevance() -> None:
    torch.manual_seed(0)
    left, right = torch.rand(2, 3, 4, 4), torch.randn(2, 3, 4, 6)
    relevance = torch.randn(2, 3, 4, 6)
    left_relevance, right_relevance = z_rule_half_each(left, right, left @ right, relevance)
    torch.testing.assert_close(left_relevance.sum((2, 3)), relevance.sum((2, 3)) / 2)
    torch.testing.assert_close(right_relevance.sum((2, 3)), relevance.sum((2, 3)) / 2)


# --- named rules and how far the pass goes ------------------------------------------------
def test_chefers_rules_are_the_named_rules_of_the_original() -> None:
    assert CHEFER_RULES.linear is alpha1_beta0
    assert CHEFER_RULES.product is z_rule_half_each
    assert CHEFER_RULES.residual is z_rule_rescaled
    assert CHEFER_RULES.elementwise is pass_through


def test_another_residual_rule_changes_the_relevance_and_still_conserves_it(
    reference: Dict, timm_reference_model: nn.Module
) -> None:
    def plain_z_rule(skip: Tensor, branch: Tensor, relevance: Tensor):
        scale = relevance / (skip + branch)
        return skip * scale, branch * scale

    rules = replace(CHEFER_RULES, residual=plain_z_rule)
    chefer = relevance_of(timm_reference_model, reference["inputs"], 3, input_relevance=True)
    plain = relevance_of(
        timm_reference_model, reference["inputs"], 3, input_relevance=True, rules=rules
    )
    assert relative_error(plain.relevances[0], chefer.relevances[0]) > 1e-2
    totals = plain.input_relevance.sum(dim=(1, 2))
    torch.testing.assert_close(totals, torch.ones(4), rtol=0, atol=1e-4)


def test_the_pass_stops_at_block0s_attention_unless_the_input_relevance_is_asked_for(
    reference: Dict, timm_reference_model: nn.Module
) -> None:
    short = relevance_of(timm_reference_model, reference["inputs"], 3)
    full = relevance_of(timm_reference_model, reference["inputs"], 3, input_relevance=True)
    assert short.input_relevance is None and full.input_relevance is not None
    for mine, other in zip(short.relevances, full.relevances):
        torch.testing.assert_close(mine, other, rtol=0, atol=0)


def test_first_block_stops_the_pass_early_and_gradients_can_be_left_out(
    reference: Dict, timm_reference_model: nn.Module
) -> None:
    full = relevance_of(timm_reference_model, reference["inputs"], 3)
    last = relevance_of(
        timm_reference_model, reference["inputs"], 3, first_block=3, gradients=False
    )
    assert last.relevances[:3] == [None, None, None] and last.gradients is None
    torch.testing.assert_close(last.relevances[3], full.relevances[3], rtol=0, atol=0)
    with pytest.raises(ValueError, match="input_relevance"):
        relevance_of(timm_reference_model, reference["inputs"], first_block=1, input_relevance=True)


# --- precision -------------------------------------------------------------------------
def test_embedding_in_float64_gives_the_tokens_of_a_float64_model_and_removes_its_hook(
    reference: Dict, reference_model: nn.Module, state_of, same_state
) -> None:
    before = state_of(reference_model)
    adapter = adapter_for(reference_model)
    with embedding_in(adapter, torch.float64), adapter.capture(stop_at_first_block=True) as record:
        reference_model(reference["inputs"])
    same_state(before, state_of(reference_model))
    model64 = copy.deepcopy(reference_model).double()
    expected = block0_tokens(model64, reference["inputs"].double())
    assert record.tokens.dtype == torch.float64
    torch.testing.assert_close(record.tokens, expected, rtol=1e-12, atol=1e-12)


def test_float64_tokens_give_the_float64_partial_lrp_of_the_original_on_a_float32_model(
    reference: Dict, more_reference: Dict, reference_model: nn.Module
) -> None:
    tokens = block0_tokens(copy.deepcopy(reference_model).double(), reference["inputs"].double())
    for target_kind in ("argmax", "fixed"):
        target = reference["targets"][target_kind]
        result = attention_relevance(vit_parts(reference_model), tokens, target)
        assert result.relevances[-1].dtype == torch.float64
        expected = more_reference["attributions"][target_kind]["partial_lrp_float64"]
        assert relative_error(partial_lrp(result), expected) < 1e-4


# --- batches ----------------------------------------------------------------------------
def test_an_examples_relevance_ignores_the_rest_of_the_batch(
    reference: Dict, timm_reference_model: nn.Module
) -> None:
    images = reference["inputs"]
    batched = relevance_of(timm_reference_model, images, [3, 3, 1, 8])
    alone = relevance_of(timm_reference_model, images[2:3], [1])
    other_company = relevance_of(
        timm_reference_model, torch.cat([images[2:3], 5 * images[:2]]), [1, 0, 0]
    )
    for result in (batched, other_company):
        index = 2 if result is batched else 0
        for block in range(4):
            torch.testing.assert_close(
                result.relevances[block][index], alone.relevances[block][0], rtol=1e-4, atol=1e-7
            )
            torch.testing.assert_close(
                result.gradients[block][index], alone.gradients[block][0], rtol=1e-4, atol=1e-6
            )


def test_works_under_no_grad_and_on_a_frozen_model(
    reference: Dict, timm_reference_model: nn.Module
) -> None:
    tokens = block0_tokens(timm_reference_model, reference["inputs"])
    parts = vit_parts(timm_reference_model)
    expected = attention_relevance(parts, tokens, 3)
    params = list(timm_reference_model.parameters())
    try:
        for p in params:
            p.requires_grad_(False)
        with torch.no_grad():
            frozen = attention_relevance(parts, tokens, 3)
    finally:
        for p in params:
            p.requires_grad_(True)
    pairs = zip(frozen.relevances + frozen.gradients, expected.relevances + expected.gradients)
    for mine, other in pairs:
        torch.testing.assert_close(mine, other)
    assert all(not t.requires_grad for t in frozen.relevances + frozen.gradients)


def test_the_z_box_rule_takes_a_valid_padded_convolution_as_an_unpadded_one() -> None:
    # Hugging Face SigLIP's patch embedding is Conv2d(..., padding="valid")
    torch.manual_seed(0)
    valid = nn.Conv2d(3, 4, 8, stride=8, padding="valid")
    unpadded = copy.deepcopy(valid)
    unpadded.padding = (0, 0)
    pixels, relevance = torch.rand(2, 3, 16, 16), torch.rand(2, 4, 2, 2)
    low, high = torch.full((1, 3, 1, 1), -1.0), torch.full((1, 3, 1, 1), 1.0)
    torch.testing.assert_close(
        z_box(valid, pixels, relevance, low, high), z_box(unpadded, pixels, relevance, low, high)
    )
