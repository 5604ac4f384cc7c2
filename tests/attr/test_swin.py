"""Swin Transformers (timm, Hugging Face, torchvision v1 and v2): ConservativeLRP
and AttnLRP are gradient times input of the model's own forward pass with the
rules in its modules. Proven on tiny models (32x32 images, 4x4 patches, 4x4
windows, two stages of two blocks: the second block of stage 1 shifts its
windows under the shift mask, stage 2 follows a patch merging) against the
model's logits, conservation on bias-free copies, and an independent formulation
written here: the libraries' own forward code with the rules patched into
``torch.nn.functional`` and the copy's modules. The other methods refuse Swin by
name, naming the two that work."""

import copy
import threading
import types
from contextlib import ExitStack, contextmanager
from typing import Callable, Dict, Iterator, List
from unittest import mock

import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision
from lrp_rules import _identity_rule, _ln_rule_forward, _scaled_gradient
from torch import Tensor, nn
from transformers import SwinConfig, SwinForImageClassification
from transformers.activations import GELUActivation
from transformers.models.swin.modeling_swin import SwinAttention

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
from captum_saco.attr._core.families.swin import swin_adapter_for
from captum_saco.attr._core.gradient_x_input import swin_gradient_x_input
from captum_saco.attr._core.replay import GradientRules
from tests.numerics import relative_errors

tv_swin = torchvision.models.swin_transformer


def tiny_timm_swin(**kwargs) -> nn.Module:
    config = dict(img_size=32, patch_size=4, window_size=4, embed_dim=24, depths=(2, 2))
    config.update(kwargs)
    return timm.models.swin_transformer.SwinTransformer(num_heads=(2, 2), num_classes=5, **config)


def tiny_hf_swin() -> nn.Module:
    config = SwinConfig(
        image_size=32, patch_size=4, window_size=4, embed_dim=24, depths=[2, 2], num_heads=[2, 2]
    )
    config.num_labels = 5
    return SwinForImageClassification(config)


def tiny_torchvision_swin(**kwargs) -> nn.Module:
    return torchvision.models.SwinTransformer(
        patch_size=[4, 4],
        embed_dim=24,
        depths=[2, 2],
        num_heads=[2, 2],
        window_size=[4, 4],
        num_classes=5,
        **kwargs,
    )


BUILDERS: Dict[str, Callable[[], nn.Module]] = {
    "timm": tiny_timm_swin,
    "huggingface": tiny_hf_swin,
    "torchvision_v1": tiny_torchvision_swin,
    "torchvision_v2": lambda: tiny_torchvision_swin(
        block=tv_swin.SwinTransformerBlockV2, downsample_layer=tv_swin.PatchMergingV2
    ),
}
METHODS = [ConservativeLRP, AttnLRP]
REFUSING = [
    RawAttention,
    AttentionRollout,
    AttentionGradCAM,
    GradientWeightedAttention,
    AttCAT,
    TransformerAttribution,
    PartialLRP,
    FullLRP,
]
#: (method, its options, the attention rule and whether the activation passes
#: relevance unchanged, for the independent formulation)
RULES = {
    "attn_lrp": (AttnLRP, {}, "uniform", True),
    "conservative_lrp_identity": (
        ConservativeLRP,
        {"activation_rule": "identity"},
        "detached",
        True,
    ),
    "conservative_lrp": (ConservativeLRP, {}, "detached", False),
}


def build(family: str, dtype: torch.dtype = torch.float32) -> nn.Module:
    torch.manual_seed(0)
    model = BUILDERS[family]().eval().to(dtype)
    with torch.no_grad():  # position biases of a trained model's size (tables start at zero)
        for name, parameter in model.named_parameters():
            if "relative_position_bias_table" in name:
                parameter.normal_(std=0.5)
    return model


def images(n: int = 3, dtype: torch.dtype = torch.float32) -> Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(3), dtype=dtype)


def logits_of(model: nn.Module, x: Tensor) -> Tensor:
    output = model(x)
    return output if isinstance(output, Tensor) else output.logits


