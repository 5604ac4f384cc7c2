import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from captum_saco.cli import DEFAULT_LIMIT, build_parser, main
from captum_saco.datasets import fashion_mnist, load_fashion_mnist_vit
from captum_saco.evaluation import DEFAULT_METHODS, DEFAULT_METRICS

# On the CPU: a GPU's non-deterministic kernels (the saliency's backward pass)
# would make the tables that these tests compare differ in the last digits.
FAST = [
    "--methods", "random", "saliency", "--metrics", "saco", "aopc", "--no-progress",
    "--device", "cpu",
]  # fmt: skip


def tiny_cnn() -> torch.nn.Module:
    """A ``module:function`` model for ``--model test_cli:tiny_cnn``."""
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 2, 5, stride=8),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(8, 4),
    )


def slow_fashion_vit() -> torch.nn.Module:
    """The embedded ViT slowed down by 20 ms per forward call, so that a test
    can interrupt a run mid-way."""
    model = load_fashion_mnist_vit()
    model.register_forward_pre_hook(lambda module, args: time.sleep(0.02))
    return model


def not_a_model() -> str:
    return "model"


def raising_model() -> torch.nn.Module:
    raise RuntimeError("the checkpoint is corrupt")


def vit_without_data_config() -> torch.nn.Module:
    """A timm ViT for 32-px images without ``pretrained_cfg``: timm's default
    data config resizes images to 224 px, which it does not accept."""
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    return VisionTransformer(
        img_size=32, patch_size=8, embed_dim=16, depth=1, num_heads=2, num_classes=3
    ).eval()


def decompression_bomb_png(path: Path) -> None:
    """A valid PNG whose header declares 40000 x 40000 pixels (Pillow refuses
    to decode more than 2 x 89 million)."""
    import struct
    import zlib

    Image.new("L", (8, 8)).save(path)
    data = bytearray(path.read_bytes())
    ihdr = 8 + 8  # signature, then the IHDR chunk's length and type
    data[ihdr : ihdr + 8] = struct.pack(">II", 40000, 40000)
    crc = zlib.crc32(bytes(data[ihdr - 4 : ihdr + 13]))
    data[ihdr + 13 : ihdr + 17] = struct.pack(">I", crc)
    path.write_bytes(bytes(data))


def run_cli(capsys, *args: str):
    rc = main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_sentence_error(rc: int, err: str, match: str) -> None:
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("captum-saco: error: ") and match in lines[0]
    assert "Traceback" not in err


@pytest.fixture
def grey_folder(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 30), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    return tmp_path


def test_defaults_are_the_embedded_model_all_methods_and_metrics() -> None:
    args = build_parser().parse_args([])
    assert args.model == "fashion_mnist_vit" and args.images is None
    assert args.limit is None and args.n_groups == 10
    assert f"first {DEFAULT_LIMIT} shipped images" in build_parser().format_help()


def test_all_default_methods_and_metrics_print_one_table(capsys) -> None:
    rc, out, err = run_cli(capsys, "--limit", "2", "--batch-size", "2", "--no-progress")
    assert rc == 0
    lines = out.splitlines()
    assert lines[0].split() == ["method", *DEFAULT_METRICS]
    assert [line.split()[0] for line in lines[2 : 2 + len(DEFAULT_METHODS)]] == list(
        DEFAULT_METHODS
    )
    legend = lines[2 + len(DEFAULT_METHODS) + 1]
    assert legend.startswith("fashion_mnist_vit, 2 images")
    assert "Paired comparison with random" in out


