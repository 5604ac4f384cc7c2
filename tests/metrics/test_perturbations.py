"""perturbation=: the strategies behind one interface, each checked against a
plain computation written here."""

from typing import List

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from torch import Tensor

from captum_saco.metrics import (
    Blur,
    NoisyLinear,
    aopc,
    deletion_curve,
    gaussian_blur,
    insertion_curve,
    noisy_linear_impute,
    saco,
    score_attributions,
    srg,
)


def recording(model):
    """``model`` as a forward function that keeps every batch it is given."""
    seen: List[Tensor] = []

    def forward(x: Tensor) -> Tensor:
        seen.append(x.clone())
        return model(x)

    return forward, seen


def test_baseline_is_the_default_perturbation(cnn, images):
    maps = torch.rand(4, 8, 8)
    assert torch.equal(saco(cnn, images, maps), saco(cnn, images, maps, perturbation="baseline"))


def test_an_unknown_perturbation_is_refused_by_name(cnn, images):
    with pytest.raises(ValueError, match="perturbation: expected one of"):
        aopc(cnn, images, torch.rand(4, 8, 8), perturbation="gauss")


def test_gaussian_blur_matches_scipy_with_replicated_borders():
    torch.manual_seed(0)
    image = torch.randn(2, 3, 9, 11, dtype=torch.float64)
    expected = gaussian_filter(image.numpy(), sigma=(0, 0, 1.5, 1.5), mode="nearest", truncate=3.0)
    # scipy's radius is int(3 * 1.5 + 0.5) = 5 = ceil(4.5)
    assert np.allclose(gaussian_blur(image, 1.5).numpy(), expected, atol=1e-12)


def test_blur_removes_features_into_one_blurred_copy_of_each_image(cnn, images):
    maps = torch.rand(4, 8, 8)
    blurred = gaussian_blur(images, 8 / 16)  # default sigma: 1/16 of the shorter side
    by_blur = deletion_curve(cnn, images, maps, perturbation="blur")
    by_baseline = deletion_curve(cnn, images, maps, baselines=blurred)
    assert torch.allclose(by_blur.probabilities, by_baseline.probabilities)
    wider = deletion_curve(cnn, images, maps, perturbation=Blur(sigma=3.0))
    assert not torch.allclose(wider.probabilities, by_blur.probabilities)


def test_blur_sigma_must_be_positive():
    with pytest.raises(ValueError, match="blur_sigma"):
        Blur(sigma=0)


