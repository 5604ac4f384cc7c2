"""The combination rules of the attention methods and their options, checked
against literal per-example computations from attention recomputed by hand."""

from typing import Dict, List

import pytest
import torch
from tiny_models import TINY_FAMILIES, tiny_timm
from torch import Tensor, nn

from captum_saco.attr import (
    AttentionRollout,
    AttentionTrace,
    GradientWeightedAttention,
    RawAttention,
)


def _attentions_by_hand(model: nn.Module, images: Tensor) -> List[Tensor]:
    """Every block's attention (N, heads, T, T) of a timm ViT, recomputed from the
    tokens entering each block."""
    entering: List[Tensor] = []
    handles = [
        block.register_forward_pre_hook(lambda module, args: entering.append(args[0]))
        for block in model.blocks
    ]
    try:
        with torch.no_grad():
            model(images)
    finally:
        for handle in handles:
            handle.remove()
    attentions = []
    for block, tokens in zip(model.blocks, entering):
        x = block.norm1(tokens)
        n, t, d = x.shape
        heads = block.attn.num_heads
        q, k, _ = block.attn.qkv(x).reshape(n, t, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
        attentions.append(((q @ k.transpose(-1, -2)) * (d // heads) ** -0.5).softmax(-1))
    return attentions


def _rollout_literal(
    attentions: List[Tensor], start_layer: int, head_fusion: str, discard_ratio: float
) -> Tensor:
    """Rollout written out example by example, block by block; the discard rule is
    jacobgil/vit-explain's (the lowest entries but entry (0, 0))."""
    fuse = {
        "mean": lambda a: a.mean(0),
        "max": lambda a: a.max(0).values,
        "min": lambda a: a.min(0).values,
    }
    rows = []
    for example in range(attentions[0].shape[0]):
        joint = None
        for attention in attentions[start_layer:]:
            fused = fuse[head_fusion](attention[example]).clone()
            values = fused.flatten().tolist()
            ascending = sorted(range(len(values)), key=values.__getitem__)
            lowest = [i for i in ascending[: int(len(values) * discard_ratio)] if i != 0]
            fused.view(-1)[lowest] = 0
            fused = fused + torch.eye(fused.shape[0])
            fused = fused / fused.sum(dim=1, keepdim=True)
            joint = fused if joint is None else fused @ joint
        rows.append(joint[0, 1:])
    return torch.stack(rows)


@pytest.fixture
def vit() -> nn.Module:
    """A tiny timm ViT with four blocks and three heads."""
    return tiny_timm(depth=4, num_heads=3)


@pytest.fixture
def images() -> Tensor:
    torch.manual_seed(1)
    return torch.rand(4, 3, 32, 32)


@pytest.mark.parametrize("head_fusion", ["mean", "max", "min"])
@pytest.mark.parametrize("start_layer", [0, 2])
@pytest.mark.parametrize("discard_ratio", [0.0, 0.9])
def test_rollout_options_follow_the_rule(
    vit: nn.Module,
    images: Tensor,
    head_fusion: str,
    start_layer: int,
    discard_ratio: float,
) -> None:
    maps = AttentionRollout(vit).attribute(
        images,
        upsample=False,
        head_fusion=head_fusion,
        start_layer=start_layer,
        discard_ratio=discard_ratio,
    )
    expected = _rollout_literal(
        _attentions_by_hand(vit, images), start_layer, head_fusion, discard_ratio
    )
    torch.testing.assert_close(maps.flatten(1), expected, rtol=1e-4, atol=1e-6)


def test_rollout_never_discards_the_class_token_attention_to_itself() -> None:
    # one block, one head; entry (0, 0) is the lowest of the 4 = int(9 * 0.5) lowest
    attention = torch.tensor([[0.01, 0.44, 0.55], [0.2, 0.35, 0.45], [0.1, 0.62, 0.28]])
    trace = AttentionTrace(
        attentions=[attention[None, None]],
        gradients=None,
        tokens=torch.zeros(1, 3, 2),
        scores=torch.zeros(1, 2),
        classes=torch.zeros(1, dtype=torch.long),
        num_prefix_tokens=1,
        grid=(1, 2),
        readout=torch.tensor([1.0, 0.0, 0.0]),
    )
    row = AttentionRollout(tiny_timm())._token_relevance(
        trace, start_layer=0, head_fusion="mean", discard_ratio=0.5
    )
    # kept: (0, 0); zeroed: (2, 0), (1, 0), (2, 2); row 0 of rownorm(A + I)
    torch.testing.assert_close(row, torch.tensor([[1.01, 0.44, 0.55]]) / 2.0)


def test_head_fusions_agree_on_a_single_head_model(images: Tensor) -> None:
    model = tiny_timm(depth=3, num_heads=1)
    method = AttentionRollout(model)
    mean = method.attribute(images, upsample=False, head_fusion="mean")
    for fusion in ("max", "min"):
        fused = method.attribute(images, upsample=False, head_fusion=fusion)
        torch.testing.assert_close(fused, mean)


def test_raw_attention_is_the_head_mean_of_the_last_block_in_patch_order(
    vit: nn.Module, images: Tensor
) -> None:
    expected = _attentions_by_hand(vit, images)[-1].mean(1)[:, 0, 1:]
    maps = RawAttention(vit).attribute(images, upsample=False)
    torch.testing.assert_close(maps.flatten(1), expected)


@pytest.mark.parametrize("family", sorted(TINY_FAMILIES))
@pytest.mark.parametrize("aggregate_layers", [True, False])
def test_gradient_weighted_attention_is_non_negative(
    family: str, images: Tensor, aggregate_layers: bool
) -> None:
    maps = GradientWeightedAttention(TINY_FAMILIES[family]()).attribute(
        images, target=0, aggregate_layers=aggregate_layers
    )
    assert (maps >= 0).all()


def test_gradient_weighted_attention_of_each_example_ignores_the_rest_of_the_batch(
    vit: nn.Module, images: Tensor
) -> None:
    method = GradientWeightedAttention(vit)
    batched = method.attribute(images, target=[1, 2, 3, 4], upsample=False)
    single = method.attribute(images[2:3], target=3, upsample=False)
    torch.testing.assert_close(batched[2:3], single, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize(
    "options, error, message",
    [
        ({"start_layer": 4}, ValueError, r"start_layer: expected a block index in \[0, 4\)"),
        ({"start_layer": -1}, ValueError, "start_layer"),
        ({"start_layer": 1.0}, TypeError, "start_layer: expected an int"),
        ({"head_fusion": "median"}, ValueError, "head_fusion: expected one of"),
        ({"discard_ratio": 1.0}, ValueError, r"discard_ratio: expected a value in \[0, 1\)"),
        ({"discard_ratio": float("nan")}, ValueError, r"discard_ratio: expected a value in"),
        ({"discard_ratio": None}, TypeError, "discard_ratio: expected a number, got None"),
        ({"discard_ratio": "0.5"}, TypeError, "discard_ratio: expected a number, got '0.5'"),
    ],
)
def test_rollout_refuses_bad_options_before_running_the_model(
    vit: nn.Module, images: Tensor, options: Dict, error: type, message: str
) -> None:
    calls = []

    def forward(x: Tensor) -> Tensor:
        calls.append(1)
        return vit(x)

    with pytest.raises(error, match=message):
        AttentionRollout(vit, forward).attribute(images, **options)
    assert calls == []


def test_gradient_weighted_attention_refuses_a_non_bool_aggregate_layers(
    vit: nn.Module, images: Tensor
) -> None:
    with pytest.raises(TypeError, match="aggregate_layers: expected True or False"):
        GradientWeightedAttention(vit).attribute(images, aggregate_layers="no")
