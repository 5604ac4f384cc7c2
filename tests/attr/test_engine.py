"""The shared pipeline of the attention methods: forms in and out, targets,
gradient modes, and the model left exactly as found."""

from typing import Dict

import pytest
import torch
import torch.nn.functional as F
from captum.attr import Attribution
from torch import Tensor, nn

from captum_saco.attr import (
    AttentionRollout,
    GradientWeightedAttention,
    RawAttention,
    TransformerAttribution,
)

METHODS = [RawAttention, AttentionRollout, GradientWeightedAttention]


@pytest.fixture
def images(reference: Dict) -> Tensor:
    return reference["inputs"].clone()


@pytest.mark.parametrize("cls", METHODS)
def test_is_a_captum_attribution(cls: type, timm_reference_model: nn.Module) -> None:
    method = cls(timm_reference_model)
    assert isinstance(method, Attribution)
    assert method.forward_func is timm_reference_model


# --- model left as found ---------------------------------------------------------------
@pytest.mark.parametrize("cls", METHODS)
def test_model_is_left_as_found_after_a_call(
    cls: type, reference_model: nn.Module, images: Tensor, state_of, same_state
) -> None:
    before = state_of(reference_model)
    cls(reference_model).attribute(images)
    same_state(before, state_of(reference_model))


class _Failure(RuntimeError):
    pass


@pytest.mark.parametrize("cls", METHODS)
def test_model_is_left_as_found_when_forward_func_raises_after_running_the_model(
    cls: type, reference_model: nn.Module, images: Tensor, state_of, same_state
) -> None:
    def failing_forward(x: Tensor) -> Tensor:
        reference_model(x)
        raise _Failure("boom")

    before = state_of(reference_model)
    with pytest.raises(_Failure):
        cls(reference_model, failing_forward).attribute(images)
    same_state(before, state_of(reference_model))


def test_model_is_left_as_found_when_the_model_itself_raises(
    reference_model: nn.Module, state_of, same_state
) -> None:
    before = state_of(reference_model)
    with pytest.raises(Exception):
        GradientWeightedAttention(reference_model).attribute(torch.rand(1, 3, 50, 50))
    same_state(before, state_of(reference_model))


def test_model_keeps_its_settings_when_they_are_not_the_defaults(
    timm_reference_model: nn.Module, images: Tensor
) -> None:
    attentions = [block.attn for block in timm_reference_model.blocks]
    try:
        for attn in attentions:
            attn.fused_attn = True
        attentions[1].fused_attn = False
        RawAttention(timm_reference_model).attribute(images)
        assert [attn.fused_attn for attn in attentions] == [True, False, True, True]
    finally:
        for attn in attentions:
            attn.fused_attn = True


@pytest.mark.parametrize("cls", [GradientWeightedAttention, RawAttention])
def test_inputs_are_not_modified_nor_made_to_require_grad(
    cls: type, timm_reference_model: nn.Module, images: Tensor
) -> None:
    original = images.clone()
    cls(timm_reference_model).attribute(images)
    assert torch.equal(images, original)
    assert not images.requires_grad and images.grad is None
    assert all(p.grad is None for p in timm_reference_model.parameters())


# --- forms in and out ------------------------------------------------------------------
@pytest.mark.parametrize("cls", METHODS)
def test_upsampled_map_has_the_input_shape_and_is_the_bilinear_patch_grid_per_channel(
    cls: type, timm_reference_model: nn.Module, images: Tensor
) -> None:
    method = cls(timm_reference_model)
    grid = method.attribute(images, upsample=False)
    full = method.attribute(images)
    assert grid.shape == (4, 1, 6, 6)
    assert full.shape == images.shape
    expected = F.interpolate(grid, size=(96, 96), mode="bilinear", align_corners=False)
    for channel in range(3):
        torch.testing.assert_close(full[:, channel : channel + 1], expected)


def test_patch_grid_is_row_major_in_the_model_patch_order(
    reference: Dict, timm_reference_model: nn.Module
) -> None:
    grid = RawAttention(timm_reference_model).attribute(reference["inputs"], upsample=False)
    row = reference["token_attributions"]["argmax"]["raw_attention"]
    torch.testing.assert_close(grid[:, 0, 1, :], row[:, 6:12])


@pytest.mark.parametrize("upsample", [True, False])
def test_tuple_in_gives_tuple_out_tensor_in_gives_tensor_out(
    timm_reference_model: nn.Module, images: Tensor, upsample: bool
) -> None:
    method = GradientWeightedAttention(timm_reference_model)
    as_tensor = method.attribute(images, upsample=upsample)
    as_tuple = method.attribute((images,), upsample=upsample)
    assert isinstance(as_tensor, Tensor)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == 1
    torch.testing.assert_close(as_tuple[0], as_tensor)