def without_biases(model: nn.Module) -> nn.Module:
    """A copy with every bias-like term zero: the biases of the linear layers,
    convolutions and norms, the relative position bias tables and the continuous
    position bias MLP's biases. Its logits are then homogeneous in the pixels once
    the attention probabilities are constants."""
    copied = copy.deepcopy(model)
    with torch.no_grad():
        for name, parameter in copied.named_parameters():
            if name.endswith("bias") or "relative_position_bias_table" in name:
                parameter.zero_()
    return copied


# --- the independent formulation -------------------------------------------------------
def _detached_softmax(softmax: Callable) -> Callable:
    def detached(*args, **kwargs) -> Tensor:
        return softmax(*args, **kwargs).detach()

    return detached


def _unit_with_constant_norm(x: Tensor, p: float = 2.0, dim: int = 1, eps: float = 1e-12) -> Tensor:
    return x / x.norm(p, dim, keepdim=True).clamp_min(eps).detach()


def _scaling_outputs(linear: Callable, factors: Dict[int, Tensor]) -> Callable:
    """``F.linear`` whose output's gradient is multiplied by ``factors[id(weight)]``
    (per output feature) for the q/k/v weights listed there."""

    def scaled(x: Tensor, weight: Tensor, bias=None) -> Tensor:
        out = linear(x, weight, bias)
        factor = factors.get(id(weight))
        return out if factor is None else _scaled_gradient(out, factor.to(out.dtype))

    return scaled


@contextmanager
def rules_patched(model: nn.Module, attention_rule: str, identity: bool) -> Iterator[nn.Module]:
    """A copy of ``model`` that runs its library's own code with the LRP rules:
    every LayerNorm with the LN rule, the activation with the identity rule (if
    ``identity``), and, while the block is active, ``torch.nn.functional``'s softmax
    detached (AH rule) or the outputs of the q, k and v projections with gradients
    times 1/4, 1/4 and 1/2 (AttnLRP's uniform rule), and ``F.normalize`` (Swin v2's
    cosine attention) with its norm a constant."""
    copied = copy.deepcopy(model)
    factors: Dict[int, Tensor] = {}
    for module in copied.modules():
        if isinstance(module, nn.LayerNorm):
            module.forward = types.MethodType(_ln_rule_forward, module)
        if identity and isinstance(module, (nn.GELU, GELUActivation)):
            module.forward = _identity_rule(copy.deepcopy(module))
        if isinstance(module, timm.models.swin_transformer.WindowAttention):
            module.fused_attn = False
        if isinstance(
            module, (timm.models.swin_transformer.WindowAttention, tv_swin.ShiftedWindowAttention)
        ):
            third = module.qkv.out_features // 3
            factors[id(module.qkv.weight)] = torch.tensor([0.25] * 2 * third + [0.5] * third)
        if isinstance(module, SwinAttention):
            for name, factor in (("q_proj", 0.25), ("k_proj", 0.25), ("v_proj", 0.5)):
                factors[id(getattr(module, name).weight)] = torch.tensor(factor)
    if isinstance(copied, SwinForImageClassification):
        copied.set_attn_implementation("eager")
    with ExitStack() as stack:
        stack.enter_context(mock.patch.object(F, "normalize", _unit_with_constant_norm))
        if attention_rule == "detached":
            stack.enter_context(mock.patch.object(F, "softmax", _detached_softmax(F.softmax)))
        if attention_rule == "uniform":
            stack.enter_context(mock.patch.object(F, "linear", _scaling_outputs(F.linear, factors)))
        yield copied


def independent_relevance(
    model: nn.Module, x: Tensor, target: Tensor, attention_rule: str, identity: bool
) -> Tensor:
    x = x.clone().requires_grad_()
    with rules_patched(model, attention_rule, identity) as copied:
        objective = logits_of(copied, x).gather(1, target[:, None]).sum()
    objective.backward()
    return (x * x.grad).detach()


