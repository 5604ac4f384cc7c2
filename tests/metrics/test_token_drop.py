"""perturbation="token_drop": the removed patches' tokens leave the sequence,
checked against a shortened-sequence forward pass written out here."""

from typing import List

import pytest
import torch
from torch import Tensor

from captum_saco.metrics import deletion_curve, insertion_curve, saco, score_attributions


def shortened_forward(model, image: Tensor, kept: List[int]) -> Tensor:
    """timm ViT logits of one image with only the patches ``kept`` in the sequence."""
    x = model.patch_embed(image.unsqueeze(0))
    x = model.norm_pre(model._pos_embed(x))
    index = list(range(model.num_prefix_tokens)) + [model.num_prefix_tokens + k for k in kept]
    x = x[:, index]
    for block in model.blocks:
        x = block(x)
    return model.forward_head(model.norm(x))[0]


def test_token_drop_deletion_matches_a_forward_without_the_removed_tokens(tiny_vit):
    torch.manual_seed(0)
    images = torch.randn(3, 1, 8, 8)
    grid = torch.rand(3, 1, 2, 2)  # one value per patch of the 2 x 2 grid
    curve = deletion_curve(
        tiny_vit,
        images,
        grid,
        target=1,
        fractions=(0.25, 0.5, 0.75, 1.0),
        perturbation="token_drop",
    )
    with torch.no_grad():
        for n in range(3):
            order = grid[n].flatten().argsort(descending=True, stable=True).tolist()
            expected = [torch.softmax(tiny_vit(images[n : n + 1])[0], 0)[1]]
            for m in (1, 2, 3, 4):
                kept = sorted(order[m:])
                expected.append(torch.softmax(shortened_forward(tiny_vit, images[n], kept), 0)[1])
            assert torch.allclose(curve.probabilities[n], torch.stack(expected), atol=1e-6)


def test_token_drop_insertion_starts_from_the_prefix_tokens_alone(tiny_vit):
    torch.manual_seed(1)
    images, grid = torch.randn(2, 1, 8, 8), torch.rand(2, 2, 2)
    curve = insertion_curve(tiny_vit, images, grid, target=0, perturbation="token_drop")
    with torch.no_grad():
        for n in range(2):
            alone = torch.softmax(shortened_forward(tiny_vit, images[n], []), 0)[0]
            assert curve.probabilities[n, 0].item() == pytest.approx(alone.item(), abs=1e-6)


def test_an_input_shaped_map_is_summed_per_patch(tiny_vit):
    torch.manual_seed(2)
    images = torch.randn(2, 1, 8, 8)
    pixels = torch.rand(2, 1, 8, 8)
    per_patch = pixels.unfold(2, 4, 4).unfold(3, 4, 4).sum(dim=(-1, -2))  # (2, 1, 2, 2)
    by_pixels = saco(tiny_vit, images, pixels, n_groups=2, perturbation="token_drop")
    by_grid = saco(tiny_vit, images, per_patch, n_groups=2, perturbation="token_drop")
    assert torch.equal(by_pixels, by_grid)


def test_token_drop_leaves_no_hook_on_the_model(tiny_vit):
    deletion_curve(
        tiny_vit, torch.randn(2, 1, 8, 8), torch.rand(2, 1, 2, 2), perturbation="token_drop"
    )
    assert not tiny_vit.blocks[0]._forward_pre_hooks


def test_token_drop_refuses_a_forward_function_that_is_not_the_model(tiny_vit):
    with pytest.raises(TypeError, match="forward_func must be the ViT model itself"):
        deletion_curve(
            lambda x: tiny_vit(x),
            torch.randn(2, 1, 8, 8),
            torch.rand(2, 1, 2, 2),
            perturbation="token_drop",
        )


def test_token_drop_refuses_a_model_without_tokens(cnn):
    with pytest.raises(ValueError, match="perturbation='token_drop'"):
        deletion_curve(cnn, torch.randn(2, 3, 8, 8), torch.rand(2, 8, 8), perturbation="token_drop")


def test_token_drop_refuses_a_feature_mask(tiny_vit):
    with pytest.raises(ValueError, match="feature_mask"):
        deletion_curve(
            tiny_vit,
            torch.randn(2, 1, 8, 8),
            torch.rand(2, 1, 2, 2),
            feature_mask=torch.zeros(1, 1, 8, 8, dtype=torch.long),
            perturbation="token_drop",
        )


def test_score_attributions_with_token_drop_gives_the_single_metrics(tiny_vit):
    torch.manual_seed(3)
    images = torch.randn(3, 1, 8, 8)
    maps = {"grid": torch.rand(3, 1, 2, 2), "pixels": torch.rand(3, 1, 8, 8)}
    scores = score_attributions(
        tiny_vit, images, maps, metrics=("saco", "aopc"), n_groups=4, perturbation="token_drop"
    )
    for method, a in maps.items():
        expected = saco(tiny_vit, images, a, n_groups=4, perturbation="token_drop")
        assert torch.allclose(scores[method]["saco"], expected, equal_nan=True)


def test_token_drop_on_a_hugging_face_vit_matches_its_shortened_forward(tmp_path):
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    config = ViTConfig(
        image_size=8,
        patch_size=4,
        num_channels=1,
        hidden_size=8,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=16,
        num_labels=3,
    )
    ViTForImageClassification(config).save_pretrained(tmp_path)
    model = ViTForImageClassification.from_pretrained(tmp_path).eval()
    images, grid = torch.randn(2, 1, 8, 8), torch.rand(2, 1, 2, 2)
    curve = deletion_curve(
        model, images, grid, target=2, fractions=(0.25, 0.5), perturbation="token_drop"
    )
    with torch.no_grad():
        for n in range(2):
            order = grid[n].flatten().argsort(descending=True, stable=True).tolist()
            for k, m in ((1, 1), (2, 2)):
                hidden = model.vit.embeddings(images[n : n + 1])
                hidden = hidden[:, [0] + [1 + i for i in sorted(order[m:])]]
                for layer in model.vit.layers:
                    hidden = layer(hidden)
                logits = model.classifier(model.vit.layernorm(hidden)[:, 0])
                expected = torch.softmax(logits, -1)[0, 2].item()
                assert curve.probabilities[n, k].item() == pytest.approx(expected, abs=1e-6)