def test_works_with_captum_sensitivity_max(timm_reference_model: nn.Module, images: Tensor) -> None:
    from captum.metrics import sensitivity_max

    method = AttentionRollout(timm_reference_model)
    sensitivity = sensitivity_max(method.attribute, images[:2], n_perturb_samples=2)
    assert sensitivity.shape == (2,)
    assert torch.isfinite(sensitivity).all()


def test_several_input_tensors_are_refused(timm_reference_model: nn.Module, images: Tensor) -> None:
    with pytest.raises(ValueError, match="inputs: expected one image tensor"):
        RawAttention(timm_reference_model).attribute((images, images))


def test_inputs_that_are_not_images_are_refused(timm_reference_model: nn.Module) -> None:
    with pytest.raises(ValueError, match=r"inputs: expected images of shape \(N, C, H, W\)"):
        RawAttention(timm_reference_model).attribute(torch.rand(3, 96, 96))
    with pytest.raises(TypeError, match="inputs: expected a Tensor"):
        RawAttention(timm_reference_model).attribute([torch.rand(1, 3, 96, 96)])


# --- targets and forward functions -------------------------------------------------------
def test_target_accepts_captum_forms(reference: Dict, timm_reference_model: nn.Module) -> None:
    method = GradientWeightedAttention(timm_reference_model)
    images = reference["inputs"]
    fixed = reference["token_attributions"]["fixed"]["generic_attention"]
    for target in (3, [3, 3, 3, 3], torch.tensor(3), torch.full((4,), 3)):
        maps = method.attribute(images, target=target, upsample=False)
        torch.testing.assert_close(maps.flatten(1), fixed, rtol=1e-4, atol=1e-6)


def test_out_of_range_target_is_refused(timm_reference_model: nn.Module, images: Tensor) -> None:
    with pytest.raises(ValueError, match="target"):
        GradientWeightedAttention(timm_reference_model).attribute(images, target=10)


def test_forward_func_and_additional_forward_args_define_what_is_explained(
    timm_reference_model: nn.Module, images: Tensor
) -> None:
    def scaled(x: Tensor, factor: float) -> Tensor:
        return timm_reference_model(x * factor)

    through_wrapper = GradientWeightedAttention(timm_reference_model, scaled).attribute(
        images, target=2, additional_forward_args=0.5
    )
    direct = GradientWeightedAttention(timm_reference_model).attribute(images * 0.5, target=2)
    torch.testing.assert_close(through_wrapper, direct)


def test_forward_func_that_does_not_run_the_model_is_refused(
    timm_reference_model: nn.Module, images: Tensor
) -> None:
    with pytest.raises(ValueError, match="forward_func must call that model"):
        RawAttention(timm_reference_model, lambda x: x.mean((2, 3))).attribute(images)


def test_forward_func_output_without_scores_is_refused(
    timm_reference_model: nn.Module, images: Tensor
) -> None:
    method = RawAttention(timm_reference_model, lambda x: {"out": timm_reference_model(x)})
    with pytest.raises(TypeError, match="forward_func: expected the model to return a Tensor"):
        method.attribute(images)


def test_unknown_options_are_refused_by_python_before_running_the_model(
    timm_reference_model: nn.Module, images: Tensor
) -> None:
    calls = []

    def forward(x: Tensor) -> Tensor:
        calls.append(1)
        return timm_reference_model(x)

    with pytest.raises(TypeError, match="unexpected keyword argument 'start_layer'"):
        GradientWeightedAttention(timm_reference_model, forward).attribute(images, start_layer=1)
    with pytest.raises(TypeError, match="unexpected keyword argument 'head_fusion'"):
        RawAttention(timm_reference_model, forward).attribute(images, head_fusion="max")
    assert calls == []


# --- gradient modes ------------------------------------------------------------------
@pytest.mark.parametrize("cls", METHODS)
def test_works_under_no_grad_with_the_same_result(
    cls: type, reference_model: nn.Module, images: Tensor
) -> None:
    outside = cls(reference_model).attribute(images, upsample=False)
    with torch.no_grad():
        inside = cls(reference_model).attribute(images, upsample=False)
    torch.testing.assert_close(inside, outside)
    assert not inside.requires_grad


