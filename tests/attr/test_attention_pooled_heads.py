"""Attention-pooled (MAP) heads and the Hugging Face CLIP / SigLIP image
classifiers.

A MAP head (timm ``global_pool="map"``, the SigLIP tower's ``head``) reads the
tokens through its own attention, so the attention-map methods start from a
read-out vector ``s`` per example: the head's attention over the tokens, mean
over heads. ``CLIPForImageClassification`` and ``SiglipForImageClassification``
average tokens, so ``s`` is the uniform average over exactly those tokens. The
methods equal a recomputation from attention probabilities (blocks and head)
that this test captures itself, with its own hooks and eager math, on a copy
of the model; ConservativeLRP conserves the logit on the mean-pooled Hugging
Face classifiers (the relevance methods on MAP heads: test_map_relevance.py)."""

import copy
from typing import Callable, Dict, List, Tuple

import pytest
import torch
from lrp_rules import assert_conserves, gradient_x_input, rules_patched_copy, without_biases
from test_relevance import relevance_of
from tiny_models import tiny_timm
from torch import Tensor, nn
from transformers import (
    CLIPConfig,
    CLIPForImageClassification,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
    SiglipConfig,
    SiglipForImageClassification,
    SiglipModel,
)

from captum_saco.attr import (
    AttCAT,
    AttentionAttribution,
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
from captum_saco.models import ZeroShotClassifier
from tests.numerics import relative_errors

WORKING = [RawAttention, AttentionRollout, AttentionGradCAM, GradientWeightedAttention, AttCAT]
RELEVANCE = [TransformerAttribution, PartialLRP, FullLRP, ConservativeLRP, AttnLRP]
HF_VISION = dict(
    image_size=32,
    patch_size=8,
    hidden_size=24,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=2,
)


def sharpened(model: nn.Module) -> nn.Module:
    """``model`` with its matrices (and the MAP head's latent query) redrawn with
    a large spread, so that every attention, the head's included, is far from
    uniform and the read-out differs from image to image."""
    torch.manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() > 1:
                parameter.normal_(0, 0.3)
    return model.eval()


def timm_map(**kwargs) -> nn.Module:
    return sharpened(tiny_timm(global_pool="map", **kwargs))


def zero_shot_siglip() -> nn.Module:
    torch.manual_seed(0)
    config = SiglipConfig(
        text_config=dict(
            vocab_size=64,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=8,
        ),
        vision_config=HF_VISION,
    )
    return ZeroShotClassifier(sharpened(SiglipModel(config)), torch.randn(5, 24))


def hf_classifier(model_class: type, config_class: type) -> nn.Module:
    torch.manual_seed(0)
    model = model_class(config_class(vision_config=HF_VISION, num_labels=5))
    return sharpened(model)


#: MAP models: name -> builder
MAP_MODELS: Dict[str, Callable[[], nn.Module]] = {
    "timm_siglip_layout": lambda: timm_map(class_token=False),
    "timm_with_class_token": lambda: timm_map(),
    "timm_with_registers": lambda: timm_map(class_token=False, reg_tokens=2),
    "timm_pool_include_prefix": lambda: timm_map(pool_include_prefix=True),
    "zero_shot_hf_siglip": zero_shot_siglip,
    "zero_shot_timm": lambda: ZeroShotClassifier(
        timm_map(class_token=False, num_classes=16), torch.randn(5, 16), logit_scale=10.0
    ),
}
#: mean-pooled Hugging Face classifiers: name -> builder
MEAN_MODELS: Dict[str, Callable[[], nn.Module]] = {
    "hf_siglip_classifier": lambda: hf_classifier(SiglipForImageClassification, SiglipConfig),
    "hf_clip_classifier": lambda: hf_classifier(CLIPForImageClassification, CLIPConfig),
}
ALL_MODELS = {**MAP_MODELS, **MEAN_MODELS}


def images_of(n: int = 3) -> Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(3))


def logits_of(output: object) -> Tensor:
    return output if isinstance(output, Tensor) else output.logits


# --- the test's own capture ------------------------------------------------------------
def _head_probabilities(queries: Tensor, keys: Tensor, num_heads: int, scale: float) -> Tensor:
    """``softmax(q k^T * scale)`` per head, ``(N, heads, Q, T)``, for ``(·, Q, D)``
    queries and ``(N, T, D)`` keys."""
    split = lambda t: t.unflatten(-1, (num_heads, -1)).transpose(1, 2)  # noqa: E731
    return (split(queries) * scale @ split(keys).transpose(-2, -1)).softmax(dim=-1)


