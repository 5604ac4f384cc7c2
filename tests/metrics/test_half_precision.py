"""float16 and bfloat16 models, and torch.autocast, work in every metric and score
close to float32; the metrics' own arithmetic stays in float32."""

import copy

import pytest
import torch

from captum_saco.datasets import load_fashion_mnist_samples, load_fashion_mnist_vit
from captum_saco.metrics import aopc, auc, comprehensiveness, lodds, saco

# metric -> largest difference to float32 allowed for one example (measured on the
# embedded model, 32 images: SaCo 0.026 (float16, bfloat16) and 0.11 (bfloat16
# autocast), LOdds 0.07, the probability-valued metrics 0.007).
TOLERANCE = {"saco": 0.2, "aopc": 0.02, "lodds": 0.15, "auc": 0.02, "comprehensiveness": 0.02}
METRICS = {f.__name__: f for f in (saco, aopc, lodds, auc, comprehensiveness)}


@pytest.fixture(scope="module")
def fashion():
    torch.manual_seed(50)
    images = load_fashion_mnist_samples(limit=8).images
    return load_fashion_mnist_vit().eval(), images, torch.rand(8, 28, 28)


@pytest.fixture(scope="module")
def float32_scores(fashion):
    model, images, maps = fashion
    return {name: metric(model, images, maps) for name, metric in METRICS.items()}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", list(METRICS))
def test_half_precision_models_score_close_to_float32(fashion, float32_scores, dtype, name):
    model, images, maps = fashion
    half = copy.deepcopy(model).to(dtype)
    result = METRICS[name](half, images.to(dtype), maps)
    assert result.dtype == torch.float32
    difference = (result - float32_scores[name]).abs()
    assert difference.max().item() <= TOLERANCE[name]


@pytest.mark.parametrize("name", list(METRICS))
def test_autocast_scores_close_to_float32(fashion, float32_scores, name):
    model, images, maps = fashion
    with torch.autocast("cpu", dtype=torch.bfloat16):
        result = METRICS[name](model, images, maps)
    assert result.dtype == torch.float32
    assert (result - float32_scores[name]).abs().max().item() <= TOLERANCE[name]


def test_half_precision_attribution_maps_rank_in_float32(fashion):
    model, images, maps = fashion
    details = saco(model, images, maps.to(torch.bfloat16), return_details=True)
    assert details.group_salience.dtype == torch.float32
    assert torch.equal(details.coefficient, saco(model, images, maps.to(torch.bfloat16).float()))
