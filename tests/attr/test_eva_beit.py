"""timm ``Eva`` (EVA-02: RoPE, SwiGLU, sub-LayerNorms), timm ``Beit`` (relative
position bias, layer scale, q/v biases) and timm ViTs with ``qk_norm`` (with
SwiGLU and sub-LayerNorms), LayerNorm or RmsNorm: the canonical replay is the model, ConservativeLRP
conserves the logit on bias-free copies, ConservativeLRP and AttnLRP equal their
rules patched into copies of timm's own modules, the attention-map methods equal
a recomputation from attention probabilities this test captures itself, Chefer's
relevance pass conserves where it has a rule for every part, and what has no
rule is refused by name."""

import copy
from functools import partial
from typing import Callable, Dict, List, Tuple

import pytest
import torch
from lrp_rules import assert_conserves, gradient_x_input, rules_patched_copy, without_biases
from timm.layers import RmsNorm, SwiGLU, apply_rot_embed_cat
from tiny_models import perturbed, tiny_beit, tiny_eva, tiny_timm
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
from captum_saco.attr._core.relevance import attention_relevance, rotary_relevance
from captum_saco.attr._core.replay import model_forward
from tests.numerics import relative_error, relative_errors

MODELS: Dict[str, Callable[[], nn.Module]] = {
    # eva02_base_patch14_224: separate q/k/v, SwiGLU with a norm before fc2, RoPE, avg pool
    "eva02_base": tiny_eva,
    # eva02_small_patch14_224: fused q/k/v with q/v biases, packed SwiGLU (GluMlp)
    "eva02_small": partial(tiny_eva, qkv_fused=True, scale_mlp=False),
    "eva_token_qk_norm_sub_ln_layer_scale_registers": partial(
        tiny_eva,
        global_pool="token",
        qk_norm=True,
        scale_attn_inner=True,
        init_values=0.1,
        num_reg_tokens=2,
    ),
    "eva_token_without_rope": partial(
        tiny_eva, global_pool="token", use_rot_pos_emb=False, qk_norm=True, init_values=0.1
    ),
    # beit_base_patch16_224: relative position bias, layer scale, mean-pooled head
    "beit": tiny_beit,
    "beit_token_swiglu_sub_ln": partial(
        tiny_beit, global_pool="token", swiglu_mlp=True, scale_mlp=True
    ),
    "eva02_rms_norm": partial(tiny_eva, norm_layer=RmsNorm, qk_norm=True),
    "vit_qk_norm": lambda: perturbed(tiny_timm(qk_norm=True)),
    "vit_rms_norm_qk_norm": lambda: perturbed(tiny_timm(norm_layer=RmsNorm, qk_norm=True)),
    "vit_qk_norm_swiglu_sub_ln_layer_scale": lambda: perturbed(
        tiny_timm(
            qk_norm=True,
            mlp_layer=SwiGLU,
            scale_mlp_norm=True,
            scale_attn_norm=True,
            init_values=0.1,
        )
    ),
}
MAP_METHODS = [RawAttention, AttentionRollout, AttentionGradCAM, GradientWeightedAttention, AttCAT]
CHEFER_METHODS = [TransformerAttribution, PartialLRP, FullLRP]
def images_of(n: int = 3, dtype: torch.dtype = torch.float32) -> Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(3)).to(dtype)


def block0_tokens(model: nn.Module, images: Tensor) -> Tensor:
    """The tokens entering block 0, read with this test's own hook."""
    entering: List[Tensor] = []
    handle = model.blocks[0].register_forward_pre_hook(lambda m, args: entering.append(args[0]))
    try:
        with torch.no_grad():
            model(images)
    finally:
        handle.remove()
    return entering[0]


# --- the canonical replay --------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(MODELS))
def test_canonical_parts_replayed_in_float64_equal_the_models_logits(name: str) -> None:
    model = MODELS[name]().double()
    images = images_of(dtype=torch.float64)
    with torch.no_grad():
        replayed = model_forward(vit_parts(model), block0_tokens(model, images)).logits
        assert relative_error(replayed, model(images)) < 1e-12


