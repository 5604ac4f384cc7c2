import csv
import io
import json
import os
import re
import subprocess
import sys
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


def test_default_methods_are_the_papers_table_plus_attn_lrp_and_saliency() -> None:
    assert DEFAULT_METHODS == (
        "random",
        "raw_attention",
        "attention_rollout",
        "gradient_weighted_attention",
        "attention_gradcam",
        "transformer_attribution",
        "partial_lrp",
        "full_lrp",
        "conservative_lrp",
        "attn_lrp",
        "attcat",
        "integrated_gradients",
        "saliency",
    )
    assert DEFAULT_METRICS == ("saco", "aopc", "lodds", "auc", "comprehensiveness")
    assert set(METHODS) == set(DEFAULT_METHODS) and set(DEFAULT_METRICS) < set(METRICS)


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


def test_each_image_is_forwarded_clean_once_for_its_target_and_all_metrics(model, images) -> None:
    rows = []
    handle = model.register_forward_pre_hook(lambda module, args: rows.append(len(args[0])))
    try:
        evaluate(model, images, methods=["random"], metrics=["saco", "aopc"], n_groups=4)
    finally:
        handle.remove()
    # 6 clean rows (the targets), then per image 4 SaCo groups and 3 deletion steps,
    # the first step being the first group: 6 * 6 perturbed rows; and the one
    # forward+backward pass of the first batch that is the cost's unit (6 rows).
    assert sum(rows) == 6 + 6 * 6 + 6


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


class NaNForImage2(Attribution):
    """Saliency, except that the map of the batch's third image holds a NaN."""

    def attribute(self, inputs, target=None):
        maps = Saliency(self.forward_func).attribute(inputs, target=target)
        maps[2, 0, 0, 0] = torch.nan
        return maps


def test_one_image_with_a_nan_map_is_nan_and_the_rest_of_its_batch_is_scored(model, images) -> None:
    methods = {"nan_in_one": NaNForImage2(model), "saliency": "saliency"}
    with pytest.warns(UserWarning, match=r"the attributions of 1 of 6 examples \(images \[2\]\)"):
        result = evaluate(model, images, methods=methods, metrics=["saco", "aopc"], batch_size=6)
    for metric in ("saco", "aopc"):
        broken = result.per_example[("nan_in_one", metric)]
        assert bool(torch.isnan(broken[2]))
        others = [0, 1, 3, 4, 5]
        expected = result.per_example[("saliency", metric)][others]
        torch.testing.assert_close(broken[others], expected, rtol=0, atol=1e-6, equal_nan=True)


def test_warnings_of_two_kinds_from_one_site_are_both_reported(model, images) -> None:
    with_nan_image = images.clone()
    with_nan_image[4, 0, 0, 0] = torch.nan
    methods = {"random": "random", "nan_in_one": NaNForImage2(model)}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        evaluate(model, with_nan_image, methods=methods, metrics=["aopc"], batch_size=3)
    messages = [str(w.message) for w in caught if "deletion_curve" in str(w.message)]
    assert len(messages) == 2, messages
    # Batch 1: the third map holds a NaN. Batch 2: so do the maps of images 4 and 5,
    # a warning of the same kind; and image 4 makes the probabilities NaN.
    assert "attributions of 1 of 3 examples (images [2]) hold NaN" in messages[0]
    assert "(and 1 similar warnings)" in messages[0]
    assert "probabilities are not finite for 1 of 3 examples (images [4])" in messages[1]


def test_model_and_inputs_are_left_unchanged(model, images) -> None:
    state = {k: v.clone() for k, v in model.state_dict().items()}
    before = images.clone()
    evaluate(model, images, methods=["saliency", "attention_rollout"], metrics=["saco"])
    assert torch.equal(images, before) and not images.requires_grad
    assert not model.training
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_a_model_in_training_mode_is_warned_about(images) -> None:
    vit = VisionTransformer(
        img_size=8, patch_size=4, in_chans=1, num_classes=3, embed_dim=8, depth=2, num_heads=2,
        drop_rate=0.1,
    ).train()  # fmt: skip
    with pytest.warns(UserWarning, match="evaluate: the model is in training mode"):
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
        (dict(targets=torch.zeros(6)), ValueError, "targets: expected an integer tensor"),
        (dict(targets=torch.tensor([0, 1, 2, 3, 0, 1])), ValueError, "the class 3 of image 3"),
        (dict(batch_size=0), ValueError, "batch_size"),
    ],
)
def test_bad_arguments_are_clear_errors(model, images, kwargs, error, match) -> None:
    with pytest.raises(error, match=match):
        evaluate(model, images, **kwargs)


