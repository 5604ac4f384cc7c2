"""SaCo accepts every attribution and input form Captum users have and rejects bad input
clearly."""

import warnings
from typing import List, Tuple

import pytest
import torch
import torch.nn.functional as F
from captum.attr import IntegratedGradients, LayerGradCam, Occlusion, Saliency
from torch import Tensor, nn

from captum_saco.metrics import aopc, saco


@pytest.fixture
def attributions() -> Tensor:
    torch.manual_seed(10)
    return torch.randn(4, 3, 8, 8)


# --- attribution shapes -------------------------------------------------------


def test_input_shaped_attributions_are_summed_over_channels(cnn, images, attributions):
    pixel_map = attributions.sum(1)
    reference = saco(cnn, images, pixel_map)
    assert torch.equal(saco(cnn, images, attributions), reference)
    assert torch.equal(saco(cnn, images, pixel_map.unsqueeze(1)), reference)


def test_smaller_grids_are_upsampled_bilinearly_without_aligned_corners(cnn, images):
    torch.manual_seed(11)
    grid = torch.randn(4, 1, 2, 2)
    upsampled = F.interpolate(grid, size=(8, 8), mode="bilinear", align_corners=False)
    reference = saco(cnn, images, upsampled[:, 0])
    assert torch.equal(saco(cnn, images, grid), reference)
    assert torch.equal(saco(cnn, images, grid[:, 0]), reference)
    layer_grid = torch.randn(4, 6, 4, 4)  # a layer attribution with its own channels
    summed = F.interpolate(
        layer_grid.sum(1, keepdim=True), size=(8, 8), mode="bilinear", align_corners=False
    )
    assert torch.allclose(saco(cnn, images, layer_grid), saco(cnn, images, summed[:, 0]))


def test_flat_features_are_ranked_one_by_one():
    torch.manual_seed(12)
    mlp = nn.Sequential(nn.Linear(12, 8), nn.Tanh(), nn.Linear(8, 3)).eval()
    x = torch.randn(5, 12)
    result = saco(mlp, x, torch.randn(5, 12), n_groups=4)
    assert result.shape == (5,)
    assert bool(torch.isfinite(result).all())


def test_token_inputs_are_grouped_over_tokens():
    torch.manual_seed(13)
    tokens, dim = 6, 4
    head = nn.Linear(tokens * dim, 3)

    def on_tokens(x: Tensor) -> Tensor:  # (N, T, D)
        return head(x.flatten(1))

    x = torch.randn(3, tokens, dim)
    attributions = torch.randn(3, tokens, dim)
    result = saco(on_tokens, x, attributions, baselines=0.0, n_groups=3)
    assert torch.equal(saco(on_tokens, x, attributions.sum(2), baselines=0.0, n_groups=3), result)
    # The same features described as regions of the flattened input.
    token_of_element = torch.arange(tokens).repeat_interleave(dim)[None]
    flat = saco(
        head,
        x.flatten(1),
        attributions.flatten(1),
        baselines=0.0,
        n_groups=3,
        feature_mask=token_of_element,
    )
    assert torch.allclose(flat, result)


def test_tuple_inputs_share_one_ranking_over_all_features():
    torch.manual_seed(14)
    head = nn.Linear(10, 4)

    def two_inputs(a: Tensor, b: Tensor) -> Tensor:
        return head(torch.cat([a, b], dim=1))

    a, b = torch.randn(3, 4), torch.randn(3, 6)
    attr_a, attr_b = torch.randn(3, 4), torch.randn(3, 6)
    result = saco(two_inputs, (a, b), (attr_a, attr_b), baselines=(0.0, 0.0), n_groups=5)
    joined = saco(
        head, torch.cat([a, b], 1), torch.cat([attr_a, attr_b], 1), baselines=0.0, n_groups=5
    )
    assert torch.allclose(result, joined)


def test_a_one_dimensional_input_is_one_feature_per_example_like_an_n_by_1_input(cnn, images):
    def image_and_scalar(x: Tensor, scalar: Tensor) -> Tensor:
        return cnn(x) + scalar.reshape(-1, 1) * torch.arange(5.0)

    torch.manual_seed(16)
    scalar, maps, scalar_map = torch.randn(4), torch.rand(4, 8, 8), torch.rand(4)
    for metric in (saco, aopc):
        as_vector = metric(image_and_scalar, (images, scalar), (maps, scalar_map))
        as_column = metric(image_and_scalar, (images, scalar[:, None]), (maps, scalar_map[:, None]))
        torch.testing.assert_close(as_vector, as_column, rtol=0, atol=0)


