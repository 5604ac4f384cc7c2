"""AttentionGradCAM and AttCAT: the original authors' numbers (float32 and float64),
every model family, batches, prefix tokens and the rules written out by hand."""

from typing import Dict

import pytest
import torch
from tiny_models import TINY_FAMILIES, tiny_hf_deit, tiny_timm, tiny_timm_distilled
from torch import Tensor, nn
from transformers import DeiTForImageClassificationWithTeacher

from captum_saco.attr import AttCAT, AttentionGradCAM, AttentionTrace
from tests.numerics import relative_errors

TARGETS = ["argmax", "fixed"]


class _KeepRow(AttCAT):
    """AttCAT that keeps the class token's row with the class-token entry."""

    def _token_relevance(self, trace: AttentionTrace) -> Tensor:
        self.row = super()._token_relevance(trace)
        return self.row


# --- the original authors' numbers ------------------------------------------------------
@pytest.mark.parametrize("target_kind", TARGETS)
def test_attcat_equals_the_original_in_float32(
    reference: Dict, more_reference: Dict, reference_model: nn.Module, target_kind: str
) -> None:
    # float32 and float64 runs of the original differ by up to 4.7e-5 of the maximum
    method = _KeepRow(reference_model)
    maps = method.attribute(
        reference["inputs"], target=reference["targets"][target_kind], upsample=False
    )
    recorded = more_reference["attributions"][target_kind]
    assert maps.shape == (4, 1, 6, 6)
    assert (relative_errors(maps, recorded["attcat"]) < 1e-4).all()
    assert (relative_errors(method.row, recorded["attcat_all_tokens"]) < 1e-4).all()


@pytest.mark.parametrize("family", ["timm", "torchvision"])
@pytest.mark.parametrize("target_kind", TARGETS)
def test_attcat_in_float64_is_the_original_float64_computation(
    reference: Dict, more_reference: Dict, reference_models: Dict, family: str, target_kind: str
) -> None:
    # No float64 AttCAT key is stored, but the recorded float32-vs-float64 difference
    # of each image is: a float64 run must reproduce it to rounding.
    model = reference_models[family].double()
    try:
        maps = AttCAT(model).attribute(
            reference["inputs"].double(), target=reference["targets"][target_kind], upsample=False
        )
    finally:
        model.float()
    assert maps.dtype == torch.float64
    recorded = more_reference["attributions"][target_kind]["attcat"]
    difference = relative_errors(recorded, maps)
    expected = more_reference["float32_vs_float64"][target_kind]["attcat"].double()
    torch.testing.assert_close(difference, expected, rtol=0, atol=1e-9)


@pytest.mark.parametrize("family", ["timm", "torchvision"])
@pytest.mark.parametrize("target_kind", TARGETS)
def test_attention_gradcam_in_float64_equals_the_original_float64_run(
    reference: Dict, more_reference: Dict, reference_models: Dict, family: str, target_kind: str
) -> None:
    model = reference_models[family].double()
    try:
        maps = AttentionGradCAM(model).attribute(
            reference["inputs"].double(), target=reference["targets"][target_kind], upsample=False
        )
    finally:
        model.float()
    expected = more_reference["attributions"][target_kind]["attn_gradcam_float64"]
    assert (relative_errors(maps, expected) < 1e-10).all()


def test_hugging_face_float64_runs_are_as_close_as_its_float32_softmax_allows(
    reference: Dict, more_reference: Dict, reference_models: Dict
) -> None:
    # Hugging Face's eager attention computes the softmax in float32 whatever the
    # model's dtype, so a float64 run is float32-accurate in the attention.
    model = reference_models["huggingface"].double()
    try:
        maps = AttentionGradCAM(model).attribute(
            reference["inputs"].double(), target=reference["targets"]["fixed"], upsample=False
        )
    finally:
        model.float()
    expected = more_reference["attributions"]["fixed"]["attn_gradcam_float64"]
    assert (relative_errors(maps, expected) < 1e-4).all()