class Unexpected(Attribution):
    def attribute(self, inputs, target=None):
        raise AssertionError("a method ran")


def test_more_groups_than_pixels_is_refused_before_any_method_runs(model, images) -> None:
    with pytest.raises(ValueError, match=r"n_groups: .* number of features \(64\), got 65"):
        evaluate(model, images, methods={"never": Unexpected(model)}, n_groups=65)


def test_inputs_without_images_are_a_value_error(model) -> None:
    with pytest.raises(ValueError, match="inputs"):
        evaluate(model, torch.zeros(0, 1, 8, 8))


@pytest.fixture(scope="module")
def result(model, images) -> EvaluationResult:
    return evaluate(model, images, methods=["random", "saliency"], metrics=["saco", "auc"])


def test_json_has_exactly_the_documented_schema(result) -> None:
    data = json.loads(result.to_json())
    assert set(data) == {
        "model",
        "n_images",
        "n_skipped",
        "results",
        "ci95_method",
        "comparisons",
        "p_value_method",
        "skipped",
        "cost",
    }
    assert data["n_images"] == 6 and data["model"] == "VisionTransformer"
    assert data["cost"]["images"] == 6
    for cost in data["cost"]["methods"].values():
        assert {"seconds_per_image", "scoring_seconds_per_image"} <= set(cost)
    assert data["n_skipped"] == 0 and data["skipped"] == []
    assert len(data["results"]) == 4
    for row in data["results"]:
        assert set(row) == {"method", "metric", "mean", "std", "n", "nan", "ci95"}
        low, high = row["ci95"]
        assert low <= row["mean"] <= high
    assert [(c["metric"], c["method_a"], c["method_b"]) for c in data["comparisons"]] == [
        ("saco", "random", "saliency"),
        ("auc", "random", "saliency"),
    ]
    assert set(data["comparisons"][0]) == {
        "metric",
        "method_a",
        "method_b",
        "a_better_fraction",
        "p_value",
    }


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
    assert float(rows[0]["ci95_low"]) == pytest.approx(result.rows[0].ci95[0])


def test_markdown_and_text_tables_have_methods_as_rows_and_metrics_as_columns(result) -> None:
    md = result.to_markdown().splitlines()
    assert md[0] == "| method | saco | auc |"
    assert md[2].startswith("| random | ") and md[3].startswith("| saliency | ")
    text = result.format_table().splitlines()
    assert text[0].split() == ["method", "saco", "auc"]
    r = result.row("saliency", "auc")
    low, high = r.ci95
    assert f"{r.mean:.4f} ± {r.std:.4f} [{low:.4f}, {high:.4f}] (0)" in text[3]
    assert "lower is better: auc" in text[-2] and "higher is better: saco" in text[-2]
    assert text[-1].startswith("95% confidence interval of the mean: percentile bootstrap")


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


def test_per_image_rows_hold_the_values_behind_the_table(model, images) -> None:
    result = evaluate(model, images, methods=["random", "saliency"], metrics=["saco", "aopc"])
    assert [(r["image"], r["method"]) for r in result.per_image] == [
        (i, m) for i in range(6) for m in ["random", "saliency"]
    ]
    with torch.no_grad():
        probabilities = model(images).double().softmax(1)
    predicted = probabilities.argmax(1)
    for r in result.per_image:
        i = r["image"]
        assert r["label"] is None and r["target"] == int(predicted[i])
        assert r["probability"] == pytest.approx(float(probabilities[i, r["target"]]))
        assert r["saco"] == result.per_example[(r["method"], "saco")][i].item()