def test_json_output_follows_the_schema(capsys, tmp_path) -> None:
    path = tmp_path / "table.json"
    rc, out, _ = run_cli(capsys, "--limit", "3", *FAST, "--output", str(path))
    assert rc == 0
    data = json.loads(path.read_text())
    assert data["model"] == "fashion_mnist_vit" and data["n_images"] == 3
    assert [(r["method"], r["metric"]) for r in data["results"]] == [
        ("random", "saco"),
        ("random", "aopc"),
        ("saliency", "saco"),
        ("saliency", "aopc"),
    ]
    assert all(
        set(r) == {"method", "metric", "mean", "std", "n", "nan", "ci95"} for r in data["results"]
    )
    assert f"{data['results'][0]['mean']:.4f}" in out


def test_csv_and_markdown_outputs_follow_the_suffix(capsys, tmp_path) -> None:
    assert run_cli(capsys, "--limit", "2", *FAST, "--output", str(tmp_path / "t.csv"))[0] == 0
    rows = list(csv.DictReader(io.StringIO((tmp_path / "t.csv").read_text())))
    assert len(rows) == 4 and rows[0]["method"] == "random"
    assert run_cli(capsys, "--limit", "2", *FAST, "--output", str(tmp_path / "t.md"))[0] == 0
    assert (tmp_path / "t.md").read_text().startswith("| method | saco | aopc |")


def test_methods_and_metrics_accept_commas(capsys, tmp_path) -> None:
    path = tmp_path / "t.json"
    args = [
        "--limit",
        "2",
        "--methods",
        "random,saliency",
        "--metrics",
        "auc",
        "--output",
        str(path),
    ]
    assert run_cli(capsys, *args)[0] == 0
    assert len(json.loads(path.read_text())["results"]) == 2


def test_plot_is_a_png(capsys, tmp_path) -> None:
    path = tmp_path / "plot.png"
    assert run_cli(capsys, "--limit", "2", *FAST, "--plot", str(path))[0] == 0
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_image_folder_is_resized_and_normalised_for_the_embedded_model(
    capsys, grey_folder, tmp_path
) -> None:
    path = tmp_path / "t.json"
    rc, _, _ = run_cli(capsys, "--images", str(grey_folder), *FAST, "--output", str(path))
    assert rc == 0
    assert json.loads(path.read_text())["n_images"] == 3


def test_a_module_function_model_runs_on_an_image_folder(capsys, tmp_path) -> None:
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (50, 60, 3), dtype=np.uint8)).save(
            tmp_path / f"{i}.jpg"
        )
    path = tmp_path / "t.json"
    rc, _, err = run_cli(
        capsys,
        "--model",
        f"{__name__}:tiny_cnn",
        "--images",
        str(tmp_path),
        *FAST,
        "--output",
        str(path),
    )
    assert rc == 0, err
    data = json.loads(path.read_text())
    assert data["model"] == f"{__name__}:tiny_cnn" and data["n_images"] == 2


@pytest.mark.parametrize(
    "args, match",
    [
        (["--methods", "random", "gradcam"], "unknown method 'gradcam'"),
        (["--metrics", "infidelity"], "unknown metric 'infidelity'"),
        (["--output", "table.txt"], "--output must end in .json, .csv or .md"),
        (["--output", "/no/such/folder/t.json"], "does not exist"),
        (["--plot", "plot.jpg"], "--plot must end in .png"),
        (["--images", "/no/such/folder"], "is not a folder"),
        (["--model", "no_such_model_anywhere"], "neither a timm model name nor 'module:function'"),
        (["--model", "no_such_module:f"], "cannot import 'f' from 'no_such_module'"),
        (["--model", f"{__name__}:not_a_model", "--images", "."], "not a torch.nn.Module"),
        (["--model", f"{__name__}:tiny_cnn"], "--model needs --images"),
        (["--pretrained"], "--pretrained applies to timm models"),
        (["--device", "tpu:x"], "is not a device"),
        (["--device", "meta"], "--device meta holds no data"),
        (["--device", "mps"], "MPS is not available"),
        (["--methods", ","], "--methods expects at least one name"),
        (["--metrics", ","], "--metrics expects at least one name"),
        (
            ["--model", f"{__name__}:raising_model"],
            "raised RuntimeError: the checkpoint is corrupt",
        ),
    ],
)
def test_user_errors_are_one_sentence_and_exit_status_2(capsys, args, match) -> None:
    rc, _, err = run_cli(capsys, *args)
    assert_one_sentence_error(rc, err, match)


