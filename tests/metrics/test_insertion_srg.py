"""insertion_curve and srg: hand-checked values, a plain reimplementation of
SRG, and the same values from score_attributions and evaluate's registry."""

import math
from typing import Callable

import pytest
import torch
from torch import Tensor

import captum_saco
from captum_saco import evaluate
from captum_saco.evaluation.registry import METRICS, resolve_metrics
from captum_saco.metrics import deletion_curve, insertion_curve, score_attributions, srg


def sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


@pytest.fixture
def tiny(linear_logit):
    """Four features with logit contributions 0.4, 0.3, 0.2, 0.1 (baseline 0),
    ranked 1, 2, 3, 0 by the attributions."""
    model = linear_logit(torch.tensor([0.4, 0.3, 0.2, 0.1]))
    x = torch.ones(1, 4, dtype=torch.float64)
    attributions = torch.tensor([[1.0, 4.0, 3.0, 2.0]], dtype=torch.float64)
    return model, x, attributions


def test_insertion_curve_starts_all_baseline_and_restores_the_most_salient_first(tiny):
    model, x, attributions = tiny
    curve = insertion_curve(
        model, x, attributions, baselines=0.0, target=0, fractions=(0.25, 0.5, 1.0)
    )
    # Kept features: none; {1}; {1, 2}; all.
    expected = [sigmoid(0.0), sigmoid(0.3), sigmoid(0.5), sigmoid(1.0)]
    assert curve.probabilities[0].tolist() == pytest.approx(expected)
    assert curve.fractions.tolist() == pytest.approx([0.0, 0.25, 0.5, 1.0])
    assert curve.n_removed.tolist() == [[4, 3, 2, 0]]
    assert curve.auc().item() == pytest.approx(
        0.25 * (expected[0] + expected[1]) / 2
        + 0.25 * (expected[1] + expected[2]) / 2
        + 0.5 * (expected[2] + expected[3]) / 2
    )


def test_least_salient_first_insertion_restores_from_the_bottom(tiny):
    model, x, attributions = tiny
    curve = insertion_curve(
        model,
        x,
        attributions,
        baselines=0.0,
        target=0,
        fractions=(0.25, 0.5),
        order="least_salient_first",
    )
    # Kept: none; {0}; {0, 3}.
    assert curve.probabilities[0].tolist() == pytest.approx(
        [sigmoid(0.0), sigmoid(0.4), sigmoid(0.5)]
    )


def test_srg_of_the_tiny_model_is_lerf_minus_morf_averaged_by_hand(tiny):
    model, x, attributions = tiny
    value = srg(model, x, attributions, baselines=0.0, target=0, fractions=(0.25, 0.5))
    # MoRF removes {1}, {1, 2}; LeRF removes {0}, {0, 3}.
    morf = [sigmoid(0.7), sigmoid(0.5)]
    lerf = [sigmoid(0.6), sigmoid(0.5)]
    assert value.item() == pytest.approx(((lerf[0] - morf[0]) + (lerf[1] - morf[1])) / 2)


def plain_srg(
    model: Callable[[Tensor], Tensor],
    images: Tensor,
    maps: Tensor,
    target: Tensor,
    fractions,
    baseline: Tensor,
) -> Tensor:
    """SRG written out: one image and one step at a time."""
    values = []
    for x, m, c, b in zip(images, maps, target, baseline):
        order = torch.argsort(m.flatten(), descending=True, stable=True).tolist()
        n = len(order)
        gains = []
        for f in fractions:
            k = round(f * n)

            def probability(removed):
                mask = torch.zeros(n, dtype=torch.bool)
                mask[removed] = True
                perturbed = torch.where(mask.view(1, *x.shape[1:]), b, x)
                return torch.softmax(model(perturbed.unsqueeze(0)), dim=1)[0, c].item()

            gains.append(probability(order[n - k :]) - probability(order[:k]))
        values.append(sum(gains) / len(gains))
    return torch.tensor(values)


def test_srg_matches_a_plain_implementation(cnn, images):
    torch.manual_seed(3)
    maps = torch.rand(images.shape[0], 8, 8)
    target = torch.tensor([0, 1, 2, 3])
    fractions = (0.1, 0.3, 0.5, 0.75, 0.9)
    baseline = images.mean(dim=(2, 3), keepdim=True)
    expected = plain_srg(cnn, images, maps, target, fractions, baseline)
    got = srg(cnn, images, maps, target=target, fractions=fractions)
    assert torch.allclose(got, expected.to(got.dtype), atol=1e-6)
    # and it is the difference of the two deletion curves' means
    morf = deletion_curve(cnn, images, maps, target=target, fractions=fractions)
    lerf = deletion_curve(
        cnn, images, maps, target=target, fractions=fractions, order="least_salient_first"
    )
    by_curves = (lerf.probabilities[:, 1:] - morf.probabilities[:, 1:]).mean(dim=1)
    assert torch.allclose(got, by_curves, atol=1e-7)


def test_srg_measures_both_curves_in_one_run_with_one_clean_pass(cnn, images):
    calls = []

    def counting(x: Tensor) -> Tensor:
        calls.append(x.shape[0])
        return cnn(x)

    maps = torch.rand(images.shape[0], 8, 8)
    srg(counting, images, maps, fractions=(0.25, 0.5), max_examples_per_batch=1000)
    # 4 clean rows and 4 x 2 x 2 perturbed rows, in one call
    assert calls == [4 + 16]


def test_score_attributions_gives_insertion_and_srg_as_the_single_metrics(cnn, images):
    torch.manual_seed(4)
    maps = {"a": torch.rand(4, 8, 8), "b": torch.rand(4, 3, 8, 8)}
    scores = score_attributions(cnn, images, maps, metrics=("insertion", "srg", "aopc"), n_groups=5)
    fractions = (0.2, 0.4, 0.6, 0.8)
    for method, a in maps.items():
        insertion = insertion_curve(cnn, images, a, fractions=fractions).auc()
        assert torch.allclose(scores[method]["insertion"], insertion, atol=1e-7)
        assert torch.allclose(scores[method]["srg"], srg(cnn, images, a, fractions=fractions))


def test_insertion_and_srg_are_named_metrics_of_evaluate_not_computed_by_default():
    assert resolve_metrics(["insertion", "srg"]) == ["insertion", "srg"]
    assert METRICS["insertion"] == METRICS["srg"] == "higher is better"
    assert "srg" not in captum_saco.evaluation.DEFAULT_METRICS


def test_insertion_curve_and_srg_are_exported_from_the_package_root():
    assert captum_saco.insertion_curve is insertion_curve
    assert captum_saco.srg is srg


def test_evaluate_reports_insertion_and_srg_by_name(tiny_vit):
    images = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    result = evaluate(
        tiny_vit, images, methods=["random"], metrics=["insertion", "srg"], batch_size=2
    )
    assert [(r.method, r.metric) for r in result.rows] == [
        ("random", "insertion"),
        ("random", "srg"),
    ]
    assert all(r.n == 2 for r in result.rows)