def test_tuple_inputs_of_different_kinds_with_per_input_baselines(cnn, images, attributions):
    def image_and_bias(x: Tensor, bias: Tensor) -> Tensor:
        return cnn(x) + bias

    bias = torch.randn(4, 5)
    result = saco(
        image_and_bias,
        (images, bias),
        (attributions, torch.zeros(4, 5)),
        baselines=(None, 0.0),
    )
    assert result.shape == (4,)
    assert bool(torch.isfinite(result).all())


def test_feature_mask_regions_behave_like_pixels_of_a_coarser_image(cnn):
    # Removing a 2x2 block of an image that is constant on blocks is removing
    # one pixel of the 4x4 image it was upsampled from.
    def upsample(z: Tensor) -> Tensor:
        return F.interpolate(z, scale_factor=2, mode="nearest")

    torch.manual_seed(15)
    small, small_attr = torch.randn(3, 3, 4, 4), torch.randn(3, 4, 4)
    coarse = saco(lambda z: cnn(upsample(z)), small, small_attr, baselines=0.0, n_groups=5)
    block_ids = 10 * torch.arange(16).reshape(1, 1, 4, 4) + 7  # any integers, ordered
    fine = saco(
        cnn,
        upsample(small),
        upsample(small_attr[:, None])[:, 0] / 4,
        baselines=0.0,
        n_groups=5,
        feature_mask=upsample(block_ids.float()).long(),
    )
    assert torch.allclose(fine, coarse, atol=1e-6)


def test_feature_mask_sums_salience_per_region(cnn, images, attributions):
    halves = torch.zeros(1, 1, 8, 8, dtype=torch.long)
    halves[..., 4:] = 1
    quarters = halves + 2 * (torch.arange(8)[:, None] >= 4).long()
    details = saco(
        cnn, images, attributions, feature_mask=quarters, n_groups=4, return_details=True
    )
    region_salience = torch.stack(
        [attributions.sum(1)[:, quarters[0, 0] == q].sum(1) for q in range(4)], dim=1
    )
    assert torch.allclose(details.group_salience, region_salience.sort(1, descending=True).values)
    assert details.group_size.tolist() == [[1, 1, 1, 1]] * 4


def test_identity_feature_mask_changes_nothing(cnn, images, attributions):
    pixels = torch.arange(64).reshape(1, 1, 8, 8)
    assert torch.equal(
        saco(cnn, images, attributions, feature_mask=pixels), saco(cnn, images, attributions)
    )