def test_a_folder_without_readable_images_is_a_clear_error(capsys, tmp_path) -> None:
    (tmp_path / "notes.txt").write_text("no images here")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    rc, _, err = run_cli(capsys, "--images", str(tmp_path))
    assert_one_sentence_error(rc, err, "holds no readable image")


def test_an_empty_folder_is_a_clear_error(capsys, tmp_path) -> None:
    rc, _, err = run_cli(capsys, "--images", str(tmp_path))
    assert_one_sentence_error(rc, err, "holds no files")


def test_unreadable_files_are_skipped_with_a_warning_naming_each_and_counted(
    capsys, grey_folder, tmp_path
) -> None:
    (grey_folder / "broken.png").write_bytes(b"not a png")
    path = tmp_path / "t.json"
    with pytest.warns(UserWarning) as caught:
        rc, out, _ = run_cli(capsys, "--images", str(grey_folder), *FAST, "--output", str(path))
    assert rc == 0
    messages = [str(w.message) for w in caught]
    skipped = sorted(m.split("'")[1] for m in messages if "cannot be read" in m)
    assert skipped == ["broken.png", "notes.txt"]
    data = json.loads(path.read_text())
    assert data["n_images"] == 3 and data["n_skipped"] == 2
    assert "3 images (2 skipped)" in out


def test_pretrained_weights_that_cannot_be_downloaded_are_a_clear_error(
    capsys, monkeypatch, tmp_path
) -> None:
    # As without a network, but without waiting for the retries.
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    rc, _, err = run_cli(capsys, "--model", "resnet18", "--pretrained", "--images", ".")
    assert_one_sentence_error(rc, err, "cannot load the pretrained weights of 'resnet18'")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_cuda_device_without_cuda_is_a_clear_error(capsys) -> None:
    rc, _, err = run_cli(capsys, "--device", "cuda")
    assert_one_sentence_error(rc, err, "CUDA is not available")


