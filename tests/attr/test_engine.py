"""The shared pipeline of the attention methods: forms in and out, targets, chunks,
gradient modes, and the model left exactly as found. Every test runs on the tiny
models of ``tiny_models.py``; the reference numbers are checked in
``test_model_families.py``."""

import copy
import dataclasses
import inspect
import threading
from typing import Dict

import pytest
import torch
import torch.nn.functional as F
from captum.attr import Attribution
from tiny_models import TINY_FAMILIES, tiny_timm
from torch import Tensor, nn

from captum_saco.attr import (
    AttCAT,
    AttentionAttribution,
    AttentionGradCAM,
    AttentionRollout,
    AttentionTrace,
    AttnLRP,
    ConservativeLRP,
    FullLRP,
    GradientWeightedAttention,
    Needs,
    PartialLRP,
    RawAttention,
    TransformerAttribution,
)

METHODS = [RawAttention, AttentionRollout, GradientWeightedAttention, AttentionGradCAM, AttCAT]
GRADIENT_METHODS = [cls for cls in METHODS if cls.needs >= Needs.GRADIENTS]


@pytest.fixture(params=sorted(TINY_FAMILIES))
def model(request: pytest.FixtureRequest) -> nn.Module:
    """A tiny ViT of each supported family in turn."""
    return TINY_FAMILIES[request.param]()


@pytest.fixture
def vit() -> nn.Module:
    return tiny_timm()


@pytest.fixture
def images() -> Tensor:
    torch.manual_seed(1)
    return torch.rand(4, 3, 32, 32)


@pytest.mark.parametrize("cls", METHODS)
def test_is_a_captum_attribution_explaining_the_model_by_default(cls: type, vit: nn.Module) -> None:
    method = cls(vit)
    assert isinstance(method, Attribution)
    assert method.forward_func is vit


# --- model left as found ---------------------------------------------------------------
@pytest.mark.parametrize("cls", METHODS)
def test_model_is_left_as_found_after_a_call(
    cls: type, model: nn.Module, images: Tensor, state_of, same_state
) -> None:
    before = state_of(model)
    cls(model).attribute(images)
    same_state(before, state_of(model))


class _Failure(RuntimeError):
    pass


@pytest.mark.parametrize("cls", METHODS)
def test_model_is_left_as_found_when_forward_func_raises_after_running_the_model(
    cls: type, model: nn.Module, images: Tensor, state_of, same_state
) -> None:
    def failing_forward(x: Tensor) -> Tensor:
        model(x)
        raise _Failure("boom")

    before = state_of(model)
    with pytest.raises(_Failure):
        cls(model, failing_forward).attribute(images)
    same_state(before, state_of(model))


@pytest.mark.parametrize("cls", METHODS)
def test_model_is_left_as_found_when_the_model_itself_raises(
    cls: type, model: nn.Module, state_of, same_state
) -> None:
    before = state_of(model)
    with pytest.raises(Exception):
        cls(model).attribute(torch.rand(1, 3, 50, 50))
    same_state(before, state_of(model))


def test_model_is_left_as_found_when_the_rule_raises(
    model: nn.Module, images: Tensor, state_of, same_state
) -> None:
    class FailingRule(AttentionAttribution):
        needs = Needs.GRADIENTS

        def _token_relevance(self, trace: AttentionTrace) -> Tensor:
            raise _Failure("rule")

    before = state_of(model)
    with pytest.raises(_Failure):
        FailingRule(model).attribute(images)
    same_state(before, state_of(model))


def test_model_keeps_its_settings_when_they_are_not_the_defaults(images: Tensor) -> None:
    vit = tiny_timm(depth=3)
    attentions = [block.attn for block in vit.blocks]
    attentions[1].fused_attn = not attentions[1].fused_attn
    settings = [attn.fused_attn for attn in attentions]
    RawAttention(vit).attribute(images)
    assert [attn.fused_attn for attn in attentions] == settings