class Labelled(torch.utils.data.Dataset):
    """``(image, label)`` items; item 3 cannot be read."""

    def __init__(self, images, labels):
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        if i == 3:
            raise OSError("cannot identify image file")
        return self.images[i], int(self.labels[i])


def test_a_data_set_is_streamed_with_its_labels_and_unreadable_items_skipped(model, images) -> None:
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    with pytest.warns(UserWarning, match=r"skipping the image 3: it cannot be read \(OSError"):
        result = evaluate(
            model,
            Labelled(images, labels),
            targets="label",
            methods=["random", "saliency"],
            metrics=["saco"],
            batch_size=4,
        )
    assert result.n_images == 5 and result.skipped == [3]
    kept = torch.tensor([0, 1, 2, 4, 5])
    direct = evaluate(
        model, images[kept], targets=labels[kept], methods=["saliency"], metrics=["saco"]
    )
    torch.testing.assert_close(
        result.per_example[("saliency", "saco")], direct.per_example[("saliency", "saco")]
    )
    assert [r["label"] for r in result.per_image[::2]] == labels[kept].tolist()


class Items(torch.utils.data.Dataset):
    """A data set of the given items."""

    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def test_data_sets_of_images_alone_tuples_and_numpy_arrays_give_the_tensor_result(
    model, images
) -> None:
    options = dict(methods=["saliency"], metrics=["saco"], batch_size=4)
    direct = evaluate(model, images, **options).per_example[("saliency", "saco")]
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    for data in (
        torch.utils.data.TensorDataset(images),  # items (image,)
        Items(list(images)),  # bare tensors
        Items([(image.numpy(), label) for image, label in zip(images, labels)]),  # label: 0-dim
        torch.utils.data.TensorDataset(images, labels, labels),  # more than (image, label)
        Items([(image, None) for image in images]),  # label None: unknown
    ):
        result = evaluate(model, data, **options)
        assert result.skipped == [], type(data).__name__
        torch.testing.assert_close(result.per_example[("saliency", "saco")], direct)


def test_an_image_of_another_shape_than_its_batch_is_skipped_with_a_warning(model, images) -> None:
    items = [(image, 0) for image in images]
    items[1] = (torch.zeros(1, 9, 9), 0)
    with pytest.warns(UserWarning, match=r"skipping the image 1: its shape \(1, 9, 9\) differs"):
        result = evaluate(model, Items(items), methods=["random"], metrics=["saco"], batch_size=3)
    assert result.skipped == [1] and result.n_images == 5


def test_a_data_set_whose_items_are_not_images_and_labels_is_a_clear_error(model, images):
    with pytest.raises(TypeError, match="item 0 of the data set has the label 'cat'"):
        evaluate(model, Items([(image, "cat") for image in images]), methods=["random"])
    with pytest.raises(TypeError, match="item 0 of the data set holds a str, not an image"):
        evaluate(model, Items([("image.png", 0)] * 6), methods=["random"])


def test_a_label_that_is_not_a_class_of_the_model_is_a_clear_error(model, images) -> None:
    items = Items([(image, 7 if i == 4 else 0) for i, image in enumerate(images)])
    with pytest.raises(ValueError, match="targets: the label 7 of image 4 is not a class"):
        evaluate(model, items, targets="label", methods=["random"], metrics=["saco"])
    unlabelled = torch.utils.data.TensorDataset(images)
    with pytest.raises(ValueError, match="needs a label per image, and image 0 has none"):
        evaluate(model, unlabelled, targets="label", methods=["random"], metrics=["saco"])


