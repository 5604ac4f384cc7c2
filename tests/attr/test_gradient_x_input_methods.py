"""Conservative LRP and AttnLRP: gradient times input under named gradient rules,
number for number against the original code (Ali et al.'s rules, LXT 2.1), on every
model family, batched, in any gradient mode and precision, the model left as found."""

import copy
import threading
from typing import Dict

import pytest
import torch
from captum.attr import InputXGradient
from timm.models.vision_transformer import ResPostBlock
from tiny_models import tiny_hf_deit, tiny_timm, tiny_timm_distilled
from torch import Tensor, nn
from transformers import DeiTForImageClassificationWithTeacher

from captum_saco.attr._core.attn_lrp import AttnLRP
from captum_saco.attr._core.conservative_lrp import ConservativeLRP
from captum_saco.attr._core.families import adapter_for
from captum_saco.attr._core.gradient_x_input import gradient_x_input
from captum_saco.attr._core.replay import PLAIN_GRADIENT, GradientRules, model_forward
from tests.numerics import relative_errors

# reference key -> (method class, options, the rules that method runs)
CASES = {
    "conservative_lrp": (
        ConservativeLRP,
        {},
        GradientRules(attention="detached", norm="std_detached"),
    ),
    "lxt_cp_lrp": (
        ConservativeLRP,
        {"activation_rule": "identity"},
        GradientRules(attention="detached", norm="std_detached", activation="identity"),
    ),
    "lxt_attnlrp": (
        AttnLRP,
        {},
        GradientRules(attention="uniform", norm="std_detached", activation="identity"),
    ),
    "lxt_cp_lrp_gamma": (
        ConservativeLRP,
        {"activation_rule": "identity", "embedding_gamma": 0.25, "linear_gamma": 0.05},
        GradientRules(
            attention="detached",
            norm="std_detached",
            activation="identity",
            linear_gamma=0.05,
            embedding_gamma=0.25,
        ),
    ),
}
METHODS = [ConservativeLRP, AttnLRP]


def pixel_map(relevance: Tensor, key: str, recorded: Dict) -> Tensor:
    """What the reference stores at the pixels: ``(N, 3, H, W)`` if it has the raw
    key, else the sum over the channels."""
    return relevance if f"{key}_raw" in recorded else relevance.sum(dim=1)


def stored_pixels(key: str, recorded: Dict) -> Tensor:
    return recorded.get(f"{key}_raw", recorded.get(key))


@pytest.fixture
def images(more_reference: Dict) -> Tensor:
    return more_reference["inputs"].clone()


# --- the original numbers -----------------------------------------------------------------
@pytest.mark.parametrize("target_kind", ["argmax", "fixed"])
@pytest.mark.parametrize("key", sorted(CASES))
def test_pixel_and_patch_relevance_equal_the_original_code(
    more_reference: Dict, reference_model: nn.Module, key: str, target_kind: str
) -> None:
    cls, options, _ = CASES[key]
    recorded = more_reference["attributions"][target_kind]
    target = more_reference["targets"][target_kind]
    method = cls(reference_model)
    pixels = method.attribute(more_reference["inputs"], target=target, **options)
    patches = method.attribute(more_reference["inputs"], target=target, upsample=False, **options)
    assert pixels.shape == (4, 3, 96, 96) and patches.shape == (4, 1, 6, 6)
    # float32 against float32: the originals' own float32 error is <= 3e-5 of the maximum
    assert (
        relative_errors(pixel_map(pixels, key, recorded), stored_pixels(key, recorded)).max() < 1e-4
    )
    assert relative_errors(patches, recorded[f"{key}_tokens"]).max() < 1e-4


@pytest.mark.parametrize("target_kind", ["argmax", "fixed"])
@pytest.mark.parametrize("key", sorted(CASES))
def test_block0_token_relevance_equals_the_original_code(
    more_reference: Dict, reference_model: nn.Module, key: str, target_kind: str
) -> None:
    _, _, rules = CASES[key]
    target = more_reference["targets"][target_kind]
    adapter = adapter_for(reference_model)
    result = gradient_x_input(adapter, reference_model, more_reference["inputs"], target, (), rules)
    expected = more_reference["attributions"][target_kind][f"{key}_tokens_block0"]
    assert relative_errors(result.tokens, expected).max() < 1e-4
    assert torch.equal(result.classes, target)