@pytest.mark.parametrize("cls", METHODS)
def test_inputs_are_not_modified_nor_made_to_require_grad(
    cls: type, vit: nn.Module, images: Tensor
) -> None:
    original = images.clone()
    cls(vit).attribute(images)
    assert torch.equal(images, original)
    assert not images.requires_grad and images.grad is None
    assert all(p.grad is None for p in vit.parameters())


# --- forms in and out ------------------------------------------------------------------
@pytest.mark.parametrize("cls", METHODS)
def test_upsampled_map_has_the_input_shape_and_is_the_bilinear_patch_grid_per_channel(
    cls: type, model: nn.Module, images: Tensor
) -> None:
    method = cls(model)
    grid = method.attribute(images, upsample=False)
    full = method.attribute(images)
    assert grid.shape == (4, 1, 4, 4)
    assert full.shape == images.shape
    expected = F.interpolate(grid, size=(32, 32), mode="bilinear", align_corners=False)
    for channel in range(3):
        torch.testing.assert_close(full[:, channel : channel + 1], expected)


@pytest.mark.parametrize("cls", METHODS)
@pytest.mark.parametrize("upsample", [True, False])
def test_tuple_in_gives_tuple_out_tensor_in_gives_tensor_out(
    cls: type, vit: nn.Module, images: Tensor, upsample: bool
) -> None:
    method = cls(vit)
    as_tensor = method.attribute(images, upsample=upsample)
    as_tuple = method.attribute((images,), upsample=upsample)
    assert isinstance(as_tensor, Tensor)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == 1
    torch.testing.assert_close(as_tuple[0], as_tensor)


def test_works_with_captum_sensitivity_max(vit: nn.Module, images: Tensor) -> None:
    from captum.metrics import sensitivity_max

    method = AttentionRollout(vit)
    sensitivity = sensitivity_max(method.attribute, images[:2], n_perturb_samples=2)
    assert sensitivity.shape == (2,)
    assert torch.isfinite(sensitivity).all()


def test_several_input_tensors_are_refused(vit: nn.Module, images: Tensor) -> None:
    with pytest.raises(ValueError, match="inputs: expected one image tensor"):
        RawAttention(vit).attribute((images, images))


@pytest.mark.parametrize("bad", [torch.rand(3, 32, 32), torch.rand(0, 3, 32, 32)])
def test_inputs_that_are_not_a_batch_of_images_are_refused(vit: nn.Module, bad: Tensor) -> None:
    with pytest.raises(ValueError, match=r"inputs: expected images of shape \(N, C, H, W\)"):
        RawAttention(vit).attribute(bad)


def test_inputs_that_are_not_tensors_are_refused(vit: nn.Module) -> None:
    with pytest.raises(TypeError, match="inputs: expected a Tensor"):
        RawAttention(vit).attribute([torch.rand(1, 3, 32, 32)])


# --- targets and forward functions -------------------------------------------------------
@pytest.mark.parametrize("cls", GRADIENT_METHODS)
def test_every_captum_target_form_gives_the_same_maps(
    cls: type, model: nn.Module, images: Tensor
) -> None:
    method = cls(model)
    expected = method.attribute(images, target=3, upsample=False)
    for target in ([3, 3, 3, 3], torch.tensor(3), torch.full((4,), 3)):
        maps = method.attribute(images, target=target, upsample=False)
        torch.testing.assert_close(maps, expected)


def test_out_of_range_target_is_refused(vit: nn.Module, images: Tensor) -> None:
    with pytest.raises(ValueError, match="target"):
        GradientWeightedAttention(vit).attribute(images, target=10)


def test_forward_func_and_additional_forward_args_define_what_is_explained(
    model: nn.Module, images: Tensor, scores_of
) -> None:
    def scaled(x: Tensor, factor: float) -> Tensor:
        return scores_of(model, x * factor)

    through_wrapper = GradientWeightedAttention(model, scaled).attribute(
        images, target=2, additional_forward_args=0.5
    )
    direct = GradientWeightedAttention(model).attribute(images * 0.5, target=2)
    torch.testing.assert_close(through_wrapper, direct)


