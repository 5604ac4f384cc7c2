"""SaCo inside Quantus: a quantus.Metric whose values are captum_saco.saco's."""

import numpy as np
import pytest
import quantus
import torch
from captum.attr import Saliency

from captum_saco.attr import RawAttention
from captum_saco.datasets import load_fashion_mnist_samples, load_fashion_mnist_vit
from captum_saco.integrations.quantus import SaCo
from captum_saco.metrics import saco


@pytest.fixture(scope="module")
def setting():
    model = load_fashion_mnist_vit()
    x = load_fashion_mnist_samples(limit=12).images
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    a = Saliency(model).attribute(x.clone().requires_grad_(), target=y).detach()
    return model, x, y, a


def test_saco_is_a_quantus_faithfulness_metric_where_higher_is_better() -> None:
    assert issubclass(SaCo, quantus.Metric)
    assert SaCo.score_direction == quantus.helpers.enums.ScoreDirection.HIGHER
    assert SaCo.evaluation_category == quantus.helpers.enums.EvaluationCategory.FAITHFULNESS


def test_called_in_batches_it_gives_saco_of_each_example(setting) -> None:
    model, x, y, a = setting
    expected = saco(model, x, a, target=y).double().numpy()
    scores = SaCo()(model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=a.numpy(), batch_size=5)
    assert len(scores) == 12
    np.testing.assert_allclose(scores, expected, atol=1e-5, rtol=0)
    # n_groups and baselines reach saco; normalise (a positive rescaling) does not change it
    metric = SaCo(n_groups=5, baselines=0.0, normalise=True, disable_warnings=True)
    scores = metric(model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=a.numpy())
    expected = saco(model, x, a, target=y, n_groups=5, baselines=0.0).double().numpy()
    np.testing.assert_allclose(scores, expected, atol=1e-5, rtol=0)


def test_quantus_evaluate_runs_it_on_arrays_and_on_an_explain_func(setting) -> None:
    model, x, y, a = setting

    def explain(model, inputs, targets, method, device=None, **kwargs):
        inputs = torch.as_tensor(inputs)
        return RawAttention(model).attribute(inputs, target=torch.as_tensor(targets)).numpy()

    results = quantus.evaluate(
        metrics={"SaCo": SaCo(n_groups=10)},
        xai_methods={"Saliency": a.numpy(), "Raw attention": explain},
        model=model,
        x_batch=x.numpy(),
        y_batch=y.numpy(),
        explain_func_kwargs={},
    )
    np.testing.assert_allclose(
        results["Saliency"]["SaCo"], saco(model, x, a, target=y).numpy(), atol=1e-5, rtol=0
    )
    raw = RawAttention(model).attribute(x, target=y)
    np.testing.assert_allclose(
        results["Raw attention"]["SaCo"], saco(model, x, raw, target=y).numpy(), atol=1e-5, rtol=0
    )


def test_return_aggregate_gives_the_mean(setting) -> None:
    model, x, y, a = setting
    (mean,) = SaCo(return_aggregate=True)(
        model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=a.numpy()
    )
    assert mean == pytest.approx(float(saco(model, x, a, target=y).double().mean()), abs=1e-5)


def test_a_bad_n_groups_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="n_groups: expected an int >= 2"):
        SaCo(n_groups=1)
