"""Transformer Attribution: the original authors' numbers in batch on every model
family, its options, the public conventions it shares with the attention methods,
and the model left as found."""

import copy
from typing import Callable, Dict

import pytest
import torch
import torch.nn.functional as F
from captum.attr import Attribution
from timm.models.vision_transformer import ResPostBlock
from tiny_models import tiny_hf_deit, tiny_timm, tiny_timm_distilled
from torch import Tensor, nn
from transformers import DeiTForImageClassificationWithTeacher

import captum_saco
from captum_saco.attr import TransformerAttribution
from captum_saco.attr._core.families import vit_parts
from captum_saco.attr._core.relevance import attention_relevance
from captum_saco.datasets import load_fashion_mnist_samples, load_fashion_mnist_vit
from tests.numerics import relative_error


@pytest.fixture
def images(reference: Dict) -> Tensor:
    return reference["inputs"].clone()


# --- the original numbers ----------------------------------------------------------------
KEYS = [("transformer_attribution", 0), ("transformer_attribution_start1", 1)]


def float32_tolerance(more_reference: Dict, target_kind: str, key: str) -> float:
    """Two float32 computations that are each at most ``e`` (relative) off float64
    differ by at most ``2 e``; ``e`` is the original's worst recorded float32 error
    on these images, with the same again as margin for this implementation's."""
    return 3 * float(more_reference["float32_vs_float64"][target_kind][key].max())


@pytest.mark.parametrize("target_kind", ["argmax", "fixed"])
@pytest.mark.parametrize("key, start_layer", KEYS)
def test_float32_model_gives_the_float64_computation_of_the_original(
    reference: Dict,
    more_reference: Dict,
    reference_model: nn.Module,
    target_kind: str,
    key: str,
    start_layer: int,
) -> None:
    maps = TransformerAttribution(reference_model).attribute(
        reference["inputs"],
        target=reference["targets"][target_kind],
        upsample=False,
        start_layer=start_layer,
    )
    assert maps.shape == (4, 1, 6, 6) and maps.dtype == torch.float32
    expected = more_reference["attributions"][target_kind][key + "_float64"]
    assert relative_error(maps.double(), expected) < 1e-4


@pytest.mark.parametrize("target_kind", ["argmax", "fixed"])
@pytest.mark.parametrize("key, start_layer", KEYS)
def test_float64_model_gives_the_float64_run_of_the_original(
    reference: Dict,
    more_reference: Dict,
    timm_reference_model: nn.Module,
    target_kind: str,
    key: str,
    start_layer: int,
) -> None:
    model = copy.deepcopy(timm_reference_model).double()
    maps = TransformerAttribution(model).attribute(
        reference["inputs"].double(),
        target=reference["targets"][target_kind],
        upsample=False,
        start_layer=start_layer,
        precision="model",
    )
    assert maps.dtype == torch.float64
    expected = more_reference["attributions"][target_kind][key + "_float64"]
    assert relative_error(maps, expected) < 1e-4


@pytest.mark.parametrize("target_kind", ["argmax", "fixed"])
@pytest.mark.parametrize("key, start_layer", KEYS)
def test_model_precision_in_float32_is_the_original_float32_run_within_its_rounding(
    reference: Dict,
    more_reference: Dict,
    reference_model: nn.Module,
    target_kind: str,
    key: str,
    start_layer: int,
) -> None:
    maps = TransformerAttribution(reference_model).attribute(
        reference["inputs"],
        target=reference["targets"][target_kind],
        upsample=False,
        start_layer=start_layer,
        precision="model",
    )
    expected = reference["token_attributions"][target_kind][key]
    assert relative_error(maps, expected) < float32_tolerance(more_reference, target_kind, key)


def test_an_images_map_in_a_batch_equals_its_map_alone_on_the_embedded_model() -> None:
    """In float32 the residual rule makes a map depend on its batch by 1.6e-4 of
    its maximum on these images; the default float64 pass removes that."""
    model = load_fashion_mnist_vit()
    images = load_fashion_mnist_samples(limit=24).images
    method = TransformerAttribution(model)
    batched = method.attribute(images, upsample=False).flatten(1)
    alone = torch.cat([method.attribute(image[None], upsample=False) for image in images])
    difference = (batched - alone.flatten(1)).abs().amax(dim=1)
    assert (difference < 1e-4 * alone.flatten(1).amax(dim=1)).all()