def test_forward_func_that_does_not_run_the_model_is_refused(
    vit: nn.Module, images: Tensor
) -> None:
    with pytest.raises(ValueError, match="forward_func must call that model"):
        RawAttention(vit, lambda x: x.mean((2, 3))).attribute(images)


@pytest.mark.parametrize("cls", METHODS)
def test_forward_func_with_fewer_output_rows_than_examples_is_refused(
    cls: type, vit: nn.Module, images: Tensor
) -> None:
    with pytest.raises(ValueError, match=r"forward_func: expected an output with one row per"):
        cls(vit, lambda x: vit(x)[:2]).attribute(images)


@pytest.mark.parametrize("cls", GRADIENT_METHODS + [AttnLRP, ConservativeLRP])
def test_forward_func_without_an_autograd_graph_is_refused_by_name(
    cls: type, vit: nn.Module, images: Tensor
) -> None:
    def predict(x: Tensor) -> Tensor:  # a typical inference wrapper
        with torch.no_grad():
            return vit(x)

    with pytest.raises(ValueError, match="forward_func: this method differentiates the model"):
        cls(vit, predict).attribute(images)


@pytest.mark.parametrize("cls", METHODS)
def test_forward_func_that_runs_the_model_twice_is_refused(
    cls: type, vit: nn.Module, images: Tensor
) -> None:
    def flip_averaged(x: Tensor) -> Tensor:  # test-time augmentation
        return (vit(x) + vit(x.flip(-1))) / 2

    with pytest.raises(ValueError, match="forward_func: it ran the model 2 times in one call"):
        cls(vit, flip_averaged).attribute(images)


def test_forward_func_that_is_not_callable_is_refused(vit: nn.Module) -> None:
    with pytest.raises(TypeError, match="forward_func: expected a callable"):
        RawAttention(vit, forward_func=3)


def test_forward_func_output_without_scores_is_refused(vit: nn.Module, images: Tensor) -> None:
    method = RawAttention(vit, lambda x: {"out": vit(x)})
    with pytest.raises(TypeError, match="forward_func: expected the model's output, a Tensor"):
        method.attribute(images)


def test_unknown_options_are_refused_by_python_before_running_the_model(
    vit: nn.Module, images: Tensor
) -> None:
    calls = []

    def forward(x: Tensor) -> Tensor:
        calls.append(1)
        return vit(x)

    with pytest.raises(TypeError, match="unexpected keyword argument 'start_layer'"):
        GradientWeightedAttention(vit, forward).attribute(images, start_layer=1)
    with pytest.raises(TypeError, match="unexpected keyword argument 'head_fusion'"):
        RawAttention(vit, forward).attribute(images, head_fusion="max")
    assert calls == []


@pytest.mark.parametrize("cls", METHODS + [TransformerAttribution])
def test_every_option_is_a_documented_keyword_of_attribute(cls: type) -> None:
    parameters = inspect.signature(cls.attribute).parameters
    keywords = [name for name, p in parameters.items() if p.kind is p.KEYWORD_ONLY]
    assert {"upsample", "max_examples_per_batch"} <= set(keywords)
    for name in keywords:
        assert f"{name} (" in cls.attribute.__doc__


# --- gradient modes ------------------------------------------------------------------
@pytest.mark.parametrize("cls", METHODS)
def test_works_under_no_grad_and_inference_mode_with_the_same_result(
    cls: type, model: nn.Module, images: Tensor
) -> None:
    outside = cls(model).attribute(images, upsample=False)
    with torch.no_grad():
        under_no_grad = cls(model).attribute(images, upsample=False)
    with torch.inference_mode():
        under_inference_mode = cls(model).attribute(images.clone(), upsample=False)
    for maps in (under_no_grad, under_inference_mode):
        torch.testing.assert_close(maps, outside)
        assert not maps.requires_grad


