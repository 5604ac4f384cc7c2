"""Partial LRP and full LRP: the original authors' numbers (float64 runs exactly,
float32 runs within their rounding) in batch on every model family, the pixel rule,
and the conventions shared with the attention methods."""

import copy
from typing import Callable, Dict

import pytest
import torch
from timm.models.vision_transformer import ResPostBlock
from tiny_models import tiny_hf_deit, tiny_timm, tiny_timm_distilled
from torch import Tensor, nn
from transformers import DeiTForImageClassificationWithTeacher

from captum_saco.attr._core.families import adapter_for, vit_parts
from captum_saco.attr._core.full_lrp import FullLRP
from captum_saco.attr._core.partial_lrp import PartialLRP
from captum_saco.attr._core.relevance import attention_relevance, embedding_in
from tests.numerics import relative_error

TARGETS = ["argmax", "fixed"]


def float32_tolerance(more_reference: Dict, target_kind: str, key: str) -> float:
    """Two float32 computations that are each at most ``e`` (relative) off float64
    differ by at most ``2 e``; ``e`` is the original's worst recorded float32 error
    on these images, with the same again as margin for this implementation's."""
    return 3 * float(more_reference["float32_vs_float64"][target_kind][key].max())


# --- partial LRP: the original numbers ----------------------------------------------------
@pytest.mark.parametrize("target_kind", TARGETS)
def test_partial_lrp_of_a_float32_model_is_the_float64_run_of_the_original(
    reference: Dict, more_reference: Dict, reference_model: nn.Module, target_kind: str
) -> None:
    maps = PartialLRP(reference_model).attribute(
        reference["inputs"], target=reference["targets"][target_kind], upsample=False
    )
    assert maps.shape == (4, 1, 6, 6) and maps.dtype == torch.float32
    expected = more_reference["attributions"][target_kind]["partial_lrp_float64"]
    assert relative_error(maps, expected) < 1e-4


@pytest.mark.parametrize("target_kind", TARGETS)
def test_partial_lrp_of_a_float64_model_is_the_float64_run_of_the_original(
    reference: Dict, more_reference: Dict, timm_reference_model: nn.Module, target_kind: str
) -> None:
    model = copy.deepcopy(timm_reference_model).double()
    maps = PartialLRP(model).attribute(
        reference["inputs"].double(),
        target=reference["targets"][target_kind],
        upsample=False,
        precision="model",
    )
    assert maps.dtype == torch.float64
    expected = more_reference["attributions"][target_kind]["partial_lrp_float64"]
    assert relative_error(maps, expected) < 1e-4


@pytest.mark.parametrize("target_kind", TARGETS)
def test_partial_lrp_in_float32_is_the_original_float32_run_within_its_rounding(
    reference: Dict, more_reference: Dict, reference_model: nn.Module, target_kind: str
) -> None:
    maps = PartialLRP(reference_model).attribute(
        reference["inputs"],
        target=reference["targets"][target_kind],
        upsample=False,
        precision="model",
    )
    expected = reference["token_attributions"][target_kind]["partial_lrp"]
    tolerance = float32_tolerance(more_reference, target_kind, "partial_lrp")
    assert relative_error(maps, expected.double()) < tolerance


# --- full LRP: the original numbers -------------------------------------------------------
@pytest.mark.parametrize("target_kind", TARGETS)
def test_full_lrp_of_a_float32_model_is_the_float64_run_of_the_original(
    reference: Dict, more_reference: Dict, reference_model: nn.Module, target_kind: str
) -> None:
    method, target = FullLRP(reference_model), reference["targets"][target_kind]
    pixels = method.attribute(reference["inputs"], target=target)
    tokens = method.attribute(reference["inputs"], target=target, upsample=False)
    assert pixels.shape == (4, 3, 96, 96) and tokens.shape == (4, 1, 6, 6)
    assert pixels.dtype == tokens.dtype == torch.float32
    expected = more_reference["attributions"][target_kind]
    assert relative_error(pixels.sum(dim=1), expected["full_lrp_float64"]) < 1e-4
    assert relative_error(tokens, expected["full_lrp_tokens_float64"]) < 1e-4
    # the raw per-channel map is stored only in float32
    tolerance = float32_tolerance(more_reference, target_kind, "full_lrp_raw")
    assert relative_error(pixels, expected["full_lrp_raw"].double()) < tolerance


@pytest.mark.parametrize("target_kind", TARGETS)
def test_full_lrp_of_a_float64_model_is_the_float64_run_of_the_original(
    reference: Dict, more_reference: Dict, timm_reference_model: nn.Module, target_kind: str
) -> None:
    model = copy.deepcopy(timm_reference_model).double()
    method, target = FullLRP(model), reference["targets"][target_kind]
    pixels = method.attribute(reference["inputs"].double(), target=target, precision="model")
    tokens = method.attribute(
        reference["inputs"].double(), target=target, upsample=False, precision="model"
    )
    expected = more_reference["attributions"][target_kind]
    assert relative_error(pixels.sum(dim=1), expected["full_lrp_float64"]) < 1e-4
    assert relative_error(tokens, expected["full_lrp_tokens_float64"]) < 1e-4


@pytest.mark.parametrize("target_kind", TARGETS)
def test_full_lrp_in_float32_is_the_original_float32_run_within_its_rounding(
    reference: Dict, more_reference: Dict, reference_model: nn.Module, target_kind: str
) -> None:
    method, target = FullLRP(reference_model), reference["targets"][target_kind]
    pixels = method.attribute(reference["inputs"], target=target, precision="model")
    tokens = method.attribute(reference["inputs"], target=target, upsample=False, precision="model")
    expected = more_reference["attributions"][target_kind]
    for key, value in (
        ("full_lrp", pixels.sum(1)),
        ("full_lrp_raw", pixels),
        ("full_lrp_tokens", tokens),
    ):
        tolerance = float32_tolerance(more_reference, target_kind, key)
        assert relative_error(value, expected[key].double()) < tolerance, key