def test_gradient_method_works_on_a_frozen_model(
    reference: Dict, timm_reference_model: nn.Module
) -> None:
    params = list(timm_reference_model.parameters())
    try:
        for p in params:
            p.requires_grad_(False)
        maps = GradientWeightedAttention(timm_reference_model).attribute(
            reference["inputs"], target=reference["targets"]["fixed"], upsample=False
        )
    finally:
        for p in params:
            p.requires_grad_(True)
    expected = reference["token_attributions"]["fixed"]["generic_attention"]
    torch.testing.assert_close(maps.flatten(1), expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("cls", [RawAttention, AttentionRollout])
def test_attention_only_methods_run_no_backward_pass_and_build_no_graph(
    cls: type, reference_model: nn.Module, images: Tensor, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_backward(*args, **kwargs):
        raise AssertionError("a backward pass was run")

    monkeypatch.setattr(torch.autograd, "grad", no_backward)
    monkeypatch.setattr(torch.autograd, "backward", no_backward)
    monkeypatch.setattr(Tensor, "backward", no_backward)
    maps = cls(reference_model).attribute(images)
    assert maps.grad_fn is None and not maps.requires_grad


def test_gradient_method_runs_one_backward_pass_for_the_whole_batch(
    timm_reference_model: nn.Module, images: Tensor, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    grad = torch.autograd.grad

    def counting_grad(*args, **kwargs):
        calls.append(1)
        return grad(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", counting_grad)
    GradientWeightedAttention(timm_reference_model).attribute(images)
    assert calls == [1]


def test_gradient_method_works_inside_inference_mode(
    reference: Dict, timm_reference_model: nn.Module
) -> None:
    with torch.inference_mode():
        images = reference["inputs"].clone()
        maps = GradientWeightedAttention(timm_reference_model).attribute(
            images, target=reference["targets"]["fixed"], upsample=False
        )
    expected = reference["token_attributions"]["fixed"]["generic_attention"]
    torch.testing.assert_close(maps.flatten(1), expected, rtol=1e-4, atol=1e-6)


def test_a_non_finite_example_gives_a_non_finite_map_and_one_warning(
    timm_reference_model: nn.Module, images: Tensor
) -> None:
    images = images.clone()
    images[1, 0, 0, 0] = float("nan")
    with pytest.warns(UserWarning, match=r"examples \[1\] are not finite") as record:
        maps = AttentionRollout(timm_reference_model).attribute(images, upsample=False)
    assert len(record) == 1
    assert torch.isfinite(maps[[0, 2, 3]]).all()
    assert not torch.isfinite(maps[1]).all()


# --- chunks ---------------------------------------------------------------------------
@pytest.mark.parametrize("cls", METHODS + [TransformerAttribution])
@pytest.mark.parametrize("target", [None, 2, [1, 2, 3, 4], torch.tensor([4, 3, 2, 1])])
def test_chunked_examples_give_the_same_maps_as_one_batch(
    cls: type, timm_reference_model: nn.Module, images: Tensor, target
) -> None:
    def scaled(x: Tensor, factors: Tensor) -> Tensor:
        return timm_reference_model(x * factors[:, None, None, None])

    factors = torch.tensor([0.5, 1.0, 1.5, 2.0])
    method = cls(timm_reference_model, scaled)
    whole = method.attribute(images, target, factors, upsample=False)
    chunked = method.attribute(images, target, factors, upsample=False, max_examples_per_batch=3)
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-7)


def test_chunks_run_the_model_on_at_most_max_examples_per_batch_images(
    timm_reference_model: nn.Module, images: Tensor
) -> None:
    sizes = []

    def forward(x: Tensor) -> Tensor:
        sizes.append(x.shape[0])
        return timm_reference_model(x)

    GradientWeightedAttention(timm_reference_model, forward).attribute(
        images, max_examples_per_batch=3
    )
    assert sizes == [3, 1]


@pytest.mark.parametrize(
    "options, error, message",
    [
        ({"max_examples_per_batch": 0}, ValueError, "max_examples_per_batch: expected a positive"),
        ({"max_examples_per_batch": 2.0}, TypeError, "max_examples_per_batch: expected an int"),
        ({"max_examples_per_batch": True}, TypeError, "max_examples_per_batch: expected an int"),
        ({"upsample": "no"}, TypeError, "upsample: expected a bool"),
        ({"upsample": 0}, TypeError, "upsample: expected a bool"),
    ],
)
def test_bad_pipeline_options_are_refused_before_running_the_model(
    timm_reference_model: nn.Module, images: Tensor, options: Dict, error: type, message: str
) -> None:
    calls = []

    def forward(x: Tensor) -> Tensor:
        calls.append(1)
        return timm_reference_model(x)

    with pytest.raises(error, match=message):
        RawAttention(timm_reference_model, forward).attribute(images, **options)
    assert calls == []


def test_per_example_arguments_must_have_one_row_per_example_when_chunked(
    timm_reference_model: nn.Module, images: Tensor
) -> None:
    def scaled(x: Tensor, factors: Tensor) -> Tensor:
        return timm_reference_model(x * factors[:, None, None, None])

    method = RawAttention(timm_reference_model, scaled)
    with pytest.raises(ValueError, match=r"additional_forward_args: .* one row per example \(4\)"):
        method.attribute(images, additional_forward_args=torch.ones(3), max_examples_per_batch=2)
