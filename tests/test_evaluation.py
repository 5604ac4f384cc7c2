import csv
import io
import json
import warnings

import pytest
import torch
from captum.attr import Attribution, Saliency
from timm.models.vision_transformer import VisionTransformer

from captum_saco.evaluation import (
    DEFAULT_METHODS,
    DEFAULT_METRICS,
    METHODS,
    METRICS,
    EvaluationResult,
    evaluate,
    saco_case_study,
)
from captum_saco.visualization import plot_evaluation


def tiny_vit() -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(
        img_size=8, patch_size=4, in_chans=1, num_classes=3, embed_dim=8, depth=2, num_heads=2
    ).eval()


@pytest.fixture(scope="module")
def model() -> VisionTransformer:
    return tiny_vit()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(1))


class ConstantAttribution(Attribution):
    """A map without ranking information: SaCo is undefined for it."""

    def attribute(self, inputs, target=None):
        return torch.ones_like(inputs)


def test_default_methods_and_metrics_are_the_papers_comparison() -> None:
    assert DEFAULT_METHODS == (
        "random",
        "raw_attention",
        "attention_rollout",
        "gradient_weighted_attention",
        "transformer_attribution",
        "integrated_gradients",
        "saliency",
    )
    assert DEFAULT_METRICS == ("saco", "aopc", "lodds", "auc", "comprehensiveness")
    assert set(METHODS) == set(DEFAULT_METHODS) and set(METRICS) == set(DEFAULT_METRICS)


def test_every_default_method_and_metric_runs_on_a_vit(model, images) -> None:
    result = evaluate(model, images[:2], batch_size=2)
    assert [(r.method, r.metric) for r in result.rows] == [
        (m, k) for m in DEFAULT_METHODS for k in DEFAULT_METRICS
    ]
    for r in result.rows:
        assert r.n + r.nan == 2
        assert r.n == 2, r


def test_rows_summarise_the_per_example_values(model, images) -> None:
    result = evaluate(model, images, methods=["random", "saliency"], metrics=["saco", "aopc"])
    assert result.n_images == 6
    for r in result.rows:
        values = result.per_example[(r.method, r.metric)]
        assert values.shape == (6,)
        assert r.mean == pytest.approx(values.mean().item())
        assert r.std == pytest.approx(values.std().item())
        assert (r.n, r.nan) == (6, 0)


def test_results_do_not_depend_on_the_batch_size(model, images) -> None:
    kwargs = dict(methods=["random", "raw_attention"], metrics=["saco"])
    one = evaluate(model, images, batch_size=6, **kwargs)
    other = evaluate(model, images, batch_size=4, **kwargs)
    for key, values in one.per_example.items():
        torch.testing.assert_close(values, other.per_example[key])


def test_seed_changes_only_the_random_method(model, images) -> None:
    kwargs = dict(methods=["random", "saliency"], metrics=["saco"])
    a = evaluate(model, images, seed=0, **kwargs)
    b = evaluate(model, images, seed=1, **kwargs)
    assert not torch.equal(a.per_example[("random", "saco")], b.per_example[("random", "saco")])
    assert torch.equal(a.per_example[("saliency", "saco")], b.per_example[("saliency", "saco")])


def test_default_target_is_the_predicted_class(model, images) -> None:
    predicted = model(images).argmax(1)
    kwargs = dict(methods=["saliency"], metrics=["saco", "aopc"])
    default = evaluate(model, images, **kwargs)
    explicit = evaluate(model, images, targets=predicted, **kwargs)
    other = evaluate(model, images, targets=(predicted + 1) % 3, **kwargs)
    for key in default.per_example:
        assert torch.equal(default.per_example[key], explicit.per_example[key])
        assert not torch.equal(default.per_example[key], other.per_example[key])


def test_custom_captum_attributions_are_accepted_by_name(model, images) -> None:
    result = evaluate(
        model, images, methods={"grads": Saliency(model), "rnd": "random"}, metrics=["saco"]
    )
    assert result.methods == ["grads", "rnd"]
    reference = evaluate(model, images, methods=["saliency", "random"], metrics=["saco"])
    assert torch.equal(
        result.per_example[("rnd", "saco")], reference.per_example[("random", "saco")]
    )