# --- the rules written out --------------------------------------------------------------
def _last_block_by_hand(model: nn.Module, images: Tensor, target: int):
    """The last block's attention of a timm ViT, recomputed from the tokens entering
    it, and its gradient, one example at a time."""
    block = model.blocks[-1]
    entering = []
    handle = block.register_forward_pre_hook(lambda module, args: entering.append(args[0]))
    try:
        with torch.no_grad():
            model(images)
    finally:
        handle.remove()
    tokens = entering[0].detach()
    x = block.norm1(tokens)
    n, t, d = x.shape
    heads = block.attn.num_heads
    q, k, v = block.attn.qkv(x).reshape(n, t, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
    attention = ((q @ k.transpose(-1, -2)) * (d // heads) ** -0.5).softmax(-1)
    attention.retain_grad()
    mixed = block.attn.proj((attention @ v).transpose(1, 2).reshape(n, t, d))
    out = tokens + mixed
    out = out + block.mlp(block.norm2(out))
    model.head(model.norm(out)[:, 0])[:, target].sum().backward()
    return attention.detach(), attention.grad


def test_attention_gradcam_weighs_each_head_by_its_mean_class_row_gradient() -> None:
    model = tiny_timm(depth=3, num_heads=3)
    images = torch.rand(3, 3, 32, 32)
    attention, gradient = _last_block_by_hand(model, images, target=2)
    expected = []
    for example in range(3):
        heads = [
            gradient[example, h, 0, 1:].mean() * attention[example, h, 0, 1:] for h in range(3)
        ]
        expected.append(torch.stack(heads).mean(0).clamp(min=0))
    maps = AttentionGradCAM(model).attribute(images, target=2, upsample=False)
    torch.testing.assert_close(maps.flatten(1), torch.stack(expected))


def test_attcat_sums_over_blocks_token_gradient_times_input_times_mean_attention() -> None:
    model = tiny_timm(depth=3, num_heads=3)
    images = torch.rand(2, 3, 32, 32)
    entering = []
    handles = [
        block.register_forward_pre_hook(lambda module, args: entering.append(args[0]))
        for block in model.blocks
    ]
    attentions = []
    handles += [
        block.attn.attn_drop.register_forward_hook(lambda m, args, out: attentions.append(out))
        for block in model.blocks
    ]
    fused = [block.attn.fused_attn for block in model.blocks]
    try:
        for block in model.blocks:
            block.attn.fused_attn = False
        logits = model(images)
    finally:
        for block, setting in zip(model.blocks, fused):
            block.attn.fused_attn = setting
        for handle in handles:
            handle.remove()
    gradients = torch.autograd.grad(logits[:, 1].sum(), entering)
    expected = sum(
        (h * g).sum(-1) * a.mean(dim=(1, 2)) for h, g, a in zip(entering, gradients, attentions)
    )
    maps = AttCAT(model).attribute(images, target=1, upsample=False)
    torch.testing.assert_close(maps.flatten(1), expected[:, 1:].detach())


# --- families, prefix tokens, batches ----------------------------------------------------
MODELS = {
    **TINY_FAMILIES,
    "timm_distilled": tiny_timm_distilled,
    "hf_deit_with_teacher": lambda: tiny_hf_deit(DeiTForImageClassificationWithTeacher),
}


@pytest.mark.parametrize("cls", [AttentionGradCAM, AttCAT])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_batched_maps_equal_the_maps_image_by_image_under_no_grad(cls: type, name: str) -> None:
    model = MODELS[name]()
    torch.manual_seed(3)
    images = torch.rand(3, 3, 32, 32)
    target = [4, 0, 2]
    method = cls(model)
    with torch.no_grad():
        batched = method.attribute(images, target=target, upsample=False)
        single = [
            method.attribute(images[i : i + 1], target=target[i], upsample=False) for i in range(3)
        ]
    assert batched.shape == (3, 1, 4, 4) and not batched.requires_grad
    torch.testing.assert_close(batched, torch.cat(single), rtol=1e-5, atol=1e-7)


def test_attention_gradcam_leaves_the_prefix_tokens_out_of_the_head_weights() -> None:
    model = tiny_timm_distilled()
    images = torch.rand(2, 3, 32, 32)

    class KeepTrace(AttentionGradCAM):
        def _token_relevance(self, trace: AttentionTrace) -> Tensor:
            self.trace = trace
            return super()._token_relevance(trace)

    method = KeepTrace(model)
    maps = method.attribute(images, upsample=False)
    attention = method.trace.attentions[-1][:, :, 0]
    weights = method.trace.gradients[-1][:, :, 0, 2:].mean(-1, keepdim=True)
    expected = (weights * attention).mean(1).clamp(min=0)[:, 2:]
    torch.testing.assert_close(maps.flatten(1), expected)