@pytest.mark.parametrize("target_kind", ["argmax", "fixed"])
@pytest.mark.parametrize("key", sorted(CASES))
def test_float64_run_is_as_far_from_the_float32_keys_as_the_originals_float64_run(
    more_reference: Dict, timm_reference_model: nn.Module, key: str, target_kind: str
) -> None:
    # The originals' float64 run differs from their stored float32 values by
    # float32_vs_float64; ours lands at the same distance, to 1e-7 of the maximum
    # (LXT's identity rule divides by x + 1e-10, this one by x: < 1e-7 here).
    cls, options, _ = CASES[key]
    model = copy.deepcopy(timm_reference_model).double()
    recorded = more_reference["attributions"][target_kind]
    distance = more_reference["float32_vs_float64"][target_kind]
    target = more_reference["targets"][target_kind]
    method = cls(model)
    pixels = method.attribute(more_reference["inputs"].double(), target=target, **options)
    patches = method.attribute(
        more_reference["inputs"].double(), target=target, upsample=False, **options
    )
    assert pixels.dtype == torch.float64
    pixel_key = f"{key}_raw" if f"{key}_raw" in recorded else key
    for values, stored in (
        (pixel_map(pixels, key, recorded), pixel_key),
        (patches, f"{key}_tokens"),
    ):
        error = relative_errors(values, recorded[stored])
        assert (error - distance[stored].double()).abs().max() < 1e-7


# --- the rules are gradient rules only --------------------------------------------------
@pytest.mark.parametrize("key", sorted(CASES))
def test_replay_under_any_rules_reproduces_the_models_logits(
    reference: Dict, reference_model: nn.Module, key: str, scores_of
) -> None:
    adapter = adapter_for(reference_model)
    with adapter.capture() as record, torch.no_grad():
        logits = scores_of(reference_model, reference["inputs"])
    replayed = model_forward(adapter.parts(), record.tokens, CASES[key][2]).logits
    torch.testing.assert_close(replayed, logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "build",
    [tiny_timm, tiny_timm_distilled, lambda: tiny_hf_deit(DeiTForImageClassificationWithTeacher)],
    ids=["timm", "timm-distilled", "hf-deit-with-teacher"],
)
def test_plain_rules_give_captums_input_x_gradient_of_the_model(build) -> None:
    # The pixel path is the model's own embedding: with the plain gradient
    # everywhere the result is Captum's InputXGradient, heads averaged as the
    # models average them.
    model = build()
    images = torch.rand(3, 3, 32, 32)

    def scores(x: Tensor) -> Tensor:
        output = model(x)
        return output if isinstance(output, Tensor) else output.logits

    result = gradient_x_input(adapter_for(model), model, images, [0, 3, 4], (), PLAIN_GRADIENT)
    expected = InputXGradient(scores).attribute(images.clone().requires_grad_(), target=[0, 3, 4])
    torch.testing.assert_close(result.pixels, expected, rtol=1e-4, atol=1e-7)


def test_identity_rule_gives_a_zero_gradient_where_the_activation_input_is_zero() -> None:
    model = tiny_timm()
    with torch.no_grad():
        for block in model.blocks:  # hidden unit 0 sees exactly 0
            block.mlp.fc1.weight[0] = 0
            block.mlp.fc1.bias[0] = 0
    maps = AttnLRP(model).attribute(torch.rand(2, 3, 32, 32))
    assert torch.isfinite(maps).all()


def test_unknown_activation_rule_is_refused_by_name_before_running_the_model(
    timm_reference_model: nn.Module, images: Tensor
) -> None:
    def never(x: Tensor) -> Tensor:
        raise AssertionError("the model ran")

    with pytest.raises(ValueError, match=r"activation_rule: expected one of .*'identity'"):
        ConservativeLRP(timm_reference_model, never).attribute(images, activation_rule="relu")