@pytest.mark.parametrize("cls", GRADIENT_METHODS)
def test_gradient_method_works_on_a_frozen_model_with_the_same_result(
    cls: type, vit: nn.Module, images: Tensor
) -> None:
    expected = cls(vit).attribute(images, target=1)
    for p in vit.parameters():
        p.requires_grad_(False)
    torch.testing.assert_close(cls(vit).attribute(images, target=1), expected)


@pytest.mark.parametrize("cls", [cls for cls in METHODS if cls.needs == Needs.ATTENTION])
def test_attention_only_methods_run_no_backward_pass_and_build_no_graph(
    cls: type, model: nn.Module, images: Tensor, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_backward(*args, **kwargs):
        raise AssertionError("a backward pass was run")

    monkeypatch.setattr(torch.autograd, "grad", no_backward)
    monkeypatch.setattr(torch.autograd, "backward", no_backward)
    monkeypatch.setattr(Tensor, "backward", no_backward)
    maps = cls(model).attribute(images)
    assert maps.grad_fn is None and not maps.requires_grad


@pytest.mark.parametrize("cls", GRADIENT_METHODS)
def test_gradient_method_runs_one_backward_pass_per_chunk(
    cls: type, vit: nn.Module, images: Tensor, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    grad = torch.autograd.grad

    def counting_grad(*args, **kwargs):
        calls.append(1)
        return grad(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", counting_grad)
    cls(vit).attribute(images)
    assert len(calls) == 1
    cls(vit).attribute(images, max_examples_per_batch=3)
    assert len(calls) == 3


@pytest.mark.parametrize("cls", METHODS)
def test_a_non_finite_example_gives_a_non_finite_map_and_one_warning(
    cls: type, vit: nn.Module, images: Tensor
) -> None:
    images = images.clone()
    images[1, 0, 0, 0] = float("nan")
    with pytest.warns(UserWarning, match=r"examples \[1\] are not finite") as record:
        maps = cls(vit).attribute(images, upsample=False, max_examples_per_batch=2)
    assert len(record) == 1
    assert torch.isfinite(maps[[0, 2, 3]]).all()
    assert not torch.isfinite(maps[1]).all()


# --- chunks ---------------------------------------------------------------------------
@pytest.mark.parametrize("cls", METHODS + [TransformerAttribution])
@pytest.mark.parametrize("target", [None, 2, [1, 2, 3, 4], torch.tensor([4, 3, 2, 1])])
def test_chunked_examples_give_the_same_maps_as_one_batch(
    cls: type, vit: nn.Module, images: Tensor, target
) -> None:
    def scaled(x: Tensor, factors: Tensor) -> Tensor:
        return vit(x * factors[:, None, None, None])

    factors = torch.tensor([0.5, 1.0, 1.5, 2.0])
    method = cls(vit, scaled)
    whole = method.attribute(images, target, factors, upsample=False)
    chunked = method.attribute(images, target, factors, upsample=False, max_examples_per_batch=3)
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-7)


def test_chunks_run_the_model_on_at_most_max_examples_per_batch_images(
    vit: nn.Module, images: Tensor
) -> None:
    sizes = []

    def forward(x: Tensor) -> Tensor:
        sizes.append(x.shape[0])
        return vit(x)

    GradientWeightedAttention(vit, forward).attribute(images, max_examples_per_batch=3)
    assert sizes == [3, 1]


@pytest.mark.parametrize(
    "options, error, message",
    [
        ({"max_examples_per_batch": 0}, ValueError, "max_examples_per_batch: expected a posit"),
        ({"max_examples_per_batch": 2.0}, TypeError, "max_examples_per_batch: expected a posit"),
        ({"max_examples_per_batch": True}, TypeError, "max_examples_per_batch: expected a posit"),
        ({"upsample": "no"}, TypeError, "upsample: expected True or False, got 'no'"),
        ({"upsample": 0}, TypeError, "upsample: expected True or False, got 0"),
    ],
)
def test_bad_pipeline_options_are_refused_before_running_the_model(
    vit: nn.Module, images: Tensor, options: Dict, error: type, message: str
) -> None:
    calls = []

    def forward(x: Tensor) -> Tensor:
        calls.append(1)
        return vit(x)

    with pytest.raises(error, match=message):
        RawAttention(vit, forward).attribute(images, **options)
    assert calls == []


@pytest.mark.parametrize("target", [[0, 1, 2], [0, 1, 2, 3, 4], torch.tensor([0, 1, 2])])
@pytest.mark.parametrize("chunk", [None, 2])
def test_a_target_without_one_entry_per_example_is_refused_also_when_chunked(
    vit: nn.Module, images: Tensor, target, chunk
) -> None:
    # chunks of 2 would cut [0, 1, 2] into [0, 1] and a broadcast [2]
    with pytest.raises(ValueError, match=r"target: .*one entry per example \(4\)"):
        RawAttention(vit).attribute(images, target=target, max_examples_per_batch=chunk)


def test_per_example_arguments_must_have_one_row_per_example_when_chunked(
    vit: nn.Module, images: Tensor
) -> None:
    def scaled(x: Tensor, factors: Tensor) -> Tensor:
        return vit(x * factors[:, None, None, None])

    method = RawAttention(vit, scaled)
    with pytest.raises(ValueError, match=r"additional_forward_args: .* one row per example \(4\)"):
        method.attribute(images, additional_forward_args=torch.ones(3), max_examples_per_batch=2)


# --- concurrent calls ------------------------------------------------------------------
@pytest.mark.parametrize("cls", [RawAttention, GradientWeightedAttention])
def test_concurrent_calls_on_one_model_each_get_their_own_maps_and_restore_the_model(
    cls: type, model: nn.Module, scores_of, state_of, same_state
) -> None:
    torch.manual_seed(2)
    batches = [torch.rand(2, 3, 32, 32), torch.rand(3, 3, 32, 32)]
    expected = [cls(model).attribute(batch, upsample=False) for batch in batches]
    before = state_of(model)
    barrier = threading.Barrier(2)

    def forward(x: Tensor) -> Tensor:
        # Both calls reach this point together unless the first holds the model: then
        # the wait times out, the barrier breaks and the second call does not wait.
        try:
            barrier.wait(timeout=2)
        except threading.BrokenBarrierError:
            pass
        return scores_of(model, x)

    results: Dict[int, Tensor] = {}

    def run(index: int) -> None:
        results[index] = cls(model, forward).attribute(batches[index], upsample=False)

    threads = [threading.Thread(target=run, args=(index,)) for index in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for index in range(2):
        torch.testing.assert_close(results[index], expected[index])
    same_state(before, state_of(model))


def test_a_plain_forward_pass_in_another_thread_is_not_recorded(
    vit: nn.Module, images: Tensor
) -> None:
    expected = RawAttention(vit).attribute(images, upsample=False)
    other = torch.rand(1, 3, 32, 32)

    def forward(x: Tensor) -> Tensor:
        # another thread runs the model while this call captures it
        thread = threading.Thread(target=vit, args=(other,))
        thread.start()
        thread.join()
        return vit(x)

    torch.testing.assert_close(
        RawAttention(vit, forward).attribute(images, upsample=False), expected
    )


@pytest.mark.parametrize("cls", [TransformerAttribution, FullLRP, AttnLRP])
def test_the_hooks_of_a_call_leave_another_threads_forward_pass_alone(
    cls: type, vit: nn.Module, images: Tensor
) -> None:
    # TransformerAttribution and FullLRP recompute the patch embedding in float64,
    # FullLRP reads the pixels it is given, AttnLRP keeps the embedding's output.
    expected = cls(vit).attribute(images, upsample=False)
    other = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        other_expected = vit(other)
    seen: Dict[str, Tensor] = {}

    def run_other() -> None:
        with torch.no_grad():
            seen["output"] = vit(other)

    def forward(x: Tensor) -> Tensor:
        thread = threading.Thread(target=run_other)
        thread.start()
        thread.join()
        return vit(x)

    torch.testing.assert_close(cls(vit, forward).attribute(images, upsample=False), expected)
    torch.testing.assert_close(seen["output"], other_expected)


# --- inputs refused with the argument named ----------------------------------------------
@pytest.mark.parametrize("cls", GRADIENT_METHODS + [TransformerAttribution])
def test_integer_images_are_refused_by_methods_that_differentiate(
    cls: type, vit: nn.Module
) -> None:
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    with pytest.raises(TypeError, match=r"inputs: .*needs floating-point images.*torch.uint8"):
        cls(vit).attribute(images)


def test_meta_device_tensors_are_refused_with_the_argument_named(
    vit: nn.Module, images: Tensor
) -> None:
    with pytest.raises(ValueError, match="inputs: got a tensor on the meta device"):
        RawAttention(vit).attribute(images.to("meta"))
    with pytest.raises(ValueError, match="inputs: expected a dense tensor"):
        RawAttention(vit).attribute(images.to_sparse())
    with pytest.raises(ValueError, match="target: got a tensor on the meta device"):
        GradientWeightedAttention(vit).attribute(
            images, target=torch.zeros(4, dtype=torch.long, device="meta")
        )
    with pytest.raises(ValueError, match="model: its parameters are on the meta device"):
        RawAttention(tiny_timm().to("meta"))


# --- half precision and autocast ----------------------------------------------------------
def _as_float64(trace: AttentionTrace) -> AttentionTrace:
    def widen(value):
        if isinstance(value, list):
            return [widen(v) for v in value]
        return value.double() if isinstance(value, Tensor) and value.is_floating_point() else value

    return dataclasses.replace(
        trace, **{f.name: widen(getattr(trace, f.name)) for f in dataclasses.fields(trace)}
    )


def _with_float64_rule(cls: type) -> type:
    """``cls`` that also applies its rule in float64 to the trace it is handed."""

    class WithFloat64Rule(cls):
        def _token_relevance(self, trace: AttentionTrace, **options) -> Tensor:
            self.dtypes = {a.dtype for a in trace.attentions + (trace.gradients or [])}
            self.exact = super()._token_relevance(_as_float64(trace), **options)
            return super()._token_relevance(trace, **options)

    return WithFloat64Rule


@pytest.mark.parametrize("cls", METHODS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_rules_of_half_precision_models_compute_float32_maps_in_float32(
    cls: type, dtype: torch.dtype, images: Tensor
) -> None:
    method = _with_float64_rule(cls)(tiny_timm().to(dtype))
    maps = method.attribute(images.to(dtype), target=1, upsample=False)
    assert maps.dtype == torch.float32
    assert method.dtypes == {torch.float32}
    exact = method.exact[:, 1:].reshape(maps.shape)
    torch.testing.assert_close(maps.double(), exact, rtol=1e-5, atol=1e-5 * exact.abs().max())


@pytest.mark.parametrize("cls", [TransformerAttribution, PartialLRP, FullLRP])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_lrp_maps_of_half_precision_models_are_float32_not_rounded_to_half(
    cls: type, dtype: torch.dtype, images: Tensor
) -> None:
    # Computed in float64: rounding them to bfloat16 would tie values that differ.
    # A float64 copy of the model computes the same float64 relevance (the half
    # weights and images widen exactly).
    model, half_images = tiny_timm().to(dtype), images.to(dtype)
    maps = cls(model).attribute(half_images, target=1, upsample=False)
    assert maps.dtype == torch.float32
    exact = cls(copy.deepcopy(model).double()).attribute(
        half_images.double(), target=1, upsample=False
    )
    torch.testing.assert_close(maps, exact.float(), rtol=0, atol=0)


@pytest.mark.parametrize("cls", METHODS + [TransformerAttribution])
def test_works_under_autocast_with_float32_rules_and_maps(
    cls: type, model: nn.Module, images: Tensor
) -> None:
    method = _with_float64_rule(cls)(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        maps = method.attribute(images, target=1, upsample=False)
    assert maps.dtype == torch.float32
    exact = method.exact[:, 1:].reshape(maps.shape)
    torch.testing.assert_close(maps.double(), exact, rtol=1e-5, atol=1e-5 * exact.abs().max())