def test_the_packed_swiglu_shares_the_models_weights() -> None:
    model = MODELS["eva02_small"]()
    block = vit_parts(model).blocks[0]
    fc1 = model.blocks[0].mlp.fc1
    assert block.fc1.weight.data_ptr() == fc1.weight.data_ptr()  # the gate: first half
    assert block.fc_value.weight.data_ptr() == fc1.weight[fc1.out_features // 2 :].data_ptr()


# --- the gradient-rule methods ------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(MODELS))
def test_conservative_lrp_pixel_relevance_sums_to_the_target_logit_without_biases(
    name: str,
) -> None:
    model = without_biases(MODELS[name]())
    images, target = images_of(), torch.tensor([1, 0, 3])
    assert_conserves(model, images, target)


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize(
    "method, options, attention_rule",
    [(AttnLRP, {}, "uniform"), (ConservativeLRP, {"activation_rule": "identity"}, "detached")],
    ids=["AttnLRP", "ConservativeLRP"],
)
def test_gradient_rule_methods_equal_their_rules_patched_into_a_copy_of_the_model(
    name: str, method: type, options: Dict, attention_rule: str
) -> None:
    model = MODELS[name]().double()
    images, target = images_of(dtype=torch.float64), torch.tensor([2, 2, 4])
    expected = gradient_x_input(rules_patched_copy(model, attention_rule), images, target)
    actual = method(model).attribute(images, target=target, **options)
    assert relative_errors(actual, expected).max() < 1e-10


# --- the attention-map methods ---------------------------------------------------------------
def captured(
    model: nn.Module, images: Tensor, target: Tensor
) -> Tuple[List[Tensor], List[Tensor], List[Tensor], List[Tensor]]:
    """Each block's attention probabilities, its input tokens and the gradients of
    the summed target logits with respect to both, captured on a copy of the model
    with this test's own hooks."""
    model = copy.deepcopy(model)
    attentions: List[Tensor] = []
    inputs: List[Tensor] = []

    def keep(store: List[Tensor], value: Tensor) -> None:
        value.retain_grad()
        store.append(value)

    for block in model.blocks:
        block.attn.fused_attn = False
        block.attn.attn_drop.register_forward_hook(lambda m, a, output: keep(attentions, output))
        block.register_forward_pre_hook(lambda m, args: keep(inputs, args[0]))
    model(images).gather(1, target[:, None]).sum().backward()
    return (
        [a.detach() for a in attentions],
        [a.grad for a in attentions],
        [x.detach() for x in inputs],
        [x.grad for x in inputs],
    )


def readout(model: nn.Module, num_tokens: int) -> Tensor:
    """The head's read-out vector: the class token for ``global_pool="token"``, the
    mean of the tokens after the prefix tokens for ``"avg"``."""
    s = torch.zeros(num_tokens)
    if model.global_pool == "token":
        s[0] = 1
    else:
        s[model.num_prefix_tokens :] = 1 / (num_tokens - model.num_prefix_tokens)
    return s


@pytest.mark.parametrize("name", sorted(MODELS))
def test_attention_map_methods_equal_a_recomputation_from_captured_attention(name: str) -> None:
    model = MODELS[name]()
    images, target = images_of(), torch.tensor([0, 2, 4])
    attentions, gradients, inputs, input_gradients = captured(model, images, target)
    prefix = model.num_prefix_tokens
    s = readout(model, attentions[0].shape[-1])
    eye = torch.eye(s.shape[0])

    rollout = s.expand(images.shape[0], 1, -1)
    for attention in reversed(attentions):
        fused = attention.mean(dim=1) + eye
        rollout = rollout @ (fused / fused.sum(dim=-1, keepdim=True))
    weighted = [(g * a).clamp(min=0).mean(dim=1) for a, g in zip(attentions, gradients)]
    chained = eye.expand(images.shape[0], -1, -1)
    for w in weighted:
        chained = chained + w @ chained
    row, gradient = s @ attentions[-1], s @ gradients[-1]  # (N, heads, T)
    head_weights = gradient[:, :, prefix:].mean(dim=-1, keepdim=True)
    attcat = sum(
        (x * g).sum(dim=-1) * a.mean(dim=(1, 2))
        for x, g, a in zip(inputs, input_gradients, attentions)
    )
    expected = {
        "raw": s @ attentions[-1].mean(dim=1),
        "rollout": rollout[:, 0],
        "generic": s @ chained,
        "last_layer": s @ weighted[-1],
        "gradcam": (head_weights * row).mean(dim=1).clamp(min=0),
        "attcat": attcat,
    }
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
        "attcat": AttCAT(model).attribute(images, target=target, upsample=False),
    }
    for key, value in expected.items():
        grid = value[:, prefix:].reshape(-1, 1, 4, 4)
        torch.testing.assert_close(actual[key], grid, rtol=1e-5, atol=1e-6, msg=key)