@pytest.mark.parametrize("value", [-0.1, float("inf"), float("nan")])
@pytest.mark.parametrize("option", ["linear_gamma", "embedding_gamma"])
def test_negative_or_infinite_gamma_is_refused_by_name_before_running_the_model(
    timm_reference_model: nn.Module, images: Tensor, option: str, value: float
) -> None:
    def never(x: Tensor) -> Tensor:
        raise AssertionError("the model ran")

    with pytest.raises(ValueError, match=f"{option}: expected a finite number >= 0"):
        AttnLRP(timm_reference_model, never).attribute(images, **{option: value})


def test_gamma_rule_gives_a_zero_gradient_where_the_layer_input_is_zero() -> None:
    model = tiny_timm()
    images = torch.rand(2, 3, 32, 32)
    images[:, :, :8, :8] = 0  # a whole patch of zero pixels
    maps = ConservativeLRP(model).attribute(images, embedding_gamma=0.25, linear_gamma=0.1)
    assert torch.isfinite(maps).all() and (maps[:, :, :8, :8] == 0).all()


# --- batches, gradient modes, precision --------------------------------------------------
@pytest.mark.parametrize("cls", METHODS)
def test_a_batch_gives_the_maps_of_its_images_one_by_one(
    cls: type, timm_reference_model: nn.Module, images: Tensor
) -> None:
    method = cls(timm_reference_model)
    batch = method.attribute(images, target=[1, 2, 3, 4])
    single = torch.cat([method.attribute(images[i : i + 1], target=i + 1) for i in range(4)])
    chunked = method.attribute(images, target=[1, 2, 3, 4], max_examples_per_batch=3)
    # Equal up to float32 rounding, which depends on the BLAS kernels a batch size
    # picks: 1e-5 of each map's largest magnitude.
    scale = 1e-5 * batch.flatten(1).abs().amax(dim=1)[:, None, None, None]
    assert ((batch - single).abs() <= scale).all()
    assert ((chunked - batch).abs() <= scale).all()


@pytest.mark.parametrize("cls", METHODS)
@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
def test_works_under_no_grad_and_inference_mode_with_the_same_result(
    cls: type, mode, reference_model: nn.Module, images: Tensor
) -> None:
    # on every family: Hugging Face's parts join the q/k/v weights, which must not
    # become inference tensors
    method = cls(reference_model)
    expected = method.attribute(images, upsample=False)
    with mode():
        inside = method.attribute(images.clone(), upsample=False)
    torch.testing.assert_close(inside, expected, rtol=0, atol=0)


@pytest.mark.parametrize("cls", METHODS)
def test_a_frozen_model_and_the_users_tensors_are_untouched(
    cls: type, timm_reference_model: nn.Module, images: Tensor
) -> None:
    model = copy.deepcopy(timm_reference_model).requires_grad_(False)
    original = images.clone()
    maps = cls(model).attribute(images)
    assert torch.isfinite(maps).all()
    assert torch.equal(images, original) and not images.requires_grad and images.grad is None
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("cls", METHODS)
def test_half_precision_models_give_float32_maps_close_to_float32(
    cls: type, dtype: torch.dtype, timm_reference_model: nn.Module, images: Tensor
) -> None:
    # Against the float32 run of the same (rounded) weights: the replay runs in
    # float32; only the model's own embedding and the tokens entering block 0 are
    # in half precision (measured: float16 <= 0.7 %, bfloat16 <= 4.5 % of the max).
    half = copy.deepcopy(timm_reference_model).to(dtype)
    rounded = copy.deepcopy(half).float()
    inputs = images.to(dtype)
    maps = cls(half).attribute(inputs, upsample=False)
    expected = cls(rounded).attribute(inputs.float(), upsample=False)
    assert maps.dtype == torch.float32
    assert relative_errors(maps, expected).max() < (0.015 if dtype == torch.float16 else 0.08)