def test_undefined_values_are_counted_and_warned_about_once(model, images) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = evaluate(
            model,
            images,
            methods={"constant": ConstantAttribution(model)},
            metrics=["saco"],
            batch_size=2,
        )
    row = result.row("constant", "saco")
    assert (row.n, row.nan, row.mean, row.std) == (0, 6, None, None)
    saco_warnings = [w for w in caught if "saco" in str(w.message)]
    assert len(saco_warnings) == 1
    assert "and 2 similar warnings" in str(saco_warnings[0].message)


def test_model_and_inputs_are_left_unchanged(model, images) -> None:
    state = {k: v.clone() for k, v in model.state_dict().items()}
    before = images.clone()
    evaluate(model, images, methods=["saliency", "attention_rollout"], metrics=["saco"])
    assert torch.equal(images, before) and not images.requires_grad
    assert not model.training
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_a_model_in_training_mode_is_warned_about(images) -> None:
    vit = tiny_vit().train()
    with pytest.warns(UserWarning, match="training mode"):
        evaluate(vit, images[:2], methods=["random"], metrics=["saco"])
    assert vit.training


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(methods=["random", "gradcam"]), ValueError, "methods: unknown method 'gradcam'"),
        (dict(metrics=["saco", "infidelity"]), ValueError, "metrics: unknown metric 'infidelity'"),
        (dict(methods="random"), TypeError, "methods"),
        (dict(metrics="saco"), TypeError, "metrics"),
        (dict(methods={"x": 3}), TypeError, "methods"),
        (dict(targets=torch.zeros(5, dtype=torch.long)), ValueError, "targets"),
        (dict(batch_size=0), ValueError, "batch_size"),
    ],
)
def test_bad_arguments_are_clear_errors(model, images, kwargs, error, match) -> None:
    with pytest.raises(error, match=match):
        evaluate(model, images, **kwargs)


def test_inputs_without_images_are_a_value_error(model) -> None:
    with pytest.raises(ValueError, match="inputs"):
        evaluate(model, torch.zeros(0, 1, 8, 8))


@pytest.fixture(scope="module")
def result(model, images) -> EvaluationResult:
    return evaluate(model, images, methods=["random", "saliency"], metrics=["saco", "auc"])


def test_json_has_exactly_the_documented_schema(result) -> None:
    data = json.loads(result.to_json())
    assert set(data) == {"model", "n_images", "results"}
    assert data["n_images"] == 6 and data["model"] == "VisionTransformer"
    assert len(data["results"]) == 4
    for row in data["results"]:
        assert set(row) == {"method", "metric", "mean", "std", "n", "nan"}


def test_undefined_means_are_null_in_json(model, images) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = evaluate(
            model, images, methods={"c": ConstantAttribution(model)}, metrics=["saco"]
        )
    row = json.loads(result.to_json())["results"][0]
    assert row["mean"] is None and row["std"] is None and row["nan"] == 6


def test_csv_has_one_line_per_method_and_metric(result) -> None:
    rows = list(csv.DictReader(io.StringIO(result.to_csv())))
    assert [(r["method"], r["metric"]) for r in rows] == [
        ("random", "saco"),
        ("random", "auc"),
        ("saliency", "saco"),
        ("saliency", "auc"),
    ]
    assert float(rows[0]["mean"]) == pytest.approx(result.rows[0].mean)


def test_markdown_and_text_tables_have_methods_as_rows_and_metrics_as_columns(result) -> None:
    md = result.to_markdown().splitlines()
    assert md[0] == "| method | saco | auc |"
    assert md[2].startswith("| random | ") and md[3].startswith("| saliency | ")
    text = result.format_table().splitlines()
    assert text[0].split() == ["method", "saco", "auc"]
    r = result.row("saliency", "auc")
    assert f"{r.mean:.4f} ± {r.std:.4f} (0)" in text[3]
    assert "lower is better: auc" in text[-1] and "higher is better: saco" in text[-1]