def dense_road_imputation(image: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """ROAD's system written out densely, one equation per removed pixel."""
    h, w = removed.shape
    unknown = [(y, x) for y in range(h) for x in range(w) if removed[y, x]]
    index = {p: i for i, p in enumerate(unknown)}
    a = np.zeros((len(unknown), len(unknown)))
    b = np.zeros((len(unknown), image.shape[0]))
    for (y, x), i in index.items():
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                if (dy, dx) == (0, 0) or not (0 <= y + dy < h and 0 <= x + dx < w):
                    continue
                weight = 1 / 12 if dy and dx else 1 / 6
                a[i, i] += weight
                if removed[y + dy, x + dx]:
                    a[i, index[(y + dy, x + dx)]] -= weight
                else:
                    b[i] += weight * image[:, y + dy, x + dx]
    solution = np.linalg.solve(a, b)
    out = image.copy()
    for (y, x), i in index.items():
        out[:, y, x] = solution[i]
    return out


def test_noisy_linear_imputation_without_noise_solves_roads_system():
    rng = np.random.default_rng(0)
    image = rng.normal(size=(2, 5, 6))
    removed = rng.random((5, 6)) < 0.5
    removed[0, 0] = True  # a corner, whose border neighbours are dropped
    got = noisy_linear_impute(torch.from_numpy(image), torch.from_numpy(removed), noise=0.0)
    assert np.allclose(got.numpy(), dense_road_imputation(image, removed), atol=1e-10)


def test_noisy_linear_noise_touches_only_imputed_pixels_and_follows_the_generator():
    image = torch.randn(1, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    removed = torch.zeros(6, 6, dtype=torch.bool)
    removed[2:4, 1:5] = True
    clean = noisy_linear_impute(image, removed, noise=0.0)
    noisy = noisy_linear_impute(
        image, removed, noise=0.5, generator=torch.Generator().manual_seed(3)
    )
    again = noisy_linear_impute(
        image, removed, noise=0.5, generator=torch.Generator().manual_seed(3)
    )
    assert torch.equal(noisy, again)
    assert torch.equal(noisy[:, ~removed], image[:, ~removed])
    assert (noisy[:, removed] != clean[:, removed]).all()
    assert (noisy - clean)[:, removed].std() == pytest.approx(0.5, rel=0.5)


def test_noisy_linear_metric_forwards_the_imputed_images(cnn, images):
    forward, seen = recording(cnn)
    maps = torch.rand(4, 8, 8)
    deletion_curve(
        forward,
        images,
        maps,
        fractions=(0.5,),
        perturbation=NoisyLinear(noise=0.0),
        max_examples_per_batch=100,
    )
    rows = seen[0][4:]  # after the clean rows, one row per example
    ranks = maps.flatten(1).argsort(dim=1, descending=True, stable=True)
    for n in range(4):
        removed = torch.zeros(64, dtype=torch.bool)
        removed[ranks[n, :32]] = True
        expected = noisy_linear_impute(images[n], removed.view(8, 8), noise=0.0)
        assert torch.allclose(rows[n], expected, atol=1e-6)


def test_noisy_linear_is_deterministic_under_a_seed_and_fills_empty_images_with_the_baseline(
    cnn, images
):
    maps = torch.rand(4, 8, 8)
    first = srg(cnn, images, maps, perturbation=NoisyLinear(seed=0))
    assert torch.equal(first, srg(cnn, images, maps, perturbation=NoisyLinear(seed=0)))
    assert not torch.equal(first, srg(cnn, images, maps, perturbation=NoisyLinear(seed=1)))
    # insertion's point 0 removes every pixel: nothing to impute from, the baseline
    curve = insertion_curve(cnn, images, maps, perturbation=NoisyLinear(seed=0), baselines=0.0)
    plain = insertion_curve(cnn, images, maps, baselines=0.0)
    assert torch.allclose(curve.probabilities[:, 0], plain.probabilities[:, 0])


def test_noisy_linear_refuses_inputs_that_are_not_images(cnn):
    with pytest.raises(ValueError, match="perturbation='noisy_linear'"):
        aopc(lambda x: x[:, :3], torch.randn(2, 6), torch.rand(2, 6), perturbation="noisy_linear")


def test_score_attributions_perturbs_every_metric_with_the_strategy(cnn, images):
    maps = {"a": torch.rand(4, 8, 8), "b": torch.rand(4, 3, 8, 8)}
    scores = score_attributions(
        cnn, images, maps, metrics=("saco", "aopc", "srg"), n_groups=4, perturbation="blur"
    )
    fractions = (0.25, 0.5, 0.75)
    for method, a in maps.items():
        assert torch.allclose(
            scores[method]["saco"], saco(cnn, images, a, n_groups=4, perturbation="blur")
        )
        assert torch.allclose(
            scores[method]["aopc"], aopc(cnn, images, a, fractions=fractions, perturbation="blur")
        )
        assert torch.allclose(
            scores[method]["srg"], srg(cnn, images, a, fractions=fractions, perturbation="blur")
        )


def test_the_readme_example_of_the_strategies_runs():
    from pathlib import Path

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    section = readme[readme.index("## Insertion, SRG and how features are removed") :]
    code = section[section.index("```python") + len("```python") : section.index("```\n\n")]
    exec(compile(code, "README.md", "exec"), {})