def block_regions(block_shapes: List[Tuple[int, int]]) -> Tensor:
    """Per-example ``(N, 1, 8, 8)`` superpixels: example ``n`` is tiled by ``block_shapes[n]``
    blocks, ids ``0..F_n-1`` in row-major block order."""
    rows, cols = torch.arange(8)[:, None], torch.arange(8)[None, :]
    return torch.stack([((rows // h) * (8 // w) + cols // w)[None] for h, w in block_shapes])


def test_per_example_superpixels_score_each_example_as_if_alone(cnn, images, attributions):
    masks = block_regions([(2, 2), (4, 2), (4, 4), (1, 8)])  # 16, 8, 4 and 8 regions
    details = saco(
        cnn,
        images,
        attributions,
        feature_mask=masks,
        n_groups=4,
        max_examples_per_batch=1,
        return_details=True,
    )
    assert details.group_size.tolist() == [[4] * 4, [2] * 4, [1] * 4, [2] * 4]
    for i in range(4):
        alone = saco(
            cnn,
            images[i : i + 1],
            attributions[i : i + 1],
            feature_mask=masks[i : i + 1],
            n_groups=4,
            max_examples_per_batch=1,
            return_details=True,
        )
        assert torch.equal(details.coefficient[i : i + 1], alone.coefficient)
        assert torch.equal(details.group_salience[i : i + 1], alone.group_salience)
        assert torch.equal(details.probability_drop[i : i + 1], alone.probability_drop)


def test_example_with_fewer_regions_than_groups_gives_nan_and_one_warning(
    cnn, images, attributions
):
    masks = block_regions([(2, 2), (8, 4), (4, 4), (1, 8)])  # 16, 2, 4 and 8 regions
    with pytest.warns(UserWarning, match="undefined for 1 of 4") as record:
        result = saco(
            cnn, images, attributions, feature_mask=masks, n_groups=4, max_examples_per_batch=1
        )
    assert len([w for w in record if "saco" in str(w.message)]) == 1
    assert "fewer features than n_groups" in str(record[0].message)
    assert torch.isnan(result[1])
    for i in [0, 2, 3]:
        alone = saco(
            cnn,
            images[i : i + 1],
            attributions[i : i + 1],
            feature_mask=masks[i : i + 1],
            n_groups=4,
            max_examples_per_batch=1,
        )
        assert torch.equal(result[i : i + 1], alone)


def test_n_groups_above_the_regions_of_every_example_is_rejected(cnn, images, attributions):
    masks = block_regions([(2, 2), (8, 4), (4, 4), (1, 8)])  # at most 16 regions
    with pytest.raises(ValueError, match=r"n_groups.*\(16\), got 17"):
        saco(cnn, images, attributions, feature_mask=masks, n_groups=17)


# --- real Captum attributions -------------------------------------------------


@pytest.mark.parametrize(
    "method", ["integrated_gradients", "saliency", "layer_grad_cam", "occlusion"]
)
def test_real_captum_attributions_of_a_small_cnn(cnn, images, method):
    target = 2
    if method == "integrated_gradients":
        attributions = IntegratedGradients(cnn).attribute(images, target=target, n_steps=8)
    elif method == "saliency":
        attributions = Saliency(cnn).attribute(images.clone().requires_grad_(), target=target)
    elif method == "layer_grad_cam":
        attributions = LayerGradCam(cnn, cnn[3]).attribute(images, target=target)
        assert attributions.shape == (4, 1, 4, 4)  # a grid smaller than the image
    else:
        attributions = Occlusion(cnn).attribute(
            images, target=target, sliding_window_shapes=(3, 2, 2), strides=(3, 2, 2)
        )
    result = saco(cnn, images, attributions, target=target)
    assert result.shape == (4,)
    assert bool(((result >= -1) & (result <= 1)).all())


# --- undefined coefficients ---------------------------------------------------


def test_constant_map_gives_nan_and_one_warning_leaving_others_unaffected(
    cnn, images, attributions
):
    damaged = attributions.clone()
    damaged[1] = 0.5
    with pytest.warns(UserWarning, match="undefined for 1 of 4") as record:
        result = saco(cnn, images, damaged)
    assert len([w for w in record if "saco" in str(w.message)]) == 1
    assert torch.isnan(result[1])
    reference = saco(cnn, images, attributions)
    keep = [0, 2, 3]
    assert torch.equal(result[keep], reference[keep])


def test_channel_sums_that_are_constant_count_as_a_constant_map(cnn, images):
    attributions = torch.zeros(4, 3, 8, 8)
    attributions[:, 0] = torch.randn(4, 8, 8)
    attributions[:, 1] = -attributions[:, 0]
    with pytest.warns(UserWarning, match="undefined for 4 of 4"):
        assert bool(torch.isnan(saco(cnn, images, attributions)).all())


def test_equal_group_saliences_give_nan(linear_logit):
    # Saliences 0, -1, -1 in groups {0, 1} and {2}: both sum to -1, so sum |w| = 0.
    model = linear_logit(torch.tensor([1.0, 2.0, 3.0]))
    with pytest.warns(UserWarning, match="undefined"):
        result = saco(model, torch.ones(1, 3), torch.tensor([[0.0, -1.0, -1.0]]), n_groups=2)
    assert torch.isnan(result).all()


def test_defined_results_raise_no_warning(cnn, images, attributions):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        saco(cnn, images, attributions)


# --- errors -------------------------------------------------------------------


def test_unmatched_attribution_shape_names_attributions_and_both_shapes(cnn, images):
    with pytest.raises(ValueError, match=r"attributions.*\(4, 8, 9\).*\(4, 3, 8, 8\)"):
        saco(cnn, images, torch.rand(4, 8, 9))
    with pytest.raises(ValueError, match=r"attributions.*\(4, 5, 8, 8\)"):
        saco(cnn, images, torch.rand(4, 5, 8, 8))
    with pytest.raises(ValueError, match=r"attributions.*\(4, 16, 16\)"):
        saco(cnn, images, torch.rand(4, 16, 16))
    with pytest.raises(ValueError, match=r"attributions.*\(3, 8, 8\)"):
        saco(cnn, images, torch.rand(3, 8, 8))
    with pytest.raises(ValueError, match="one attribution per input"):
        saco(cnn, images, (torch.rand(4, 8, 8), torch.rand(4, 8, 8)))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_an_example_with_non_finite_attributions_is_nan_and_the_others_are_scored(cnn, images, bad):
    attributions = torch.rand(4, 8, 8, generator=torch.Generator().manual_seed(3))
    broken = attributions.clone()
    broken[2, 3, 3] = bad
    kept = [0, 1, 3]
    for metric, name in ((saco, "saco"), (aopc, "deletion_curve")):
        expected = metric(cnn, images, attributions)
        with pytest.warns(
            UserWarning,
            match=rf"{name}: the attributions of 1 of 4 examples \(indices \[2\]\) hold NaN",
        ):
            result = metric(cnn, images, broken)
        assert bool(torch.isnan(result[2]))
        torch.testing.assert_close(result[kept], expected[kept], rtol=0, atol=1e-6)


@pytest.mark.parametrize("n_groups", [1, 0, 65, 2.5])
def test_n_groups_outside_two_to_the_number_of_features_is_rejected(cnn, images, n_groups):
    with pytest.raises(ValueError, match=r"n_groups.*64"):
        saco(cnn, images, torch.rand(4, 8, 8), n_groups=n_groups)


def test_n_groups_may_equal_the_number_of_features(cnn, images):
    assert saco(cnn, images, torch.rand(4, 8, 8), n_groups=64).shape == (4,)


@pytest.mark.parametrize("target", [5, -1, [0, 1, 2, 7], torch.tensor([0, 9, 0, 0])])
def test_target_out_of_range_is_rejected(cnn, images, target):
    with pytest.raises(ValueError, match=r"target.*\[0, 5\)"):
        saco(cnn, images, torch.rand(4, 8, 8), target=target)


@pytest.mark.parametrize(
    "baseline",
    [
        torch.zeros(4, 3, 8, 7),
        torch.zeros(2, 3, 8, 8),
        torch.zeros(5, 1, 1),
        torch.zeros(1, 1, 4, 3, 8, 8),
    ],
)
def test_baseline_of_the_wrong_shape_is_rejected(cnn, images, baseline):
    with pytest.raises(ValueError, match=r"baselines.*\(4, 3, 8, 8\)"):
        saco(cnn, images, torch.rand(4, 8, 8), baselines=baseline)


def test_integer_inputs_need_an_explicit_baseline():
    def embed(ids: Tensor) -> Tensor:
        return torch.nn.functional.one_hot(ids, 7).float().sum(1)

    ids = torch.tensor([[1, 2, 3, 4], [5, 6, 1, 2]])
    with pytest.raises(ValueError, match="baselines.*floating-point"):
        saco(embed, ids, torch.rand(2, 4), n_groups=2)
    assert saco(embed, ids, torch.rand(2, 4), baselines=0, n_groups=2).shape == (2,)


def test_baseline_of_the_wrong_type_is_rejected(cnn, images):
    with pytest.raises(TypeError, match="baselines"):
        saco(cnn, images, torch.rand(4, 8, 8), baselines="zero")


def test_feature_mask_errors_name_the_mask(cnn, images):
    with pytest.raises(TypeError, match=r"feature_mask.*integer"):
        saco(cnn, images, torch.rand(4, 8, 8), feature_mask=torch.zeros(1, 1, 8, 8))
    by_channel = torch.arange(3 * 64).reshape(1, 3, 8, 8)
    with pytest.raises(ValueError, match=r"feature_mask.*whole pixels"):
        saco(cnn, images, torch.rand(4, 8, 8), feature_mask=by_channel)
    with pytest.raises(ValueError, match=r"feature_mask.*broadcastable"):
        saco(
            cnn,
            images,
            torch.rand(4, 8, 8),
            feature_mask=torch.zeros(1, 1, 4, 4, dtype=torch.long),
        )


def test_bad_max_examples_per_batch_is_rejected(cnn, images):
    with pytest.raises(ValueError, match="max_examples_per_batch"):
        saco(cnn, images, torch.rand(4, 8, 8), max_examples_per_batch=0)


def test_inputs_of_the_wrong_type_are_rejected(cnn):
    with pytest.raises(TypeError, match="inputs"):
        saco(cnn, [torch.rand(1, 3, 8, 8)], torch.rand(1, 8, 8))


def test_forward_outputs_without_one_row_per_example_are_rejected(images):
    with pytest.raises(ValueError, match="forward_func"):
        saco(lambda x: x.sum(), images, torch.rand(4, 8, 8))
    with pytest.raises(
        ValueError, match=r"forward_func: .* one row per input row, got shape \(1, 5\) for inputs"
    ):
        saco(lambda x: torch.zeros(1, 5), images, torch.rand(4, 8, 8))


# --- the user's tensors -------------------------------------------------------


def test_user_tensors_are_not_modified(cnn, images, attributions):
    baseline = torch.randn(4, 3, 8, 8)
    mask = torch.arange(16).reshape(1, 1, 4, 4).repeat_interleave(2, 2).repeat_interleave(2, 3)
    scale = torch.rand(4) + 0.5
    originals = [t.clone() for t in (images, attributions, baseline, mask, scale)]
    state = {k: v.clone() for k, v in cnn.state_dict().items()}
    saco(
        lambda x, s: cnn(x) * s[:, None],
        images,
        attributions,
        baselines=baseline,
        additional_forward_args=(scale,),
        feature_mask=mask,
        n_groups=4,
        max_examples_per_batch=5,
    )
    for before, after in zip(originals, (images, attributions, baseline, mask, scale)):
        assert torch.equal(before, after)
    assert all(torch.equal(state[k], v) for k, v in cnn.state_dict().items())
    assert not cnn.training