@pytest.mark.parametrize("suffix", [".json", ".csv", ".md"])
def test_save_writes_the_format_of_the_suffix(result, tmp_path, suffix) -> None:
    path = tmp_path / f"table{suffix}"
    result.save(str(path))
    expected = {".json": result.to_json, ".csv": result.to_csv, ".md": result.to_markdown}[suffix]()
    assert path.read_text() == expected


def test_save_with_another_suffix_is_a_value_error(result, tmp_path) -> None:
    with pytest.raises(ValueError, match="output"):
        result.save(str(tmp_path / "table.txt"))


def test_case_study_matches_the_evaluation_for_that_image(model, images, result) -> None:
    study = saco_case_study(model, images, index=4, methods=["random", "saliency"])
    for method, details in study.items():
        assert details.probability_drop.shape == (1, 10)
        assert details.coefficient.item() == pytest.approx(
            result.per_example[(method, "saco")][4].item(), abs=1e-6
        )


def test_plot_writes_a_png_and_leaves_the_matplotlib_backend_as_it_was(
    result, model, images, tmp_path
) -> None:
    import matplotlib

    path = tmp_path / "plot.png"
    study = saco_case_study(model, images, methods=["random", "saliency"])
    previous = matplotlib.get_backend()
    try:
        # A backend other than Agg, as in a notebook (inline) or an IDE.
        matplotlib.use("svg")
        plot_evaluation(result, str(path), study, images[0])
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(previous)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_failed_save_leaves_the_previous_file_whole(result, tmp_path, monkeypatch) -> None:
    import builtins

    path = tmp_path / "table.json"
    path.write_text("previous good result")
    real_open = builtins.open

    class FullDisk:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, text):
            self.f.write(text[: len(text) // 2])
            raise OSError(28, "No space left on device")

    def open_on_a_full_disk(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        in_folder = str(file).startswith(str(tmp_path))
        return FullDisk(f) if in_folder and "w" in mode else f

    monkeypatch.setattr(builtins, "open", open_on_a_full_disk)
    with pytest.raises(OSError, match="No space left"):
        result.save(str(path))
    monkeypatch.undo()
    assert path.read_text() == "previous good result"
    assert [p.name for p in tmp_path.iterdir()] == ["table.json"]


def test_saving_keeps_the_permissions_of_the_replaced_file(result, tmp_path) -> None:
    path = tmp_path / "table.json"
    path.write_text("old")
    path.chmod(0o640)
    result.save(str(path))
    assert path.stat().st_mode & 0o777 == 0o640 and path.read_text() == result.to_json()


def tiny_hf_vit():
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
    return ViTForImageClassification(config).eval()


class Logits(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x).logits


def test_a_hugging_face_model_is_evaluated_on_its_logits(images) -> None:
    hf = tiny_hf_vit()
    methods, metrics = ["random", "raw_attention", "saliency"], ["saco", "aopc"]
    result = evaluate(hf, images, methods=methods, metrics=metrics, batch_size=4)
    assert all(r.n == 6 for r in result.rows)
    plain = evaluate(Logits(hf).eval(), images, methods=["random", "saliency"], metrics=metrics)
    for key, values in plain.per_example.items():
        torch.testing.assert_close(result.per_example[key], values)
    study = saco_case_study(hf, images, index=2, methods=["saliency"])
    assert study["saliency"].coefficient.item() == pytest.approx(
        result.per_example[("saliency", "saco")][2].item(), abs=1e-6
    )


@pytest.mark.parametrize(
    "kwargs, match", [(dict(methods=[]), "methods"), (dict(metrics=[]), "metrics")]
)
def test_no_methods_or_no_metrics_are_a_value_error(model, images, kwargs, match) -> None:
    with pytest.raises(ValueError, match=f"{match}: expected at least one"):
        evaluate(model, images, **kwargs)