# --- Chefer's relevance pass ---------------------------------------------------------------
@pytest.mark.parametrize(
    "name",
    [
        "eva_token_qk_norm_sub_ln_layer_scale_registers",
        "eva_token_without_rope",
        "beit_token_swiglu_sub_ln",
        "vit_qk_norm",
        "vit_rms_norm_qk_norm",
        "vit_qk_norm_swiglu_sub_ln_layer_scale",
    ],
)
def test_chefer_relevance_conserves_the_unit_seed_through_the_new_parts(name: str) -> None:
    """qk norms and sub-LayerNorms pass relevance on (LayerNorms), the relative
    position bias takes none, the gated product halves it between its factors
    (were each factor given all of it, the totals would exceed 1), the rotary
    embedding takes the z-rule."""
    model = MODELS[name]()
    images = images_of()
    result = attention_relevance(
        vit_parts(model), block0_tokens(model, images).double(), input_relevance=True
    )
    with torch.no_grad():
        assert relative_error(result.logits, model(images)) < 1e-5
    totals = result.input_relevance.sum(dim=(1, 2))
    torch.testing.assert_close(totals, torch.ones(3, dtype=totals.dtype), rtol=0, atol=1e-6)


# --- refusals, batches and the model left as found -------------------------------------------
CASES = [
    (name, method)
    for name in sorted(MODELS)
    for method in MAP_METHODS + CHEFER_METHODS + [ConservativeLRP, AttnLRP]
]


@pytest.mark.parametrize("name, method", CASES, ids=lambda c: getattr(c, "__name__", c))
def test_an_image_alone_gets_its_map_in_a_batch_and_the_model_is_left_as_found(
    name: str, method: type, state_of, same_state
) -> None:
    # mean-pooled models included: every method reads the pooled head
    model = MODELS[name]()
    before = state_of(model)
    images = images_of()
    batch = method(model).attribute(images, target=[3, 3, 3], upsample=False)
    alone = method(model).attribute(images[2:], target=3, upsample=False)
    torch.testing.assert_close(alone, batch[2:], rtol=1e-5, atol=1e-7)
    assert torch.isfinite(batch).all()
    same_state(before, state_of(model))


def test_parts_no_rule_is_known_for_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match="shared by all blocks.*RawAttention"):
        ConservativeLRP(tiny_beit(use_shared_rel_pos_bias=True)).attribute(images_of())
    with pytest.raises(ValueError, match="EvaBlockPostNorm"):
        AttnLRP(tiny_eva(use_post_norm=True))
    with pytest.raises(ValueError, match="RotaryEmbeddingMixed"):
        AttnLRP(tiny_eva(rope_type="mixed")).attribute(images_of())
    with pytest.raises(ValueError, match="global_pool='map'"):
        RawAttention(tiny_eva(global_pool="map"))
    shared = RawAttention(tiny_beit(use_shared_rel_pos_bias=True)).attribute(images_of())
    assert torch.isfinite(shared).all()


@pytest.mark.parametrize("half", [False, True], ids=["interleaved", "rotate_half"])
def test_the_rotary_embedding_takes_the_z_rule_as_the_linear_map_it_is(half: bool) -> None:
    model = tiny_eva(global_pool="token", rope_rotate_half=half).double()
    block = vit_parts(model).blocks[0]
    generator = torch.Generator().manual_seed(0)
    queries = torch.randn(2, 2, 17, 12, generator=generator, dtype=torch.float64)
    relevance = torch.randn(2, 2, 17, 12, generator=generator, dtype=torch.float64)
    expected = relevance.clone()  # the class token is not rotated
    rope, basis = model.rope.get_embed(), torch.eye(12, dtype=torch.float64)
    for position in range(16):  # timm's rotation of each patch token, as a matrix
        matrix = apply_rot_embed_cat(basis, rope[position], half=half).T
        x = queries[:, :, 1 + position]
        scale = relevance[:, :, 1 + position] / (x @ matrix.T + 1e-9)
        expected[:, :, 1 + position] = x * (scale @ matrix)
    actual = rotary_relevance(block, queries, relevance)
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-12)