@pytest.mark.parametrize("target_kind", TARGETS)
def test_relevance_entering_block0_is_the_originals_and_sums_to_one(
    reference: Dict, more_reference: Dict, reference_model: nn.Module, target_kind: str
) -> None:
    adapter = adapter_for(reference_model)
    with embedding_in(adapter, torch.float64), adapter.capture(stop_at_first_block=True) as record:
        reference_model(reference["inputs"])
    target = reference["targets"][target_kind]
    result = attention_relevance(
        vit_parts(reference_model), record.tokens, target, gradients=False, input_relevance=True
    )
    block0 = result.input_relevance.sum(dim=-1)
    expected = more_reference["attributions"][target_kind]["full_lrp_tokens_block0_float64"]
    assert relative_error(block0, expected) < 1e-4
    torch.testing.assert_close(block0.sum(dim=1), torch.ones(4, dtype=torch.float64))


# --- the pixel rule and the prefix tokens ---------------------------------------------------
def test_the_pixel_rule_passes_on_exactly_the_patch_tokens_relevance(
    reference: Dict, timm_reference_model: nn.Module
) -> None:
    method = FullLRP(timm_reference_model)
    pixels = method.attribute(reference["inputs"], target=3)
    tokens = method.attribute(reference["inputs"], target=3, upsample=False)
    torch.testing.assert_close(pixels.sum(dim=(1, 2, 3)), tokens.sum(dim=(1, 2, 3)))


@pytest.mark.parametrize(
    "build, position_embedding",
    [
        (tiny_timm_distilled, lambda m: m.pos_embed),
        (lambda: tiny_timm(reg_tokens=2), lambda m: m.pos_embed),
        (
            lambda: tiny_hf_deit(DeiTForImageClassificationWithTeacher),
            lambda m: m.deit.embeddings.position_embeddings,
        ),
    ],
    ids=["timm_distilled", "timm_registers", "hf_deit_with_teacher"],
)
def test_prefix_tokens_are_the_tokens_entering_block0_less_their_position_embedding(
    build: Callable[[], nn.Module], position_embedding: Callable[[nn.Module], Tensor]
) -> None:
    model = build()
    adapter = adapter_for(model)
    with adapter.capture(stop_at_first_block=True) as record, torch.no_grad():
        model(torch.rand(2, 3, 32, 32))
    prefix = adapter.prefix_tokens()
    p = prefix.shape[1]
    assert p == adapter.num_prefix_tokens
    torch.testing.assert_close(
        record.tokens[:, :p], (prefix + position_embedding(model)[:, :p]).expand(2, -1, -1)
    )
    maps = FullLRP(model).attribute(torch.rand(2, 3, 32, 32))
    assert maps.shape == (2, 3, 32, 32) and torch.isfinite(maps).all()


def test_blocks_the_canonical_form_cannot_express_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match="ResPostBlock"):
        PartialLRP(tiny_timm(block_fn=ResPostBlock)).attribute(torch.rand(1, 3, 32, 32))


# --- conventions ----------------------------------------------------------------------------
@pytest.mark.parametrize("method_class", [PartialLRP, FullLRP])
def test_maps_of_a_batch_equal_the_maps_image_by_image(
    reference: Dict, timm_reference_model: nn.Module, method_class: type
) -> None:
    method, images = method_class(timm_reference_model), reference["inputs"]
    target = torch.tensor([3, 0, 9, 3])
    batched = method.attribute(images, target=target)
    alone = torch.cat(
        [method.attribute(images[i : i + 1], target=target[i : i + 1]) for i in range(4)]
    )
    torch.testing.assert_close(batched, alone, rtol=1e-6, atol=1e-9)
    chunked = method.attribute(images, target=target, max_examples_per_batch=3)
    torch.testing.assert_close(chunked, batched, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("method_class", [PartialLRP, FullLRP])
def test_no_grad_inference_mode_and_tuples_give_the_same_maps_and_the_model_is_left_as_found(
    reference: Dict, reference_model: nn.Module, method_class: type, state_of, same_state
) -> None:
    before = state_of(reference_model)
    images = reference["inputs"].clone()
    method = method_class(reference_model)
    expected = method.attribute(images, target=3)
    with torch.no_grad():
        under_no_grad = method.attribute(images, target=3)
    with torch.inference_mode():
        under_inference_mode = method.attribute(images.clone(), target=3)
    (from_tuple,) = method.attribute((images,), target=3)
    for maps in (under_no_grad, under_inference_mode, from_tuple):
        torch.testing.assert_close(maps, expected)
        assert not maps.requires_grad
    same_state(before, state_of(reference_model))
    assert torch.equal(images, reference["inputs"])


@pytest.mark.parametrize("method_class", [PartialLRP, FullLRP])
def test_bad_precision_is_refused_before_the_model_runs(
    reference: Dict, timm_reference_model: nn.Module, method_class: type
) -> None:
    with pytest.raises(ValueError, match="precision: expected one of"):
        method_class(timm_reference_model).attribute(reference["inputs"], precision="double")


def test_full_lrp_refuses_a_forward_func_that_reshapes_the_images(
    reference: Dict, timm_reference_model: nn.Module
) -> None:
    model = timm_reference_model
    method = FullLRP(model, lambda x: model(torch.nn.functional.interpolate(x, size=(96, 96))))
    with pytest.raises(ValueError, match="forward_func: FullLRP needs the images"):
        method.attribute(reference["inputs"][:, :, :48, :48])