def captured(
    name: str, model: nn.Module, images: Tensor, target: Tensor
) -> Tuple[List[Tensor], List[Tensor], Tensor, int]:
    """On a copy of the model, with this test's own hooks: each block's attention
    probabilities and their gradients of the summed target logits, the head's
    read-out ``s`` ``(N, T)`` and the number of prefix tokens.

    The blocks' probabilities are the eager attention's own (timm ``attn_drop``'s
    input, Hugging Face's returned weights); the MAP head's are recomputed here
    from the tokens entering it and its weights."""
    model = copy.deepcopy(model)
    attentions: List[Tensor] = []
    head_input: List[Tensor] = []

    def keep(output: Tensor) -> None:
        output.retain_grad()
        attentions.append(output)

    timm_model = "timm" in name
    if timm_model:
        vit = model.model if isinstance(model, ZeroShotClassifier) else model
        for block in vit.blocks:
            block.attn.fused_attn = False
            block.attn.attn_drop.register_forward_hook(lambda m, a, out: keep(out))
        vit.attn_pool.register_forward_pre_hook(lambda m, args: head_input.append(args[0]))
    else:
        vision = model.model.vision_model if name.startswith("zero_shot") else model.vision_model
        vision.config._attn_implementation = "eager"
        for layer in vision.encoder.layers:
            layer.self_attn.register_forward_hook(lambda m, a, out: keep(out[1]))
        if name in MAP_MODELS:
            vision.head.register_forward_pre_hook(lambda m, args: head_input.append(args[0]))
    logits_of(model(images)).gather(1, target[:, None]).sum().backward()
    tokens = attentions[0].shape[-1]
    with torch.no_grad():
        if timm_model:
            pool = vit.attn_pool
            assert isinstance(pool.q_norm, nn.Identity) and pool.latent_len == 1
            keys = pool.kv(head_input[0])[..., : vit.embed_dim]
            queries = pool.q(pool.latent)
            probabilities = _head_probabilities(queries, keys, pool.num_heads, pool.scale)
            s = probabilities.mean(dim=1)[:, 0]  # (N, T - skipped prefix tokens)
            s = torch.cat([s.new_zeros(len(s), tokens - s.shape[1]), s], dim=1)
            prefix = vit.num_prefix_tokens
        elif name in MAP_MODELS:
            mha = vision.head.attention
            wq, wk, _ = mha.in_proj_weight.chunk(3)
            bq, bk, _ = mha.in_proj_bias.chunk(3)
            queries, keys = vision.head.probe @ wq.T + bq, head_input[0] @ wk.T + bk
            scale = (mha.embed_dim // mha.num_heads) ** -0.5
            s = _head_probabilities(queries, keys, mha.num_heads, scale).mean(dim=1)[:, 0]
            prefix = 0
        else:  # the classifiers average the tokens after the class token (CLIP), or all
            prefix = 1 if name == "hf_clip_classifier" else 0
            s = torch.zeros(len(images), tokens)
            s[:, prefix:] = 1 / (tokens - prefix)
    return [a.detach() for a in attentions], [a.grad for a in attentions], s, prefix


def expected_maps(
    attentions: List[Tensor], gradients: List[Tensor], s: Tensor, prefix: int
) -> Dict[str, Tensor]:
    """Each method's token map ``(N, T)`` from ``s`` ``(N, T)`` and the captured
    probabilities, written out (raw ``s · mean_h A_L``, rollout ``s · Â_L ⋯ Â_1``,
    ...)."""
    row = s[:, None]  # (N, 1, T)
    eye = torch.eye(s.shape[1])
    raw = row @ attentions[-1].mean(dim=1)
    rollout = row
    for attention in reversed(attentions):
        fused = attention.mean(dim=1) + eye
        rollout = rollout @ (fused / fused.sum(dim=-1, keepdim=True))
    weighted = [(g * a).clamp(min=0).mean(dim=1) for a, g in zip(attentions, gradients)]
    chained = eye.expand(len(s), -1, -1)
    for w in weighted:
        chained = chained + w @ chained
    per_head = row[:, None] @ attentions[-1]  # (N, heads, 1, T)
    head_gradients = row[:, None] @ gradients[-1]
    head_weights = head_gradients[..., prefix:].mean(dim=-1, keepdim=True)
    gradcam = (head_weights * per_head).mean(dim=1).clamp(min=0)
    return {
        "raw": raw[:, 0],
        "rollout": rollout[:, 0],
        "generic": (row @ chained)[:, 0],
        "last_layer": (row @ weighted[-1])[:, 0],
        "gradcam": gradcam[:, 0],
    }


def on_grid(tokens: Tensor, prefix: int) -> Tensor:
    return tokens[:, prefix:].reshape(-1, 1, 4, 4)


class ReadOut(AttentionAttribution):
    """The engine's read-out vector itself, as a map."""

    def _token_relevance(self, trace):
        return trace.readout_rows()[:, 0]


# --- the read-out ------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(ALL_MODELS))
def test_the_read_out_is_the_heads_attention_or_the_average_it_takes(name: str) -> None:
    model, images = ALL_MODELS[name](), images_of()
    _, _, s, prefix = captured(name, model, images, torch.zeros(3, dtype=torch.long))
    if name in MAP_MODELS:  # one read-out per image, a distribution over the tokens
        assert not torch.allclose(s[0], s[1], atol=1e-3)
        torch.testing.assert_close(s.sum(dim=1), torch.ones(3))
    actual = ReadOut(model).attribute(images, upsample=False)
    torch.testing.assert_close(actual, on_grid(s, prefix), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", sorted(MEAN_MODELS))
def test_the_classifiers_logits_are_the_head_applied_to_the_read_out_tokens(name: str) -> None:
    model, images = MEAN_MODELS[name](), images_of()
    _, _, s, _ = captured(name, model, images, torch.zeros(3, dtype=torch.long))
    with torch.no_grad():
        # CLIP's last_hidden_state is not normalised (post_layernorm acts on the
        # class token only); SigLIP's is, after post_layernorm
        tokens = model.vision_model(images).last_hidden_state
        pooled = (s[:, None] @ tokens)[:, 0]
        torch.testing.assert_close(model.classifier(pooled), model(images).logits)


# --- the attention-map methods -------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(ALL_MODELS))
def test_attention_map_methods_equal_a_recomputation_from_the_captured_probabilities(
    name: str,
) -> None:
    model, images, target = ALL_MODELS[name](), images_of(), torch.tensor([0, 2, 4])
    attentions, gradients, s, prefix = captured(name, model, images, target)
    expected = expected_maps(attentions, gradients, s, prefix)
    actual = {
        "raw": RawAttention(model).attribute(images, upsample=False),
        "rollout": AttentionRollout(model).attribute(images, upsample=False),
        "generic": GradientWeightedAttention(model).attribute(
            images, target=target, upsample=False
        ),
        "last_layer": GradientWeightedAttention(model).attribute(
            images, target=target, upsample=False, aggregate_layers=False
        ),
        "gradcam": AttentionGradCAM(model).attribute(images, target=target, upsample=False),
    }
    for key in expected:
        scale = float(expected[key].abs().max())
        torch.testing.assert_close(
            actual[key], on_grid(expected[key], prefix), rtol=1e-5, atol=1e-6 * scale, msg=key
        )


@pytest.mark.parametrize("name", sorted(ALL_MODELS))
@pytest.mark.parametrize("method", WORKING, ids=lambda m: m.__name__)
def test_an_image_alone_gets_its_map_in_a_batch_and_the_model_is_left_as_found(
    name: str, method: type, state_of, same_state
) -> None:
    model = ALL_MODELS[name]()
    before = state_of(model)
    images = images_of()
    batch = method(model).attribute(images, target=[3, 3, 3], upsample=False)
    alone = method(model).attribute(images[2:], target=3, upsample=False)
    scale = float(batch.abs().max())
    torch.testing.assert_close(alone, batch[2:], rtol=1e-4, atol=1e-6 * scale)
    assert torch.isfinite(batch).all()
    same_state(before, state_of(model))


def test_the_timm_map_heads_fused_attention_is_switched_off_for_the_call_only() -> None:
    model = timm_map(class_token=False)
    seen = []
    model.attn_pool.register_forward_pre_hook(lambda module, args: seen.append(module.fused_attn))
    RawAttention(model).attribute(images_of(1), upsample=False)
    assert seen == [False] and model.attn_pool.fused_attn is True


# --- refusals --------------------------------------------------------------------------------
def test_rollout_refuses_discard_ratio_on_a_map_head_by_name() -> None:
    with pytest.raises(ValueError, match="discard_ratio: .*class-token heads"):
        AttentionRollout(timm_map()).attribute(images_of(), discard_ratio=0.5)


# --- the LRP methods on the mean-pooled Hugging Face classifiers --------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", sorted(MEAN_MODELS))
def test_conservative_lrp_pixel_relevance_sums_to_the_target_logit_without_biases(
    name: str, dtype: torch.dtype
) -> None:
    model = without_biases(MEAN_MODELS[name]()).to(dtype)
    images, target = images_of().to(dtype), torch.tensor([1, 0, 3])
    assert_conserves(model, images, target, rtol=1e-3 if dtype == torch.float32 else 1e-10)


@pytest.mark.parametrize("name", sorted(MEAN_MODELS))
@pytest.mark.parametrize("method", [TransformerAttribution, PartialLRP, FullLRP])
def test_chefers_relevance_methods_explain_the_mean_pooled_classifiers_image_by_image(
    name: str, method: type
) -> None:
    model = MEAN_MODELS[name]()
    batch = method(model).attribute(images_of(), target=[0, 0, 0], upsample=False)
    alone = method(model).attribute(images_of()[1:2], target=0, upsample=False)
    torch.testing.assert_close(alone, batch[1:2], rtol=1e-5, atol=1e-7)
    assert torch.isfinite(batch).all()


@pytest.mark.parametrize("name", sorted(MEAN_MODELS))
def test_chefers_relevance_pass_conserves_the_unit_relevance_through_the_mean(name: str) -> None:
    # the z-rule through the mean hands each averaged token its share
    model = MEAN_MODELS[name]().double()
    result = relevance_of(model, images_of().double(), input_relevance=True)
    totals = result.input_relevance.sum(dim=(1, 2))
    torch.testing.assert_close(totals, torch.ones_like(totals), rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", sorted(MEAN_MODELS))
@pytest.mark.parametrize(
    "method, options, attention_rule",
    [(AttnLRP, {}, "uniform"), (ConservativeLRP, {"activation_rule": "identity"}, "detached")],
)
def test_gradient_rule_methods_equal_their_rules_patched_into_a_copy_of_the_model(
    name: str, method: type, options: Dict, attention_rule: str
) -> None:
    model = MEAN_MODELS[name]().double()
    images, target = images_of().double(), torch.tensor([2, 2, 4])
    patched = rules_patched_copy(model, attention_rule)
    expected = gradient_x_input(lambda x: patched(x).logits, images, target)
    actual = method(model).attribute(images, target=target, **options)
    assert relative_errors(actual, expected).max() < 1e-10


# --- zero-shot CLIPVisionModelWithProjection ------------------------------------------------
def test_zero_shot_clip_vision_model_with_projection_reads_its_class_token() -> None:
    torch.manual_seed(0)
    config = CLIPVisionConfig(**HF_VISION, projection_dim=16)
    tower = sharpened(CLIPVisionModelWithProjection(config))
    classifier = ZeroShotClassifier(tower, torch.randn(5, 16), logit_scale=100.0)
    images = images_of()
    eager = copy.deepcopy(tower)
    eager.config._attn_implementation = "eager"
    with torch.no_grad():
        attentions = eager(pixel_values=images, output_attentions=True).attentions
    expected = attentions[-1].mean(dim=1)[:, 0]  # the class token's row
    actual = RawAttention(classifier).attribute(images, upsample=False)
    torch.testing.assert_close(actual, on_grid(expected, 1), rtol=1e-5, atol=1e-7)


def test_a_rule_that_multiplies_a_per_example_read_out_as_a_fixed_one_is_refused() -> None:
    class FixedReadOutRule(AttentionAttribution):
        def _token_relevance(self, trace):
            return trace.readout @ trace.attentions[-1].mean(dim=1)  # (N, N, T) for (N, T)

    with pytest.raises(ValueError, match=r"_token_relevance: .*take trace\.read\(matrix\)"):
        FixedReadOutRule(timm_map()).attribute(images_of(), upsample=False)