def test_target_label_needs_labels(model, images) -> None:
    with pytest.raises(ValueError, match="targets: 'label' needs a data set with labels"):
        evaluate(model, images, targets="label")


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_resuming_a_cut_per_image_file_gives_the_uninterrupted_result(
    model, images, tmp_path, suffix
) -> None:
    kwargs = dict(methods=["random", "saliency"], metrics=["saco", "aopc"], batch_size=2)
    full_path = tmp_path / f"full{suffix}"
    full = evaluate(model, images, per_image_file=str(full_path), **kwargs)
    # As a run killed in its second batch, in the middle of writing a row.
    lines = full_path.read_text().splitlines(keepends=True)
    header = 1 if suffix == ".csv" else 0
    cut = tmp_path / f"cut{suffix}"
    cut.write_text("".join(lines[: header + 4]) + lines[header + 4][:10])
    settings = tmp_path / f"full{suffix}.settings.json"
    (tmp_path / f"cut{suffix}.settings.json").write_text(settings.read_text())
    calls = []
    saliency = Saliency(model)
    original = saliency.attribute
    saliency.attribute = lambda x, **kw: calls.append(len(x)) or original(x, **kw)
    methods = {"random": "random", "saliency": saliency}
    resumed = evaluate(
        model,
        images,
        per_image_file=str(cut),
        resume=True,
        metrics=["saco", "aopc"],
        methods=methods,
        batch_size=2,
    )
    assert calls == [2, 2]  # the first batch (two images) was not evaluated again
    measured = resumed.to_dict().pop("cost"), full.to_dict().pop("cost")  # times differ
    assert measured[0]["images"] == measured[1]["images"] == 6
    assert {**resumed.to_dict(), "cost": None} == {**full.to_dict(), "cost": None}
    assert resumed.per_image == full.per_image
    assert cut.read_text() == full_path.read_text()


RANDOM_SACO = dict(methods=["random"], metrics=["saco"])


class BatchSizes(Attribution):
    """Gradient-free maps (the inputs' magnitude) that record the batch sizes."""

    def __init__(self) -> None:
        self.sizes = []

    def attribute(self, inputs, target=None):
        self.sizes.append(len(inputs))
        return inputs.abs()


def test_a_resumed_run_reruns_a_partly_written_batch_whole(model, images, tmp_path) -> None:
    # An image's float32 values may depend on its batch: a resumed run forms the
    # batches of the uninterrupted one, even where part of a batch was written.
    path = tmp_path / "rows.jsonl"
    full = evaluate(model, images, methods={"m": BatchSizes()}, per_image_file=str(path))
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:3]))  # images 0 to 2 of the batch of 6
    method = BatchSizes()
    resumed = evaluate(model, images, methods={"m": method}, per_image_file=str(path), resume=True)
    assert method.sizes == [6]
    assert resumed.per_image == full.per_image


@pytest.mark.parametrize(
    "change",
    [
        {"n_groups": 4},
        {"seed": 9},
        {"batch_size": 4},
        {"methods": ["random"]},
        {"metrics": ["aopc"]},
        {"targets": "predicted"},
    ],
)
def test_resume_refuses_a_file_written_with_other_settings(model, images, tmp_path, change) -> None:
    settings = dict(
        methods=["random", "saliency"], metrics=["saco"], targets=torch.zeros(6, dtype=torch.long)
    )
    path = str(tmp_path / "rows.jsonl")
    evaluate(model, images, per_image_file=path, **settings)
    before = open(path).read()
    name = next(iter(change))
    with pytest.raises(
        ValueError, match=rf"per_image_file: .* was written with {name}=.*and this run has {name}="
    ):
        evaluate(model, images, per_image_file=path, resume=True, **{**settings, **change})
    assert open(path).read() == before  # the other methods' rows are kept


def test_resume_warns_that_a_file_without_its_settings_cannot_be_checked(
    model, images, tmp_path
) -> None:
    path = tmp_path / "rows.jsonl"
    evaluate(model, images, per_image_file=str(path), **RANDOM_SACO)
    (tmp_path / "rows.jsonl.settings.json").unlink()
    with pytest.warns(UserWarning, match=r"rows.jsonl.settings.json' is missing") as caught:
        evaluate(model, images, per_image_file=str(path), resume=True, **RANDOM_SACO)
    assert caught[0].filename == __file__


@pytest.mark.parametrize(
    "name, text, match",
    [
        ("rows.jsonl", '{"image": 0, "label": null\n', "a line that is not JSON"),
        ("rows.jsonl", '{"image": 0}\n', r"the row .*KeyError"),
        ("rows.csv", "image,label,target,probability,method,saco\n0,,1\n", "a row without the 6"),
        (
            "rows.csv",
            "image,label,target,probability,method,saco\n0,,x,0.5,random,0.1\n",
            "ValueError",
        ),
    ],
)
def test_resume_refuses_a_file_it_cannot_read_by_name(model, images, tmp_path, name, text, match):
    path = tmp_path / name
    path.write_text(text)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the file has no settings beside it
        with pytest.raises(ValueError, match=rf"per_image_file: .*{name}' holds .*{match}"):
            evaluate(model, images, per_image_file=str(path), resume=True, **RANDOM_SACO)