def test_precision_option_is_checked_and_the_model_left_as_found_also_on_failure(
    images: Tensor, reference_model: nn.Module, state_of, same_state
) -> None:
    before = state_of(reference_model)
    with pytest.raises(ValueError, match="precision: expected one of"):
        TransformerAttribution(reference_model).attribute(images, precision="float32")

    def failing(x: Tensor) -> Tensor:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        TransformerAttribution(reference_model, failing).attribute(images)
    same_state(before, state_of(reference_model))


def test_default_target_is_the_predicted_class(
    reference: Dict, more_reference: Dict, timm_reference_model: nn.Module
) -> None:
    method = TransformerAttribution(timm_reference_model)
    maps = method.attribute(reference["inputs"], upsample=False)
    expected = more_reference["attributions"]["argmax"]["transformer_attribution_float64"]
    assert relative_error(maps.double(), expected) < 1e-4


def test_maps_of_a_batch_equal_the_maps_image_by_image(
    images: Tensor, timm_reference_model: nn.Module
) -> None:
    method = TransformerAttribution(timm_reference_model)
    target = torch.tensor([3, 0, 9, 3])
    batched = method.attribute(images, target=target, upsample=False)
    single = torch.cat(
        [
            method.attribute(images[i : i + 1], target=target[i : i + 1], upsample=False)
            for i in range(4)
        ]
    )
    torch.testing.assert_close(batched, single, rtol=1e-4, atol=1e-7)


def test_hugging_face_output_objects_and_forward_func_returning_logits_are_accepted(
    reference: Dict, more_reference: Dict, reference_models: Dict
) -> None:
    model = reference_models["huggingface"]
    expected = more_reference["attributions"]["fixed"]["transformer_attribution_float64"]
    for method in (
        TransformerAttribution(model),
        TransformerAttribution(model, lambda x: model(pixel_values=x).logits),
    ):
        maps = method.attribute(reference["inputs"], target=3, upsample=False)
        assert relative_error(maps.double(), expected) < 1e-4


def test_model_runs_only_up_to_its_first_block_and_the_head_logits_are_explained(
    images: Tensor, timm_reference_model: nn.Module
) -> None:
    model = timm_reference_model
    # The relevance pass replays the blocks from their layers, never calling a block.
    calls = {"first block": 0, "last block": 0}
    handles = [
        model.blocks[0].register_forward_hook(lambda *_: calls.__setitem__("first block", 1)),
        model.blocks[-1].register_forward_hook(lambda *_: calls.__setitem__("last block", 1)),
    ]
    try:
        default = TransformerAttribution(model).attribute(images, upsample=False)
        probabilities = TransformerAttribution(model, lambda x: model(x).softmax(dim=1))
        through_softmax = probabilities.attribute(images, upsample=False)
    finally:
        for handle in handles:
            handle.remove()
    assert calls == {"first block": 0, "last block": 0}
    torch.testing.assert_close(through_softmax, default)


def test_forward_func_that_does_not_run_the_model_is_refused(
    images: Tensor, timm_reference_model: nn.Module
) -> None:
    method = TransformerAttribution(timm_reference_model, lambda x: x.flatten(1)[:, :10])
    with pytest.raises(ValueError, match="forward_func: running it did not run the model"):
        method.attribute(images)


# --- options --------------------------------------------------------------------------
def test_start_layer_at_the_last_block_uses_only_its_weighted_relevance(
    reference: Dict, timm_reference_model: nn.Module
) -> None:
    """With s = L the chain is Ā_L + I, whose class-token patch columns are Ā_L's."""
    with torch.no_grad():
        model = timm_reference_model
        tokens = model.norm_pre(model._pos_embed(model.patch_embed(reference["inputs"])))
    result = attention_relevance(vit_parts(model), tokens, 5)
    expected = (result.gradients[-1] * result.relevances[-1]).clamp(min=0).mean(1)[:, 0, 1:]
    maps = TransformerAttribution(model).attribute(
        reference["inputs"], target=5, upsample=False, start_layer=3
    )
    torch.testing.assert_close(maps.flatten(1), expected)


@pytest.mark.parametrize(
    "start_layer, error", [(4, ValueError), (-1, ValueError), (1.0, TypeError), (True, TypeError)]
)
def test_bad_start_layer_is_refused_and_the_model_left_as_found(
    images: Tensor, reference_model: nn.Module, start_layer, error, state_of, same_state
) -> None:
    before = state_of(reference_model)
    with pytest.raises(error, match="start_layer"):
        TransformerAttribution(reference_model).attribute(images, start_layer=start_layer)
    same_state(before, state_of(reference_model))