# --- the tiny models are what the proofs need ------------------------------------------
@pytest.mark.parametrize("family", sorted(BUILDERS))
def test_the_tiny_models_shift_windows_and_merge_patches(family: str) -> None:
    model = build(family)
    logits_of(model, images(1))  # Hugging Face sets its blocks' shifts in the forward pass
    # timm and Hugging Face keep the shift in the block, torchvision in its attention
    shifts = [
        torch.tensor(block.shift_size if hasattr(block, "shift_size") else block.attn.shift_size)
        for block in swin_adapter_for(model).blocks()
    ]
    assert len(shifts) == 4 and shifts[1].sum() > 0
    assert any("Merging" in type(m).__name__ for m in model.modules())


# --- (a) the rules change no forward value ----------------------------------------------
@pytest.mark.parametrize("family", sorted(BUILDERS))
@pytest.mark.parametrize("attention", ["detached", "uniform", "gradient"])
def test_under_the_rules_the_model_computes_its_own_logits(family: str, attention: str) -> None:
    model, x = build(family, torch.float64), images(dtype=torch.float64)
    rules = GradientRules(
        attention, "std_detached", "identity", linear_gamma=0.1, embedding_gamma=0.1
    )
    result = swin_gradient_x_input(swin_adapter_for(model), model, x, None, (), rules)
    with torch.no_grad():
        expected = logits_of(model, x)
    torch.testing.assert_close(result.logits, expected, rtol=1e-12, atol=1e-12)


# --- (b) conservation ------------------------------------------------------------------
@pytest.mark.parametrize("family", sorted(BUILDERS))
@pytest.mark.parametrize("gammas", [{}, {"linear_gamma": 0.25, "embedding_gamma": 0.25}], ids=str)
def test_conservative_lrp_relevance_sums_to_the_target_logit_without_biases(
    family: str, gammas: Dict
) -> None:
    model = without_biases(build(family, torch.float64))
    x, target = images(dtype=torch.float64), torch.tensor([1, 0, 3])
    explainer = ConservativeLRP(model)
    pixels = explainer.attribute(x, target=target, activation_rule="identity", **gammas)
    patches = explainer.attribute(
        x, target=target, activation_rule="identity", upsample=False, **gammas
    )
    with torch.no_grad():
        logits = logits_of(model, x).gather(1, target[:, None]).flatten()
    assert pixels.dtype == torch.float64 and patches.shape == (3, 1, 8, 8)
    torch.testing.assert_close(pixels.sum(dim=(1, 2, 3)), logits, rtol=1e-3, atol=0)
    torch.testing.assert_close(patches.sum(dim=(1, 2, 3)), logits, rtol=1e-3, atol=0)


def _attention_cut(model: nn.Module) -> nn.Module:
    """``model`` with every attention layer's output projection zero: no path from
    the pixels to the logits passes an attention layer."""
    adapter = swin_adapter_for(model)
    with torch.no_grad():
        for attention in adapter.attention_modules():
            (attention.o_proj if hasattr(attention, "o_proj") else attention.proj).weight.zero_()
    return model


@pytest.mark.parametrize("family", sorted(BUILDERS))
def test_attn_lrp_relevance_sums_to_the_target_logit_with_the_attention_paths_cut(
    family: str,
) -> None:
    # AttnLRP's softmax rule does not conserve by design, and its uniform rule gives
    # the value half of the relevance of A V even where the probabilities are
    # constants; with the attention branches cut, what remains (the LayerNorm rule
    # on every norm, the identity rule, patch merging, linear layers) conserves.
    model = _attention_cut(without_biases(build(family, torch.float64)))
    x, target = images(dtype=torch.float64), torch.tensor([2, 4, 0])
    pixels = AttnLRP(model).attribute(x, target=target)
    with torch.no_grad():
        logits = logits_of(model, x).gather(1, target[:, None]).flatten()
    torch.testing.assert_close(pixels.sum(dim=(1, 2, 3)), logits, rtol=1e-3, atol=0)