class Named(Items):
    """Items whose names hold line breaks, as a file name may."""

    def key(self, i):
        return ["a\nb.png", "c\u2028d.png", "e\rf.png", "plain.png", "g,h.png", 'i"j.png'][i]


def test_a_csv_per_image_file_keeps_names_with_line_breaks_when_resumed(
    model, images, tmp_path
) -> None:
    path = str(tmp_path / "rows.csv")
    data = Named([(image, 0) for image in images])
    full = evaluate(model, data, per_image_file=path, **RANDOM_SACO)
    again = evaluate(model, data, per_image_file=path, resume=True, **RANDOM_SACO)
    assert [r["image"] for r in again.per_image] == [data.key(i) for i in range(6)]
    assert again.per_image == full.per_image


def test_warnings_of_a_batch_name_its_images(model, images, tmp_path) -> None:
    zeroed = images.clone()
    zeroed[4] = 0  # its map is constant: SaCo is undefined
    with pytest.warns(UserWarning, match=r"1 of 2 examples \(images \[4\]\)"):
        evaluate(model, zeroed, methods={"m": BatchSizes()}, metrics=["saco"], batch_size=2)


def test_an_iterable_data_set_and_a_seed_out_of_range_are_refused_by_name(model, images) -> None:
    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            return iter(images)

    with pytest.raises(ValueError, match="inputs: expected a map-style data set"):
        evaluate(model, Stream(), methods=["random"])
    for seed in (-1, 2**64, 1.5, True):
        with pytest.raises(ValueError, match=r"seed: expected an int in \[0, 2\*\*62\]"):
            evaluate(model, images, methods=["random"], seed=seed)


def test_resume_without_a_per_image_file_is_a_value_error(model, images) -> None:
    with pytest.raises(ValueError, match="resume: needs per_image_file"):
        evaluate(model, images, resume=True)


def test_confidence_intervals_are_seeded_bootstraps_of_the_mean(result) -> None:
    from captum_saco.evaluation.statistics import bootstrap_ci95

    values = result.per_example[("saliency", "saco")]
    assert result.row("saliency", "saco").ci95 == bootstrap_ci95(values)
    low, high = bootstrap_ci95(values)
    mean, sem = values.mean().item(), values.std().item() / len(values) ** 0.5
    # About the t-interval's width for a roughly symmetric sample.
    assert low < mean < high and 2 * sem < high - low < 6 * sem


def test_paired_comparisons_count_better_images_and_test_with_wilcoxon(result) -> None:
    from scipy.stats import wilcoxon

    saco_pair = next(c for c in result.comparisons if c["metric"] == "saco")
    auc_pair = next(c for c in result.comparisons if c["metric"] == "auc")
    a, b = result.per_example[("random", "saco")], result.per_example[("saliency", "saco")]
    assert saco_pair["a_better_fraction"] == (a > b).double().mean().item()
    assert saco_pair["p_value"] == pytest.approx(wilcoxon(a.numpy(), b.numpy()).pvalue)
    a, b = result.per_example[("random", "auc")], result.per_example[("saliency", "auc")]
    assert auc_pair["a_better_fraction"] == (a < b).double().mean().item()  # lower is better
    text = str(result)
    assert "Paired comparison with random" in text and "Wilcoxon signed-rank" in text