def test_unknown_options_are_refused(images: Tensor, timm_reference_model: nn.Module) -> None:
    with pytest.raises(TypeError, match="unexpected keyword argument 'head_fusion'"):
        TransformerAttribution(timm_reference_model).attribute(images, head_fusion="max")


# --- conventions shared with the attention methods -------------------------------------------
def test_is_a_captum_attribution_exported_at_the_package_root(
    timm_reference_model: nn.Module,
) -> None:
    method = captum_saco.TransformerAttribution(timm_reference_model)
    assert isinstance(method, Attribution)
    assert method.forward_func is timm_reference_model


def test_model_is_left_as_found_after_a_call(
    images: Tensor, reference_model: nn.Module, state_of, same_state
) -> None:
    before = state_of(reference_model)
    TransformerAttribution(reference_model).attribute(images)
    same_state(before, state_of(reference_model))


def test_upsampled_map_is_the_bilinear_patch_grid_repeated_over_channels(
    images: Tensor, timm_reference_model: nn.Module
) -> None:
    method = TransformerAttribution(timm_reference_model)
    grid = method.attribute(images, upsample=False)
    maps = method.attribute(images)
    assert maps.shape == images.shape
    expected = F.interpolate(grid, size=(96, 96), mode="bilinear", align_corners=False)
    torch.testing.assert_close(maps, expected.repeat(1, 3, 1, 1))


def test_tuple_in_gives_tuple_out(images: Tensor, timm_reference_model: nn.Module) -> None:
    method = TransformerAttribution(timm_reference_model)
    (maps,) = method.attribute((images,), target=2)
    torch.testing.assert_close(maps, method.attribute(images, target=2))


def test_no_grad_inference_mode_and_frozen_weights_give_the_same_maps(
    images: Tensor, timm_reference_model: nn.Module
) -> None:
    method = TransformerAttribution(timm_reference_model)
    expected = method.attribute(images, target=3, upsample=False)
    with torch.no_grad():
        under_no_grad = method.attribute(images, target=3, upsample=False)
    with torch.inference_mode():
        under_inference_mode = method.attribute(images.clone(), target=3, upsample=False)
    params = list(timm_reference_model.parameters())
    try:
        for p in params:
            p.requires_grad_(False)
        frozen = method.attribute(images, target=3, upsample=False)
    finally:
        for p in params:
            p.requires_grad_(True)
    for maps in (under_no_grad, under_inference_mode, frozen):
        torch.testing.assert_close(maps, expected)
        assert not maps.requires_grad
    assert not images.requires_grad


def test_a_non_finite_example_gives_a_non_finite_map_and_one_warning(
    images: Tensor, timm_reference_model: nn.Module
) -> None:
    images[1, 0, 0, 0] = float("nan")
    with pytest.warns(UserWarning, match=r"examples \[1\] are not finite") as record:
        maps = TransformerAttribution(timm_reference_model).attribute(
            images, target=3, upsample=False
        )
    assert len(record) == 1
    assert not torch.isfinite(maps[1]).all()
    clean = TransformerAttribution(timm_reference_model).attribute(
        images[[0, 2, 3]], target=3, upsample=False
    )
    torch.testing.assert_close(maps[[0, 2, 3]], clean, rtol=1e-4, atol=1e-7)


# --- other models ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "build",
    [
        tiny_timm_distilled,
        lambda: tiny_hf_deit(DeiTForImageClassificationWithTeacher),
        lambda: tiny_timm(reg_tokens=4, init_values=0.1),
    ],
    ids=["timm_distilled", "hf_deit_with_teacher", "timm_registers_layer_scale"],
)
def test_models_with_several_prefix_tokens_give_patch_grid_maps(
    build: Callable[[], nn.Module],
) -> None:
    images = torch.rand(3, 3, 32, 32)
    maps = TransformerAttribution(build()).attribute(images, upsample=False)
    assert maps.shape == (3, 1, 4, 4)
    assert torch.isfinite(maps).all() and (maps >= 0).all()


def test_blocks_the_relevance_pass_cannot_replay_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match="ResPostBlock"):
        TransformerAttribution(tiny_timm(block_fn=ResPostBlock)).attribute(
            torch.rand(1, 3, 32, 32)
        )
