"""The cumulative deletion metrics: hand-checked values and agreement with a naive loop."""

import math
from typing import Callable, List, Sequence

import pytest
import torch
from torch import Tensor

import captum_saco
from captum_saco.metrics import (
    DeletionCurve,
    aopc,
    auc,
    comprehensiveness,
    deletion_curve,
    lodds,
    saco,
)


def sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


@pytest.fixture
def tiny(linear_logit):
    """Four features with logit contributions 0.4, 0.3, 0.2, 0.1 (baseline 0)."""
    model = linear_logit(torch.tensor([0.4, 0.3, 0.2, 0.1]))
    x = torch.ones(1, 4, dtype=torch.float64)
    attributions = torch.tensor([[1.0, 4.0, 3.0, 2.0]], dtype=torch.float64)
    return model, x, attributions


def test_deletion_curve_removes_the_most_salient_features_first(tiny):
    model, x, attributions = tiny
    curve = deletion_curve(
        model, x, attributions, baselines=0.0, target=0, fractions=(0.25, 0.5, 1.0)
    )
    # Ranking: features 1, 2, 3, 0. Remaining logit after removing 1, 2 and 4 features.
    expected = [sigmoid(1.0), sigmoid(0.7), sigmoid(0.5), sigmoid(0.0)]
    assert curve.probabilities[0].tolist() == pytest.approx(expected)
    assert curve.fractions.tolist() == pytest.approx([0.0, 0.25, 0.5, 1.0])
    assert curve.n_removed.tolist() == [[0, 1, 2, 4]]


def test_least_salient_first_order_removes_from_the_bottom(tiny):
    model, x, attributions = tiny
    curve = deletion_curve(
        model,
        x,
        attributions,
        baselines=0.0,
        target=0,
        fractions=(0.25, 0.5),
        order="least_salient_first",
    )
    # Removes feature 0, then features 0 and 3.
    assert curve.probabilities[0].tolist() == pytest.approx(
        [sigmoid(1.0), sigmoid(0.6), sigmoid(0.5)]
    )


def test_metric_values_match_their_documented_formulas_by_hand(tiny):
    model, x, attributions = tiny
    kwargs = dict(baselines=0.0, target=0, fractions=(0.25, 0.5, 1.0))
    p0, p1, p2, p4 = sigmoid(1.0), sigmoid(0.7), sigmoid(0.5), sigmoid(0.0)
    assert aopc(model, x, attributions, **kwargs).item() == pytest.approx(
        ((p0 - p1) + (p0 - p2) + (p0 - p4)) / 3
    )
    assert lodds(model, x, attributions, **kwargs).item() == pytest.approx(
        (math.log(p1 / p0) + math.log(p2 / p0) + math.log(p4 / p0)) / 3
    )
    assert auc(model, x, attributions, **kwargs).item() == pytest.approx(
        0.25 * (p0 + p1) / 2 + 0.25 * (p1 + p2) / 2 + 0.5 * (p2 + p4) / 2
    )
    q1, q2 = sigmoid(0.6), sigmoid(0.5)  # least salient first: remove 0, then 0 and 3
    assert comprehensiveness(
        model, x, attributions, baselines=0.0, target=0, fractions=(0.25, 0.5)
    ).item() == pytest.approx(((p0 - q1) + (p0 - q2)) / 2)


def test_removed_counts_round_the_fraction_of_features_half_to_even(cnn, images):
    curve = deletion_curve(cnn, images, torch.rand(4, 8, 8), fractions=(0.1, 0.125, 0.5, 0.9))
    # 64 features: 6.4 -> 6, 8.0 -> 8, 32, 57.6 -> 58.
    assert curve.n_removed.tolist() == [[0, 6, 8, 32, 58]] * 4


def naive_curve(
    model: Callable[[Tensor], Tensor],
    image: Tensor,
    pixel_map: Tensor,
    baseline: Tensor,
    target: int,
    fractions: Sequence[float],
    least_first: bool,
) -> List[float]:
    """A deliberately plain deletion curve of one (C, H, W) image."""
    width = image.shape[2]
    values = pixel_map.flatten().tolist()
    order = sorted(range(len(values)), key=lambda i: -values[i])  # stable
    if least_first:
        order = order[::-1]
    with torch.no_grad():
        curve = [torch.softmax(model(image[None]), 1)[0, target].item()]
        for f in fractions:
            perturbed = image.clone()
            for i in order[: round(f * len(values))]:
                row, col = divmod(i, width)
                perturbed[:, row, col] = baseline[:, 0, 0]
            curve.append(torch.softmax(model(perturbed[None]), 1)[0, target].item())
    return curve


@pytest.mark.parametrize("order", ["most_salient_first", "least_salient_first"])
def test_agrees_with_a_naive_per_example_loop(cnn, images, order):
    model, x = cnn.double(), images.double()
    torch.manual_seed(20)
    attributions = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    baseline = x.mean(dim=(2, 3), keepdim=True)
    fractions = (0.1, 0.3, 0.5, 0.7, 0.9)
    curve = deletion_curve(
        model,
        x,
        attributions,
        target=3,
        fractions=fractions,
        order=order,
        max_examples_per_batch=6,
    )
    for i in range(4):
        expected = naive_curve(
            model,
            x[i],
            attributions[i].sum(0),
            baseline[i],
            3,
            fractions,
            least_first=order == "least_salient_first",
        )
        assert curve.probabilities[i].tolist() == pytest.approx(expected, abs=1e-12)
        p = expected
        assert curve.aopc()[i].item() == pytest.approx(sum(p[0] - q for q in p[1:]) / 5)
        assert curve.lodds()[i].item() == pytest.approx(sum(math.log(q / p[0]) for q in p[1:]) / 5)