# --- (c) equal to the independent formulation ---------------------------------------------
@pytest.mark.parametrize("family", sorted(BUILDERS))
@pytest.mark.parametrize("rule", sorted(RULES))
def test_gradient_rule_methods_equal_the_rules_patched_into_the_libraries_own_code(
    family: str, rule: str
) -> None:
    method, options, attention_rule, identity = RULES[rule]
    model, x = build(family, torch.float64), images(dtype=torch.float64)
    target = torch.tensor([2, 2, 4])
    expected = independent_relevance(model, x, target, attention_rule, identity)
    actual = method(model).attribute(x, target=target, **options)
    assert relative_errors(actual, expected).max() < 1e-6


def test_the_independent_formulation_differs_between_the_rules() -> None:
    # the patches take effect: each rule gives its own map
    model, x, target = (
        build("torchvision_v2", torch.float64),
        images(dtype=torch.float64),
        torch.tensor([1, 1, 1]),
    )
    maps = [independent_relevance(model, x, target, *RULES[rule][2:]) for rule in sorted(RULES)]
    plain = x.clone().requires_grad_()
    logits_of(model, plain).gather(1, target[:, None]).sum().backward()
    maps.append(plain.detach() * plain.grad)
    for i in range(len(maps)):
        for j in range(i):
            assert relative_errors(maps[i], maps[j]).min() > 1e-3


# --- (d) batch independence, (e) the model left as found ----------------------------------
@pytest.mark.parametrize("family", sorted(BUILDERS))
@pytest.mark.parametrize("method", METHODS)
def test_an_image_alone_gets_its_map_in_a_batch_and_the_model_is_left_as_found(
    family: str, method: type, state_of, same_state
) -> None:
    model = build(family)
    logits_of(model, images(1))  # Hugging Face sets its blocks' shifts in the forward pass
    before = state_of(model)
    x = images()
    batch = method(model).attribute(x, target=[3, 3, 3], upsample=False)
    alone = method(model).attribute(x[2:], target=3, upsample=False)
    assert batch.shape == (3, 1, 8, 8) and batch.dtype == torch.float32
    torch.testing.assert_close(alone, batch[2:], rtol=1e-5, atol=1e-7)
    same_state(before, state_of(model))


@pytest.mark.parametrize("family", sorted(BUILDERS))
def test_a_call_that_fails_inside_the_forward_pass_leaves_the_model_as_found(
    family: str, state_of, same_state
) -> None:
    model = build(family)
    x = images()
    expected = logits_of(model, x).detach()
    before = state_of(model)

    def failing(inputs: Tensor) -> Tensor:
        logits_of(model, inputs)
        raise RuntimeError("failed after the forward pass")

    with pytest.raises(RuntimeError, match="failed after"):
        AttnLRP(model, failing).attribute(x)
    same_state(before, state_of(model))
    torch.testing.assert_close(logits_of(model, x), expected)


def test_another_threads_forward_pass_during_a_call_is_the_plain_model() -> None:
    model, x = build("timm"), images()
    expected = x.clone().requires_grad_()
    logits_of(model, expected)[:, 1].sum().backward()
    seen: List[Tensor] = []

    def plain_gradient() -> None:
        other = x.clone().requires_grad_()
        logits_of(model, other)[:, 1].sum().backward()
        seen.append(other.grad)

    def forward_func(inputs: Tensor) -> Tensor:
        thread = threading.Thread(target=plain_gradient)
        thread.start()
        thread.join()
        return model(inputs)

    AttnLRP(model, forward_func).attribute(x, target=1)
    torch.testing.assert_close(seen[0], expected.grad)


# --- (f) the other methods refuse Swin naming the two that work -------------------------
@pytest.mark.parametrize("family", sorted(BUILDERS))
@pytest.mark.parametrize("method", REFUSING)
def test_the_other_methods_refuse_swin_naming_the_methods_that_work(
    family: str, method: type
) -> None:
    model = build(family)
    name = type(model).__name__
    with pytest.raises(
        ValueError, match=rf"^model: {name} is a Swin .*ConservativeLRP and AttnLRP"
    ):
        method(model)