def test_rows_resampled_together_get_the_intervals_of_their_own_seeded_resamples() -> None:
    from captum_saco.evaluation.statistics import BOOTSTRAP_RESAMPLES, bootstrap_ci95s

    torch.manual_seed(5)
    rows = [torch.randn(30, dtype=torch.float64) for _ in range(3)]
    rows[1][[2, 7]] = float("nan")  # 28 defined values: resampled on its own
    rows.append(torch.full((30,), float("nan"), dtype=torch.float64))

    def by_definition(values: torch.Tensor):
        defined = values[~torch.isnan(values)]
        generator = torch.Generator().manual_seed(0)
        means = torch.cat(
            [
                defined[torch.randint(len(defined), (50, len(defined)), generator=generator)].mean(
                    1
                )
                for _ in range(BOOTSTRAP_RESAMPLES // 50)
            ]
        )
        return torch.quantile(means, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()

    intervals = bootstrap_ci95s(rows)
    for row, interval in zip(rows[:3], intervals):
        assert interval == pytest.approx(by_definition(row), abs=1e-12)
    assert intervals[3] is None


def test_pairs_tested_in_one_call_get_the_p_values_of_one_test_each() -> None:
    from scipy.stats import wilcoxon

    from captum_saco.evaluation.statistics import comparisons

    torch.manual_seed(6)
    # 40 images: SciPy tests exactly where no difference is zero or tied, otherwise
    # by the normal approximation; rounded values give zeros and ties, NaN fewer pairs.
    methods = ["a", "b", "c", "d", "e", "f", "g"]
    per_example = {(m, "saco"): torch.randn(40, dtype=torch.float64) for m in methods}
    for m in ("c", "e", "g"):
        per_example[(m, "saco")] = per_example[(m, "saco")].round(decimals=1)
    per_example[("g", "saco")] += 0.05  # e - g: tied differences, none zero
    per_example[("c", "saco")][:5] = float("nan")
    per_example[("d", "saco")] = per_example[("a", "saco")].clone()
    per_example[("f", "saco")] = per_example[("b", "saco")].clone()
    per_example[("f", "saco")][7] = per_example[("a", "saco")][7]  # one zero difference
    rows = comparisons(per_example, methods, {"saco": "higher is better"})
    assert len(rows) == 21
    for row in rows:
        a, b = per_example[(row["method_a"], "saco")], per_example[(row["method_b"], "saco")]
        both = ~(a.isnan() | b.isnan())
        if torch.equal(a[both], b[both]):
            assert row["p_value"] is None
        else:
            expected = wilcoxon(a[both].numpy(), b[both].numpy()).pvalue
            assert row["p_value"] == pytest.approx(expected, rel=1e-12)


def test_without_scipy_the_output_says_p_values_are_missing(result, monkeypatch) -> None:
    import sys

    from captum_saco.evaluation.statistics import comparisons

    monkeypatch.setitem(sys.modules, "scipy.stats", None)
    rows = comparisons(result.per_example, result.methods, {"saco": "higher is better"})
    assert rows[0]["p_value"] is None and rows[0]["a_better_fraction"] is not None
    assert "p-values need SciPy, which is not installed" in str(result)
    assert "SciPy, which is not installed" in json.loads(result.to_json())["p_value_method"]


def test_files_are_written_in_utf8_whatever_the_locale(tmp_path) -> None:
    path = tmp_path / "names.csv"
    script = (
        "import locale, sys\n"
        "from captum_saco.evaluation.result import write_atomically\n"
        "assert locale.getpreferredencoding(False).lower() not in ('utf-8', 'utf8')\n"
        "write_atomically(sys.argv[1], 'caf\\u00e9 \\u2028')\n"
    )
    ascii_locale = {"LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    subprocess.run(
        [sys.executable, "-c", script, str(path)], env={**os.environ, **ascii_locale}, check=True
    )
    assert path.read_bytes() == "caf\u00e9 \u2028".encode("utf-8")


def test_a_failed_plot_write_leaves_the_previous_plot_whole(result, tmp_path, monkeypatch) -> None:
    from matplotlib.figure import Figure

    path = tmp_path / "plot.png"
    plot_evaluation(result, str(path))
    before = path.read_bytes()

    def full_disk(self, fname, **kwargs):
        with open(fname, "wb") as f:
            f.write(before[:100])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", full_disk)
    with pytest.raises(OSError, match="No space left"):
        plot_evaluation(result, str(path))
    assert path.read_bytes() == before
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_a_fresh_run_replaces_an_earlier_runs_parts_and_leaves_other_files(
    model, images, tmp_path
) -> None:
    path = tmp_path / "rows.jsonl"
    kwargs = dict(RANDOM_SACO, per_image_file=str(path))
    evaluate(model, images, seed=1, **kwargs)
    # the parts of an earlier torchrun run, which a later resume would read
    (tmp_path / "rows.jsonl.rank1").write_text(path.read_text())
    (tmp_path / "rows.jsonl.ranking.txt").write_text("the user's notes")
    fresh = evaluate(model, images, seed=0, **kwargs)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "rows.jsonl",
        "rows.jsonl.ranking.txt",
        "rows.jsonl.settings.json",
    ]
    resumed = evaluate(model, images, seed=0, resume=True, **kwargs)
    assert resumed.per_image == fresh.per_image


@pytest.mark.parametrize(
    "damage, match",
    [
        ("rows", "bytes that are not UTF-8 text"),
        ("settings not UTF-8", "settings.json' holds no settings"),
        ("settings not an object", r"holds no settings \(a JSON list\)"),
        ("settings a folder", "settings.json', where its settings go, is a folder"),
    ],
)
def test_resume_refuses_a_damaged_file_or_settings_by_name(
    model, images, tmp_path, damage, match
) -> None:
    path = tmp_path / "rows.csv"
    evaluate(model, images, per_image_file=str(path), **RANDOM_SACO)
    settings = tmp_path / "rows.csv.settings.json"
    if damage == "rows":
        path.write_bytes(path.read_bytes() + b"\xff\xfe,\r\n")
    elif damage == "settings not UTF-8":
        settings.write_bytes(b"\xff{}")
    elif damage == "settings not an object":
        settings.write_text("[]")
    else:
        settings.unlink()
        settings.mkdir()
    with pytest.raises(ValueError, match=rf"per_image_file: .*{match}"):
        evaluate(model, images, per_image_file=str(path), resume=True, **RANDOM_SACO)


def test_resume_refuses_other_images(model, images, tmp_path) -> None:
    path = str(tmp_path / "rows.jsonl")
    evaluate(model, images, per_image_file=path, **RANDOM_SACO)
    with pytest.raises(ValueError, match=r"was written with images='6 \(names sha256 .*'2 \("):
        evaluate(model, images[:2], per_image_file=path, resume=True, **RANDOM_SACO)
    other_names = Named([(image, 0) for image in images])
    with pytest.raises(ValueError, match="was written with images="):
        evaluate(model, other_names, per_image_file=path, resume=True, **RANDOM_SACO)


def test_files_behind_symbolic_links_are_written_and_the_links_kept(
    model, images, tmp_path
) -> None:
    (tmp_path / "data").mkdir()
    for name in ("rows.jsonl", "table.md"):
        (tmp_path / "data" / name).write_text("old")
        (tmp_path / name).symlink_to(tmp_path / "data" / name)
    result = evaluate(model, images, per_image_file=str(tmp_path / "rows.jsonl"), **RANDOM_SACO)
    result.save(str(tmp_path / "table.md"))
    for name in ("rows.jsonl", "table.md"):
        assert (tmp_path / name).is_symlink()
        assert (tmp_path / "data" / name).read_text() != "old"
    rows = (tmp_path / "data" / "rows.jsonl").read_text().splitlines()
    assert len(rows) == 6


def test_markdown_cells_keep_pipes_and_line_breaks_of_method_names(model, images) -> None:
    result = evaluate(model, images, methods={"a|b\nc": "random"}, metrics=["saco"])
    header, _, row = result.to_markdown().splitlines()[:3]
    assert row.startswith("| a\\|b c | ")

    def cells(line: str) -> int:
        return len(re.findall(r"(?<!\\)\|", line)) - 1

    assert cells(row) == cells(header) == 2


@pytest.mark.parametrize("seed", [-1, 1.5, "0"])
def test_the_case_study_refuses_a_seed_as_evaluate_does(model, images, seed) -> None:
    with pytest.raises(ValueError, match=r"seed: expected an int in \[0, 2\*\*62\]"):
        saco_case_study(model, images, 0, methods=["random"], seed=seed)
