"""SaCo follows DESIGN.md §2 exactly: values, ranking, grouping, batching, targets."""

import math
from typing import Callable, List

import pytest
import torch
from torch import Tensor, nn

import captum_saco
from captum_saco.metrics import SacoDetails, saco


def naive_saco(
    model: Callable[[Tensor], Tensor],
    image: Tensor,
    pixel_map: Tensor,
    baseline: Tensor,
    n_groups: int,
    target: int,
) -> float:
    """A deliberately plain SaCo of one (C, H, W) image: Python loops everywhere."""
    width = image.shape[2]
    values: List[float] = pixel_map.flatten().tolist()
    order = sorted(range(len(values)), key=lambda i: -values[i])  # stable
    n = len(values)
    sizes = [n // n_groups + (1 if g < n % n_groups else 0) for g in range(n_groups)]
    groups, start = [], 0
    for size in sizes:
        groups.append(order[start : start + size])
        start += size
    with torch.no_grad():
        p_clean = torch.softmax(model(image[None]), dim=1)[0, target].item()
        salience, drop = [], []
        for group in groups:
            perturbed = image.clone()
            for i in group:
                row, col = divmod(i, width)
                perturbed[:, row, col] = baseline[:, 0, 0]
            p = torch.softmax(model(perturbed[None]), dim=1)[0, target].item()
            salience.append(sum(values[i] for i in group))
            drop.append(p_clean - p)
    numerator = denominator = 0.0
    for i in range(n_groups):
        for j in range(i + 1, n_groups):
            w = salience[i] - salience[j]
            if drop[i] < drop[j]:
                w = -w
            numerator += w
            denominator += abs(w)
    return numerator / denominator


def test_faithful_map_of_a_linear_model_scores_one_and_reversed_map_minus_one(linear_logit):
    torch.manual_seed(2)
    weight = 0.1 * torch.randn(3, 6, 6)  # small logits: no saturated probabilities
    model = linear_logit(weight)
    x = torch.randn(5, 3, 6, 6)
    baseline = x.mean(dim=(2, 3), keepdim=True)
    contribution = weight * (x - baseline)  # the true effect of removing each element

    assert torch.equal(saco(model, x, contribution, target=0), torch.ones(5))
    assert torch.equal(saco(model, x, -contribution, target=0), -torch.ones(5))


def test_coefficient_matches_the_hand_computed_value_with_one_discordant_pair(linear_logit):
    # Contributions of the 4 features (baseline 0): 4, 2, 3, 1; salience 4, 3, 2, 1.
    # Pairs: (1,2) +1, (1,3) +2, (1,4) +3, (2,3) -1, (2,4) +2, (3,4) +1 -> 8 / 10.
    model = linear_logit(torch.tensor([4.0, 2.0, 3.0, 1.0]))
    x = torch.ones(1, 4)
    attributions = torch.tensor([[4.0, 3.0, 2.0, 1.0]])
    result = saco(model, x, attributions, baselines=0.0, target=0, n_groups=4)
    assert result.tolist() == pytest.approx([0.8])


def test_tied_salience_keeps_flattened_index_order(linear_logit):
    # Features 1 and 2 tie; with 2 groups of sizes 2 and 1 the stable order puts
    # feature 1 (the only one the model uses) into the first group: F = 1.
    # The opposite tie order would put it into the second group: F = -1.
    model = linear_logit(torch.tensor([0.0, 5.0, 0.0]))
    x = torch.ones(1, 3)
    attributions = torch.tensor([[2.0, 1.0, 1.0]])
    details = saco(
        model, x, attributions, baselines=0.0, target=0, n_groups=2, return_details=True
    )
    assert details.group_size.tolist() == [[2, 1]]
    assert details.probability_drop[0, 1] == 0
    assert details.coefficient.tolist() == [1.0]


def test_groups_split_the_ranking_like_tensor_split_with_summed_salience(linear_logit):
    model = linear_logit(torch.ones(11))
    x = torch.ones(2, 11)
    attributions = torch.stack([torch.arange(11.0), torch.arange(11.0).flip(0)])
    details = saco(model, x, attributions, n_groups=4, target=0, return_details=True)
    assert details.group_size.tolist() == [[3, 3, 3, 2]] * 2
    expected = [10 + 9 + 8, 7 + 6 + 5, 4 + 3 + 2, 1 + 0]
    assert details.group_salience.tolist() == [expected, expected]


def test_details_hold_the_drops_the_coefficient_is_computed_from(cnn, images):
    torch.manual_seed(3)
    attributions = torch.rand(4, 8, 8)
    details = saco(cnn, images, attributions, return_details=True)
    assert isinstance(details, SacoDetails)
    probabilities = torch.softmax(cnn(images), dim=1)
    assert torch.equal(details.target, probabilities.argmax(1))
    assert torch.allclose(details.clean_probability, probabilities.max(1).values)
    assert details.group_salience.shape == details.probability_drop.shape == (4, 10)
    assert torch.allclose(details.group_salience.sum(1), attributions.flatten(1).sum(1))
    assert torch.equal(details.coefficient, saco(cnn, images, attributions))


def test_agrees_with_a_naive_per_example_loop(cnn, images):
    model = cnn.double()
    x = images.double()
    torch.manual_seed(4)
    attributions = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    baseline = x.mean(dim=(2, 3), keepdim=True)
    for n_groups in (2, 7, 10):
        result = saco(model, x, attributions, target=1, n_groups=n_groups)
        expected = [
            naive_saco(model, x[i], attributions[i].sum(0), baseline[i], n_groups, target=1)
            for i in range(4)
        ]
        assert result.tolist() == pytest.approx(expected, abs=1e-10)


def test_result_does_not_depend_on_max_examples_per_batch(cnn, images):
    torch.manual_seed(5)
    attributions = torch.randn(4, 8, 8)
    reference = saco(cnn, images, attributions)
    for chunk in (1, 3, 7, 40, 1000):
        assert torch.allclose(
            saco(cnn, images, attributions, max_examples_per_batch=chunk), reference, atol=1e-6
        )


def test_max_examples_per_batch_bounds_every_forward_call(cnn, images):
    sizes: List[int] = []

    def counting(x: Tensor) -> Tensor:
        sizes.append(x.shape[0])
        return cnn(x)

    saco(counting, images, torch.rand(4, 8, 8), n_groups=5, max_examples_per_batch=6)
    assert max(sizes) <= 6
    assert sum(sizes) == 4 * (5 + 1)  # one clean pass plus one pass per group


def test_positive_scaling_of_attributions_does_not_change_the_result(cnn, images):
    torch.manual_seed(6)
    attributions = torch.randn(4, 3, 8, 8)
    reference = saco(cnn, images, attributions)
    for scale in (1e-3, 2.5, 1e4):
        assert torch.allclose(saco(cnn, images, attributions * scale), reference, atol=1e-5)


def test_all_target_forms_select_the_same_class(cnn, images):
    attributions = torch.rand(4, 8, 8)
    reference = saco(cnn, images, attributions, target=2)
    assert torch.equal(saco(cnn, images, attributions, target=[2, 2, 2, 2]), reference)
    assert torch.equal(saco(cnn, images, attributions, target=torch.tensor(2)), reference)
    assert torch.equal(saco(cnn, images, attributions, target=torch.full((4,), 2)), reference)
    per_example = [0, 3, 1, 4]
    mixed = saco(cnn, images, attributions, target=per_example)
    for i, c in enumerate(per_example):
        assert mixed[i] == saco(cnn, images[i : i + 1], attributions[i : i + 1], target=c)[0]


def test_tuple_targets_index_a_higher_dimensional_output(cnn, images):
    def two_heads(x: Tensor) -> Tensor:
        logits = cnn(x)
        return torch.stack([-logits, logits], dim=1)  # (N, 2, 5)

    attributions = torch.rand(4, 8, 8)
    reference = saco(cnn, images, attributions, target=3)
    assert torch.equal(saco(two_heads, images, attributions, target=(1, 3)), reference)
    assert torch.equal(saco(two_heads, images, attributions, target=[(1, 3)] * 4), reference)


def test_default_target_is_the_predicted_class_of_the_clean_input(cnn, images):
    attributions = torch.rand(4, 8, 8)
    predicted = cnn(images).argmax(1).tolist()
    assert torch.equal(
        saco(cnn, images, attributions), saco(cnn, images, attributions, target=predicted)
    )


def test_additional_forward_args_are_passed_per_example(cnn, images):
    temperature = torch.tensor([1.0, 2.0, 0.5, 3.0])

    def scaled(x: Tensor, t: Tensor, shift: float) -> Tensor:
        return cnn(x) / t[:, None] + shift

    attributions = torch.rand(4, 8, 8)
    result = saco(
        scaled, images, attributions, additional_forward_args=(temperature, 0.5), target=1,
        max_examples_per_batch=7,
    )
    for i in range(4):
        single = saco(
            lambda x: cnn(x) / temperature[i], images[i : i + 1], attributions[i : i + 1], target=1
        )
        assert result[i].item() == pytest.approx(single.item(), abs=1e-6)


def test_models_returning_probabilities_need_apply_softmax_false(cnn, images):
    def probabilities(x: Tensor) -> Tensor:
        return torch.softmax(cnn(x), dim=1)

    attributions = torch.rand(4, 8, 8)
    assert torch.allclose(
        saco(probabilities, images, attributions, apply_softmax=False),
        saco(cnn, images, attributions),
        atol=1e-6,
    )


def test_baseline_forms_scalar_broadcastable_and_per_example(cnn, images):
    attributions = torch.rand(4, 8, 8)
    zero = saco(cnn, images, attributions, baselines=0.0)
    assert torch.equal(saco(cnn, images, attributions, baselines=torch.zeros(3, 1, 1)), zero)
    assert torch.equal(saco(cnn, images, attributions, baselines=torch.zeros_like(images)), zero)
    channel_mean = images.mean(dim=(2, 3), keepdim=True)
    assert torch.equal(
        saco(cnn, images, attributions, baselines=channel_mean),
        saco(cnn, images, attributions),
    )
    per_example = torch.randn(4, 3, 8, 8)
    result = saco(cnn, images, attributions, baselines=per_example)
    for i in range(4):
        single = saco(cnn, images[i : i + 1], attributions[i : i + 1], baselines=per_example[i])
        assert result[i].item() == pytest.approx(single.item(), abs=1e-6)


def test_results_and_details_live_on_the_inputs_device_in_float(cnn, images):
    details = saco(cnn, images, torch.rand(4, 8, 8), return_details=True)
    for tensor in details:
        assert tensor.device == images.device
    assert details.coefficient.dtype == torch.float32


def test_coefficients_of_random_maps_lie_in_minus_one_to_one(cnn):
    torch.manual_seed(7)
    x = torch.randn(16, 3, 8, 8)
    result = saco(cnn, x, torch.rand(16, 3, 8, 8))
    assert bool(((result >= -1) & (result <= 1)).all())
    assert not math.isnan(result.mean().item())


def test_package_root_exports_the_same_function():
    assert captum_saco.saco is saco
    assert "saco" in captum_saco.__all__


def test_gradients_are_neither_needed_nor_recorded(cnn, images):
    x = images.clone().requires_grad_()
    result = saco(cnn, x, torch.rand(4, 8, 8))
    assert not result.requires_grad
    assert x.grad is None
    assert all(p.grad is None for p in nn.ModuleList([cnn]).parameters())