class _Squashed(nn.Module):
    """A module of the user's, unknown to the rules."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(self.inner(x))


def test_a_module_without_a_rule_is_refused_by_name() -> None:
    model = tiny_timm_swin(global_pool="max").eval()
    with pytest.raises(ValueError, match=r"^model: .*head\.global_pool.*FastAdaptiveMaxPool"):
        AttnLRP(model)
    model = build("torchvision_v1")
    model.features[1][0].mlp = _Squashed(model.features[1][0].mlp)
    with pytest.raises(ValueError, match=r"^model: .*features\.1\.0\.mlp \(_Squashed\)"):
        ConservativeLRP(model)


def test_half_precision_models_give_float32_maps_close_to_float32() -> None:
    model, x = build("torchvision_v1"), images()
    expected = AttnLRP(model).attribute(x, target=1)
    actual = AttnLRP(copy.deepcopy(model).bfloat16()).attribute(x.bfloat16(), target=1)
    assert actual.dtype == torch.float32
    assert relative_errors(actual, expected).max() < 0.1


@pytest.mark.parametrize("family", sorted(BUILDERS))
def test_works_under_no_grad_and_inference_mode_with_the_same_result(family: str) -> None:
    model, x = build(family), images()
    expected = AttnLRP(model).attribute(x, target=1)
    with torch.no_grad():
        assert torch.equal(AttnLRP(model).attribute(x, target=1), expected)
    with torch.inference_mode():
        assert torch.equal(AttnLRP(model).attribute(x, target=1), expected)


def test_forward_func_that_does_not_run_the_model_once_is_refused() -> None:
    model, x = build("timm"), images()
    with pytest.raises(ValueError, match="^forward_func: .* 0 times"):
        AttnLRP(model, lambda inputs: torch.zeros(len(inputs), 5)).attribute(x)
    with pytest.raises(ValueError, match="^forward_func: .* 2 times"):
        AttnLRP(model, lambda inputs: model(inputs) + model(inputs.flip(-1))).attribute(x)


def test_concurrent_calls_on_one_model_each_get_their_own_maps() -> None:
    model, x = build("huggingface"), images()
    expected = {m: m(model).attribute(x, target=2) for m in METHODS}
    results: Dict[type, Tensor] = {}

    def run(method: type) -> None:
        for _ in range(3):
            results[method] = method(model).attribute(x, target=2)

    threads = [threading.Thread(target=run, args=(m,)) for m in METHODS]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for method in METHODS:
        assert torch.equal(results[method], expected[method])


@pytest.mark.parametrize("family", ["torchvision_v1", "torchvision_v2"])
def test_torchvision_windows_padded_at_the_border_keep_the_logits_and_the_rules(
    family: str,
) -> None:
    # a 10x11 patch grid: the attention pads it to 12x12 windows (torchvision pads
    # inside the attention, which the rules re-implement)
    model = build(family, torch.float64)
    x = torch.rand(2, 3, 40, 44, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    target = torch.tensor([0, 3])
    result = swin_gradient_x_input(
        swin_adapter_for(model), model, x, target, (), GradientRules("uniform", "std_detached")
    )
    with torch.no_grad():
        torch.testing.assert_close(result.logits, logits_of(model, x), rtol=1e-12, atol=1e-12)
    expected = independent_relevance(model, x, target, "uniform", True)
    assert relative_errors(AttnLRP(model).attribute(x, target=target), expected).max() < 1e-6


def test_the_gamma_options_change_the_maps() -> None:
    model, x = build("timm"), images()
    plain = ConservativeLRP(model).attribute(x, target=1)
    for option in ("linear_gamma", "embedding_gamma"):
        gamma = ConservativeLRP(model).attribute(x, target=1, **{option: 0.5})
        assert relative_errors(gamma, plain).min() > 1e-3
