"""On a GPU every method, every metric and the evaluation give the CPU's results,
on the inputs' device, and leave the caller's CUDA memory statistics alone
(compared with TF32 off, see the ``no_tf32`` fixture).
"""

import json
from typing import Dict

import pytest
import torch
from torch import Tensor, nn

from captum_saco.cli import main
from captum_saco.datasets import load_fashion_mnist_samples, load_fashion_mnist_vit
from captum_saco.evaluation import METHODS, evaluate
from captum_saco.metrics import saco, score_attributions
from tests.numerics import relative_error

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU"),
    pytest.mark.usefixtures("no_tf32"),
]


@pytest.fixture(scope="module")
def models() -> Dict[str, nn.Module]:
    return {"cpu": load_fashion_mnist_vit(), "cuda": load_fashion_mnist_vit(device="cuda")}


@pytest.fixture(scope="module")
def images() -> Tensor:
    return load_fashion_mnist_samples(limit=16).images


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_gives_its_cpu_maps_on_the_gpu(models, images, name: str) -> None:
    target = models["cpu"](images).argmax(dim=1)
    indices = torch.arange(len(images))
    expected = METHODS[name](models["cpu"], 0)(images, target, indices)
    maps = METHODS[name](models["cuda"], 0)(images.cuda(), target.cuda(), indices)
    assert maps.device.type == "cuda" and maps.dtype == expected.dtype
    error = relative_error(maps.cpu(), expected)
    assert error < 1e-4, f"{name}: {error:.2e}"


def test_every_metric_gives_its_cpu_values_on_the_gpu(models, images) -> None:
    torch.manual_seed(0)
    maps = {"random": torch.rand(len(images), 28, 28), "saliency": images.abs().sum(dim=1)}
    expected = score_attributions(models["cpu"], images, maps)
    values = score_attributions(
        models["cuda"], images.cuda(), {name: m.cuda() for name, m in maps.items()}
    )
    for method, by_metric in expected.items():
        for metric, value in by_metric.items():
            assert values[method][metric].device.type == "cuda"
            torch.testing.assert_close(
                values[method][metric].cpu(),
                value,
                atol=1e-4,
                rtol=1e-4,
                equal_nan=True,
                msg=lambda text, m=method, k=metric: f"{m} {k}: {text}",
            )


def test_evaluate_on_the_gpu_gives_the_cpu_table(models, images) -> None:
    # Methods whose maps are equal on both devices (random; float64 Transformer
    # Attribution), so that no near-tie of a float32 map ranks differently.
    methods = ["random", "transformer_attribution"]
    expected = evaluate(models["cpu"], images, methods=methods, batch_size=8)
    result = evaluate(models["cuda"], images, methods=methods, batch_size=8)
    assert result.per_example.keys() == expected.per_example.keys()
    for key, value in expected.per_example.items():
        torch.testing.assert_close(
            result.per_example[key], value, atol=1e-4, rtol=1e-4, equal_nan=True, msg=str(key)
        )


def test_the_command_on_the_gpu_prints_the_cpu_table(tmp_path, capsys) -> None:
    args = ["--limit", "8", "--methods", "random", "transformer_attribution", "--no-progress"]
    tables = {}
    for device in ("cpu", "cuda"):
        path = tmp_path / f"{device}.json"
        assert main([*args, "--device", device, "--output", str(path)]) == 0
        tables[device] = json.loads(path.read_text())["results"]
    capsys.readouterr()
    for cpu, cuda in zip(tables["cpu"], tables["cuda"], strict=True):
        assert (cpu["method"], cpu["metric"]) == (cuda["method"], cuda["metric"])
        assert cuda["mean"] == pytest.approx(cpu["mean"], abs=1e-4, nan_ok=True)


def test_the_default_chunk_leaves_the_callers_peak_memory_statistic_alone(models, images) -> None:
    scratch = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    del scratch
    peak = torch.cuda.max_memory_allocated()
    maps = torch.rand(len(images), 28, 28, device="cuda")
    result = saco(models["cuda"], images.cuda(), maps)
    assert result.shape == (len(images),) and torch.isfinite(result).all()
    assert torch.cuda.max_memory_allocated() >= peak


def test_the_default_chunk_sizes_itself_on_the_clean_rows_then_takes_the_rest_at_once(
    models,
) -> None:
    # 8 images: 8 clean + 80 perturbed rows. The first call forwards the clean
    # rows, which the caller has run already, to measure the memory per row;
    # the rest fit in one call.
    images = load_fashion_mnist_samples(limit=8).images.cuda()
    maps = torch.rand(8, 28, 28, device="cuda")
    calls = []

    def counting(x: Tensor) -> Tensor:
        calls.append(x.shape[0])
        return models["cuda"](x)

    expected = saco(models["cuda"], images, maps, max_examples_per_batch=1000)
    torch.testing.assert_close(saco(counting, images, maps), expected)
    assert calls == [8, 80]
    with torch.no_grad():
        logits = models["cuda"](images)
    calls.clear()  # Given the clean output, the first call takes as many perturbed rows.
    score_attributions(counting, images, {"m": maps}, metrics=["saco"], clean_output=logits)
    assert calls == [8, 72]