def test_a_non_positive_limit_is_rejected_by_the_parser(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--limit", "0"])
    assert exit_info.value.code == 2
    assert "expected a positive integer" in capsys.readouterr().err


def _subprocess_env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def test_python_dash_m_runs_the_command(tmp_path) -> None:
    path = tmp_path / "t.json"
    proc = subprocess.run(
        [sys.executable, "-m", "captum_saco", "--limit", "2", *FAST, "--output", str(path)],
        capture_output=True,
        text=True,
        env=_subprocess_env(),
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0].split() == ["method", "saco", "aopc"]
    assert json.loads(path.read_text())["n_images"] == 2


def test_console_script_reports_errors_with_exit_status_2() -> None:
    script = Path(sys.executable).with_name("captum-saco")
    assert script.exists(), f"the install did not create the console script {script}"
    proc = subprocess.run(
        [str(script), "--methods", "nope"], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 2 and "unknown method 'nope'" in proc.stderr


def test_torchrun_with_two_processes_gives_the_single_process_table(capsys, tmp_path) -> None:
    images = tmp_path / "pngs"
    shipped_images_as_pngs(images, 8, class_folders=False)
    for k in range(3):  # unreadable, at positions 1, 3 and 5: batches of ranks 0, 1, 0
        (images / f"{k:04d}a.txt").write_text("not an image")
    args = [
        "--images",
        str(images),
        "--batch-size",
        "2",
        "--methods",
        "random",
        "raw_attention",
        "saliency",
        "--metrics",
        "saco",
        "aopc",
        "--no-progress",
        "--device",
        "cpu",
    ]
    distributed = tmp_path / "distributed.json"
    proc = subprocess.run(
        [*_command(True), *args, "--output", str(distributed)],
        capture_output=True,
        text=True,
        env=_subprocess_env(),
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    # Only the first process prints the table.
    assert proc.stdout.count("fashion_mnist_vit, 8 images") == 1
    single = tmp_path / "single.json"
    assert run_cli(capsys, *args, "--output", str(single))[0] == 0
    got, expected = json.loads(distributed.read_text()), json.loads(single.read_text())
    assert got["n_images"] == expected["n_images"] == 8
    assert got["skipped"] == expected["skipped"] == ["0000a.txt", "0001a.txt", "0002a.txt"]
    for g, e in zip(got["results"], expected["results"], strict=True):
        assert (g["method"], g["metric"], g["n"], g["nan"]) == (
            e["method"],
            e["metric"],
            e["n"],
            e["nan"],
        )
        assert g["mean"] == pytest.approx(e["mean"], abs=1e-6)
        assert g["std"] == pytest.approx(e["std"], abs=1e-6)


def test_a_library_bug_keeps_its_traceback_instead_of_a_usage_error(monkeypatch) -> None:
    def broken(*args, **kwargs):
        raise ValueError("an internal inconsistency")

    monkeypatch.setattr("captum_saco.cli.evaluate", broken)
    with pytest.raises(ValueError, match="an internal inconsistency"):
        main(["--limit", "2", *FAST])


def test_a_timm_model_that_fails_to_build_without_pretrained_does_not_blame_the_network(
    monkeypatch,
) -> None:
    def failing_create_model(name, **kwargs):
        raise RuntimeError("bad configuration")

    monkeypatch.setattr("timm.create_model", failing_create_model)
    with pytest.raises(RuntimeError, match="bad configuration"):
        main(["--model", "resnet18", "--images", ".", *FAST])


@pytest.mark.parametrize("option, value", [("--n-groups", "1"), ("--seed", "-1")])
def test_out_of_range_numbers_are_rejected_by_the_parser(capsys, option, value) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([option, value])
    assert exit_info.value.code == 2
    assert f"argument {option}: expected" in capsys.readouterr().err


def test_more_groups_than_pixels_is_a_clear_error_before_any_image_is_explained(
    capsys, monkeypatch
) -> None:
    def never(*args, **kwargs):
        raise AssertionError("evaluate ran")

    monkeypatch.setattr("captum_saco.cli.evaluate", never)
    rc, _, err = run_cli(capsys, "--n-groups", "785", "--limit", "2", *FAST)
    assert_one_sentence_error(rc, err, "--n-groups 785 exceeds the 784 pixels of an image")


def test_a_model_that_does_not_accept_its_resized_images_is_a_clear_error(
    capsys, grey_folder
) -> None:
    rc, _, err = run_cli(
        capsys,
        "--model",
        f"{__name__}:vit_without_data_config",
        "--images",
        str(grey_folder),
        *FAST,
    )
    assert_one_sentence_error(rc, err, "does not accept the images as prepared for it (3x224x224)")


def test_a_decompression_bomb_alone_is_a_clear_error(capsys, tmp_path) -> None:
    decompression_bomb_png(tmp_path / "bomb.png")
    rc, _, err = run_cli(capsys, "--images", str(tmp_path), *FAST)
    assert_one_sentence_error(rc, err, "holds no readable image")


def test_a_decompression_bomb_among_images_is_skipped_with_a_warning(capsys, grey_folder) -> None:
    decompression_bomb_png(grey_folder / "bomb.png")
    with pytest.warns(UserWarning, match=r"'bomb.png': it cannot be read \(DecompressionBombError"):
        rc, out, _ = run_cli(capsys, "--images", str(grey_folder), *FAST)
    assert rc == 0 and "3 images (2 skipped)" in out


@pytest.mark.parametrize("option, name", [("--output", "d.json"), ("--plot", "d.png")])
def test_an_output_that_is_a_folder_fails_before_any_work(
    capsys, monkeypatch, tmp_path, option, name
) -> None:
    monkeypatch.setattr("captum_saco.cli.evaluate", lambda *a, **k: pytest.fail("evaluated"))
    (tmp_path / name).mkdir()
    rc, _, err = run_cli(capsys, option, str(tmp_path / name), *FAST)
    assert_one_sentence_error(rc, err, f"{option}: ")


@pytest.mark.parametrize("option, name", [("--output", "t.json"), ("--plot", "t.png")])
def test_an_output_in_a_read_only_folder_fails_before_any_work(
    capsys, monkeypatch, option, name
) -> None:
    monkeypatch.setattr("captum_saco.cli.evaluate", lambda *a, **k: pytest.fail("evaluated"))
    # /proc refuses new files even to root, for whom permission bits do not count.
    rc, _, err = run_cli(capsys, option, f"/proc/{name}", *FAST)
    assert_one_sentence_error(rc, err, f"{option}: cannot write in the folder of")


def shipped_images_as_pngs(root: Path, n: int, class_folders: bool) -> None:
    """The first ``n`` shipped Fashion-MNIST test images as the PNG files they
    were (uint8 pixels), flat or in class subfolders ``c0`` ... ``c9``."""
    raw = torch.load(fashion_mnist.DATA_DIR / fashion_mnist.SAMPLES_FILE, weights_only=True)
    for i in range(n):
        folder = root / f"c{int(raw['labels'][i])}" if class_folders else root
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(raw["images"][i].numpy()).save(folder / f"{i:04d}.png")


def test_pngs_of_the_shipped_images_give_the_numbers_of_the_shipped_tensors(
    capsys, tmp_path
) -> None:
    shipped_images_as_pngs(tmp_path / "pngs", 6, class_folders=False)
    from_files, shipped = tmp_path / "files.json", tmp_path / "shipped.json"
    args = [*FAST, "--batch-size", "4"]
    assert (
        run_cli(capsys, "--images", str(tmp_path / "pngs"), *args, "--output", str(from_files))[0]
        == 0
    )
    assert run_cli(capsys, "--limit", "6", *args, "--output", str(shipped))[0] == 0
    assert (
        json.loads(from_files.read_text())["results"] == json.loads(shipped.read_text())["results"]
    )


def test_two_reading_workers_give_the_numbers_of_none(capsys, tmp_path) -> None:
    shipped_images_as_pngs(tmp_path / "pngs", 6, class_folders=True)
    tables = []
    for workers in ["0", "2"]:
        path = tmp_path / f"w{workers}.json"
        args = [
            "--images",
            str(tmp_path / "pngs"),
            *FAST,
            "--batch-size",
            "4",
            "--workers",
            workers,
        ]
        assert run_cli(capsys, *args, "--output", str(path))[0] == 0
        tables.append(json.loads(path.read_text())["results"])
    assert tables[0] == tables[1]


def test_target_label_needs_class_folders(capsys, grey_folder) -> None:
    rc, _, err = run_cli(capsys, "--images", str(grey_folder), "--target", "label", *FAST)
    assert_one_sentence_error(rc, err, "--target label needs class subfolders")


def test_more_class_folders_than_model_outputs_is_a_clear_error_before_any_work(
    capsys, tmp_path, monkeypatch
) -> None:
    def never(*args, **kwargs):
        raise AssertionError("evaluate ran")

    monkeypatch.setattr("captum_saco.cli.evaluate", never)
    for k in range(11):  # for a model of 10 classes
        (tmp_path / f"k{k:02d}").mkdir()
        Image.new("L", (28, 28)).save(tmp_path / f"k{k:02d}" / "0.png")
    rc, _, err = run_cli(capsys, "--images", str(tmp_path), "--target", "label", *FAST)
    assert_one_sentence_error(rc, err, "has 11 class folders, labelled 0 to 10, and --model")


def test_the_same_file_for_output_and_per_image_is_refused_before_any_work(
    capsys, tmp_path
) -> None:
    path = str(tmp_path / "rows.csv")
    rc, _, err = run_cli(capsys, "--limit", "2", *FAST, "--per-image", path, "--output", path)
    assert_one_sentence_error(rc, err, "would overwrite the per-image results of --per-image")
    assert not (tmp_path / "rows.csv").exists()


def test_the_embedded_model_without_timm_is_one_sentence_naming_the_extra(
    capsys, monkeypatch
) -> None:
    def without_timm():
        raise ImportError("the embedded ViT needs timm: pip install 'captum-saco[timm]'")

    monkeypatch.setattr("captum_saco.datasets.load_fashion_mnist_vit", without_timm)
    rc, _, err = run_cli(capsys, "--limit", "2", *FAST)
    assert_one_sentence_error(rc, err, "--model fashion_mnist_vit: the embedded ViT needs timm")


def test_a_folder_where_the_per_image_settings_go_is_refused_before_any_work(
    capsys, tmp_path
) -> None:
    (tmp_path / "rows.csv.settings.json").mkdir()
    rc, _, err = run_cli(capsys, "--limit", "2", *FAST, "--per-image", str(tmp_path / "rows.csv"))
    assert_one_sentence_error(rc, err, "rows.csv.settings.json' is a folder, not a file name")
    assert not (tmp_path / "rows.csv").exists()


def test_an_argument_that_evaluate_refuses_is_one_sentence_naming_the_option(
    capsys, tmp_path
) -> None:
    path = str(tmp_path / "rows.jsonl")
    assert run_cli(capsys, "--limit", "2", *FAST, "--per-image", path)[0] == 0
    args = ["--limit", "2", *FAST, "--seed", "3", "--per-image", path, "--resume"]
    rc, _, err = run_cli(capsys, *args)
    assert_one_sentence_error(rc, err, "--per-image: ")
    assert "was written with seed=0, and this run has seed=3" in err
    images = tmp_path / "rgb"
    images.mkdir()
    Image.new("RGB", (50, 60)).save(images / "0.png")
    model = ["--model", f"{__name__}:tiny_cnn", "--images", str(images)]
    rc, _, err = run_cli(capsys, *model, "--methods", "raw_attention", "--no-progress")
    assert_one_sentence_error(rc, err, "--model: Sequential is not a supported Vision Transformer")


def test_resume_needs_a_per_image_file(capsys) -> None:
    rc, _, err = run_cli(capsys, "--resume", *FAST)
    assert_one_sentence_error(rc, err, "--resume needs --per-image FILE")


def test_per_image_csv_has_one_row_per_image_and_method_with_labels_and_targets(
    capsys, tmp_path
) -> None:
    shipped_images_as_pngs(tmp_path / "pngs", 3, class_folders=True)
    path = tmp_path / "rows.csv"
    args = ["--images", str(tmp_path / "pngs"), *FAST, "--target", "label"]
    assert run_cli(capsys, *args, "--per-image", str(path))[0] == 0
    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    assert list(rows[0]) == [
        *["image", "label", "target", "probability", "method", "saco", "aopc"],
        "deletion_curve",  # AOPC's curve, kept for re-rendering the report
    ]
    assert [(r["image"], r["method"]) for r in rows] == [
        (image, method)
        for image in sorted(
            str(p.relative_to(tmp_path / "pngs")) for p in (tmp_path / "pngs").rglob("*.png")
        )
        for method in ["random", "saliency"]
    ]
    classes = sorted(p.name for p in (tmp_path / "pngs").iterdir())
    assert all(
        int(r["label"]) == int(r["target"]) == classes.index(r["image"].split("/")[0]) for r in rows
    )
    assert all(0 < float(r["probability"]) <= 1 for r in rows)


def labelled_folder_with_a_corrupt_file(root: Path) -> Path:
    shipped_images_as_pngs(root, 200, class_folders=True)
    (root / "c3" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return root


RESUMABLE = [
    "--model",
    "test_cli:slow_fashion_vit",
    "--target",
    "label",
    "--methods",
    "random,saliency",
    "--metrics",
    "saco,aopc",
    "--batch-size",
    "8",
    "--no-progress",
    "--device",
    "cpu",
]


def _slow_env() -> dict:
    # test_cli:slow_fashion_vit is importable from the tests folder.
    paths = [str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]
    return {**_subprocess_env(), "PYTHONPATH": os.pathsep.join(filter(None, paths))}


def _command(distributed: bool) -> list:
    launcher = ["-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone"]
    return [sys.executable, *(launcher if distributed else []), "-m", "captum_saco"]


def _rows_written(path: Path) -> int:
    parts = [path, *path.parent.glob(path.name + ".rank*")]
    return sum(p.read_text().count("\n") for p in parts if p.exists())


def _kill_mid_run(proc: subprocess.Popen, per_image: Path, distributed: bool) -> None:
    """Wait for two finished batches (2 methods x 8 images each), then send
    SIGTERM to the command, or to the process of rank 1 under torchrun."""
    import psutil

    deadline = time.monotonic() + 240
    while _rows_written(per_image) < 32:
        assert proc.poll() is None and time.monotonic() < deadline, "no rows written"
        time.sleep(0.01)
    victim = proc.pid
    if distributed:
        workers = psutil.Process(proc.pid).children(recursive=True)
        victim = next(w.pid for w in workers if w.environ().get("RANK") == "1")
    os.kill(victim, signal.SIGTERM)


def _assert_valid_jsonl(path: Path) -> int:
    lines = path.read_text().splitlines()
    for line in lines:
        json.loads(line)
    return len(lines)


@pytest.mark.parametrize("distributed", [False, True], ids=["one-process", "torchrun"])
def test_a_killed_run_resumes_to_exactly_the_table_of_an_uninterrupted_run(
    tmp_path, distributed
) -> None:
    images = labelled_folder_with_a_corrupt_file(tmp_path / "images")
    common = [*RESUMABLE, "--images", str(images)]
    reference = tmp_path / "reference.json"
    done = subprocess.run(
        [
            *_command(False),
            *common,
            "--per-image",
            str(tmp_path / "ref.jsonl"),
            "--output",
            str(reference),
        ],
        capture_output=True,
        text=True,
        env=_slow_env(),
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert "'c3/corrupt.png'" in done.stderr

    per_image, table = tmp_path / "rows.jsonl", tmp_path / "table.json"
    args = [*common, "--per-image", str(per_image), "--output", str(table)]
    proc = subprocess.Popen(
        [*_command(distributed), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_slow_env(),
    )
    _kill_mid_run(proc, per_image, distributed)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode != 0 and not table.exists()
    assert "interrupted by SIGTERM" in err and "--resume to finish" in err
    assert err.count("captum-saco: interrupted by") == 1  # the first process says it
    parts = [per_image] if not distributed else sorted(tmp_path.glob("rows.jsonl.rank*"))
    written = sum(_assert_valid_jsonl(p) for p in parts)
    assert 32 <= written < 400 and written % 2 == 0

    resumed = subprocess.run(
        [*_command(distributed), *args, "--resume"],
        capture_output=True,
        text=True,
        env=_slow_env(),
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr
    expected, got = json.loads(reference.read_text()), json.loads(table.read_text())
    del expected["cost"], got["cost"]  # measured times, which differ from run to run
    assert got == expected and got["n_images"] == 200 and got["skipped"] == ["c3/corrupt.png"]
    assert per_image.read_text() == (tmp_path / "ref.jsonl").read_text()
    assert not list(tmp_path.glob("rows.jsonl.rank*"))