@pytest.mark.parametrize("cls", METHODS)
def test_under_autocast_a_float32_model_is_explained_in_float32(
    cls: type, timm_reference_model: nn.Module, images: Tensor
) -> None:
    expected = cls(timm_reference_model).attribute(images, upsample=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        maps = cls(timm_reference_model).attribute(images, upsample=False)
    torch.testing.assert_close(maps, expected, rtol=0, atol=0)


def test_a_non_finite_example_gives_a_non_finite_map_and_leaves_the_others_alone(
    timm_reference_model: nn.Module, images: Tensor
) -> None:
    clean = AttnLRP(timm_reference_model).attribute(images, upsample=False)
    images[1, 0, 0, 0] = float("nan")
    with pytest.warns(UserWarning, match=r"examples \[1\] are not finite"):
        maps = AttnLRP(timm_reference_model).attribute(images, upsample=False)
    torch.testing.assert_close(maps[[0, 2, 3]], clean[[0, 2, 3]], rtol=1e-5, atol=1e-9)
    assert not torch.isfinite(maps[1]).all()


# --- forms, models, refusals --------------------------------------------------------------
@pytest.mark.parametrize("cls", METHODS)
def test_tuple_in_gives_tuple_out_on_the_inputs_device(
    cls: type, timm_reference_model: nn.Module, images: Tensor
) -> None:
    (maps,) = cls(timm_reference_model).attribute((images,))
    assert maps.shape == images.shape and maps.device == images.device


@pytest.mark.parametrize("cls", METHODS)
def test_model_is_left_as_found_after_a_call_and_after_a_failing_one(
    cls: type, reference_model: nn.Module, images: Tensor, state_of, same_state
) -> None:
    before = state_of(reference_model)
    cls(reference_model).attribute(images)
    same_state(before, state_of(reference_model))
    with pytest.raises(ValueError, match="target"):
        cls(reference_model).attribute(images, target=99)
    with pytest.raises(Exception):
        cls(reference_model).attribute(torch.rand(1, 3, 50, 50))
    same_state(before, state_of(reference_model))


@pytest.mark.parametrize("cls", METHODS)
def test_unsupported_models_are_refused_clearly(cls: type, images: Tensor) -> None:
    with pytest.raises(ValueError, match="not a supported Vision Transformer"):
        cls(nn.Sequential(nn.Flatten(), nn.Linear(3 * 96 * 96, 10)))
    with pytest.raises(ValueError, match="ResPostBlock"):
        cls(tiny_timm(block_fn=ResPostBlock)).attribute(torch.rand(1, 3, 32, 32))


def test_forward_func_that_does_not_run_the_model_is_refused(
    timm_reference_model: nn.Module, images: Tensor
) -> None:
    with pytest.raises(ValueError, match="forward_func"):
        AttnLRP(timm_reference_model, lambda x: x.mean(dim=(2, 3))).attribute(images)


@pytest.mark.parametrize("cls", METHODS)
def test_integer_images_are_refused_by_name(cls: type, timm_reference_model: nn.Module) -> None:
    images = torch.randint(0, 256, (2, 3, 96, 96), dtype=torch.uint8)
    with pytest.raises(TypeError, match=r"inputs: .*needs floating-point images"):
        cls(timm_reference_model).attribute(images)


def test_concurrent_calls_with_the_gamma_rule_each_get_their_own_maps(
    timm_reference_model: nn.Module, images: Tensor, state_of, same_state
) -> None:
    method = ConservativeLRP(timm_reference_model)
    options = {"embedding_gamma": 0.25, "linear_gamma": 0.05}
    batches = [images[:2], images[2:]]
    expected = [method.attribute(batch, **options) for batch in batches]
    before = state_of(timm_reference_model)
    results: Dict[int, Tensor] = {}

    def run(index: int) -> None:
        # the other thread runs the model plainly meanwhile: no gamma rule there
        results[index] = method.attribute(batches[index], **options)
        results[index + 2] = timm_reference_model(batches[1 - index])

    threads = [threading.Thread(target=run, args=(index,)) for index in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for index in range(2):
        torch.testing.assert_close(results[index], expected[index])
        torch.testing.assert_close(results[index + 2], timm_reference_model(batches[1 - index]))
    same_state(before, state_of(timm_reference_model))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.usefixtures("no_tf32")
@pytest.mark.parametrize("key", sorted(CASES))
def test_a_cuda_model_gives_the_cpu_maps_on_the_inputs_device(
    timm_reference_model: nn.Module, images: Tensor, key: str
) -> None:
    cls, options, _ = CASES[key]
    expected = cls(timm_reference_model).attribute(images, **options)
    maps = cls(copy.deepcopy(timm_reference_model).cuda()).attribute(images.cuda(), **options)
    assert maps.device.type == "cuda"
    assert relative_errors(maps.cpu(), expected).max() < 1e-4