@pytest.mark.parametrize("order", ["most_salient_first", "least_salient_first"])
def test_per_example_superpixels_give_each_example_its_curve_alone(cnn, images, order):
    rows, cols = torch.arange(8)[:, None], torch.arange(8)[None, :]
    masks = torch.stack(  # 16, 8, 2 and 8 regions
        [((rows // h) * (8 // w) + cols // w)[None] for h, w in [(2, 2), (4, 2), (8, 4), (1, 8)]]
    )
    torch.manual_seed(22)
    attributions = torch.randn(4, 3, 8, 8)
    fractions = (0.25, 0.5, 0.75)
    curve = deletion_curve(
        cnn,
        images,
        attributions,
        fractions=fractions,
        feature_mask=masks,
        order=order,
        max_examples_per_batch=1,
    )
    assert curve.n_removed.tolist() == [[0, 4, 8, 12], [0, 2, 4, 6], [0, 0, 1, 2], [0, 2, 4, 6]]
    for i in range(4):
        alone = deletion_curve(
            cnn,
            images[i : i + 1],
            attributions[i : i + 1],
            fractions=fractions,
            feature_mask=masks[i : i + 1],
            order=order,
            max_examples_per_batch=1,
        )
        assert curve.n_removed[i].tolist() == alone.n_removed[0].tolist()
        assert torch.equal(curve.probabilities[i : i + 1], alone.probabilities)


def test_functions_equal_the_methods_of_one_curve(cnn, images):
    attributions = torch.rand(4, 3, 8, 8)
    morf = deletion_curve(cnn, images, attributions)
    lerf = deletion_curve(cnn, images, attributions, order="least_salient_first")
    assert isinstance(morf, DeletionCurve)
    assert torch.equal(aopc(cnn, images, attributions), morf.aopc())
    assert torch.equal(lodds(cnn, images, attributions), morf.lodds())
    assert torch.equal(auc(cnn, images, attributions), morf.auc())
    assert torch.equal(comprehensiveness(cnn, images, attributions), lerf.aopc())
    assert torch.equal(aopc(cnn, images, attributions, order="least_salient_first"), lerf.aopc())


def test_cumulative_metrics_share_the_saco_conventions(cnn, images):
    # Same targets, batching independence, and input forms as saco.
    torch.manual_seed(21)
    grid = torch.randn(4, 1, 2, 2)
    reference = aopc(cnn, images, grid, target=[0, 1, 2, 3])
    assert reference.shape == (4,)
    assert torch.allclose(
        aopc(cnn, images, grid, target=torch.tensor([0, 1, 2, 3]), max_examples_per_batch=5),
        reference,
        atol=1e-6,
    )
    clean = deletion_curve(cnn, images, grid, target=[0, 1, 2, 3]).probabilities[:, 0]
    details = saco(cnn, images, grid, target=[0, 1, 2, 3], return_details=True)
    assert torch.allclose(clean, details.clean_probability)


def test_removing_everything_reaches_the_baseline_prediction(cnn, images):
    attributions = torch.rand(4, 8, 8)
    curve = deletion_curve(cnn, images, attributions, baselines=0.0, fractions=(1.0,), target=1)
    expected = torch.softmax(cnn(torch.zeros_like(images)), 1)[:, 1]
    assert torch.allclose(curve.probabilities[:, 1], expected)


def test_probabilities_of_zero_give_finite_lodds(linear_logit):
    model = linear_logit(torch.tensor([200.0, 0.0]))  # removing feature 0 drives p to 0
    result = lodds(
        model,
        torch.ones(1, 2),
        torch.tensor([[2.0, 1.0]]),
        baselines=-1.0,
        target=0,
        fractions=(0.5,),
    )
    assert bool(torch.isfinite(result).all())


def test_non_finite_probabilities_give_nan_and_one_warning(cnn, images):
    def broken_for_example_2(x: Tensor) -> Tensor:
        logits = cnn(x)
        return torch.where(x[:, :1, 0, 0] == images[2, 0, 0, 0], torch.nan, logits)

    with pytest.warns(UserWarning, match="not finite for 1 of 4") as record:
        result = aopc(broken_for_example_2, images, torch.rand(4, 8, 8), target=0)
    assert len(record) == 1
    assert torch.isnan(result[2]) and bool(torch.isfinite(result[[0, 1, 3]]).all())


@pytest.mark.parametrize("fractions", [(), (0.0, 0.5), (0.5, 0.2), (0.5, 1.5), (0.3, 0.3)])
def test_bad_fractions_are_rejected(cnn, images, fractions):
    with pytest.raises(ValueError, match="fractions"):
        deletion_curve(cnn, images, torch.rand(4, 8, 8), fractions=fractions)


def test_unknown_order_is_rejected(cnn, images):
    with pytest.raises(ValueError, match="order"):
        aopc(cnn, images, torch.rand(4, 8, 8), order="random")


def test_package_root_exports_the_cumulative_metrics():
    for name in ("aopc", "lodds", "auc", "comprehensiveness", "deletion_curve"):
        assert getattr(captum_saco, name) is getattr(captum_saco.metrics, name)
        assert name in captum_saco.__all__


def test_a_step_that_removes_nothing_is_the_clean_input_forwarded_once(cnn, images):
    sizes = []

    def counting(x: Tensor) -> Tensor:
        sizes.append(x.shape[0])
        return cnn(x)

    # 64 pixels: 0.001 removes none, 0.5 removes 32.
    curve = deletion_curve(counting, images, torch.rand(4, 8, 8), fractions=[0.001, 0.5])
    assert curve.n_removed[:, 1].tolist() == [0] * 4
    assert sizes == [4 + 4]  # the clean rows and the 0.5 step, in one call
    assert torch.equal(curve.probabilities[:, 1], curve.probabilities[:, 0])
