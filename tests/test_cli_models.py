"""The command line with the user's own models and folders: each model
preprocessed as it was trained, true labels, readable output (issue 23)."""

import json
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest
import torch
from PIL import Image

from captum_saco.cli import main
from captum_saco.evaluation import DEFAULT_METRICS, METHODS
from tests.test_models import MY_MODEL, save_tiny_hf_vit

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["--methods", "random", "--metrics", "saco", "--no-progress", "--device", "cpu"]


def image_folder(root: Path, classes: List[str], size: int = 32) -> Path:
    """One random RGB image per class folder."""
    torch.manual_seed(0)
    for name in classes:
        (root / name).mkdir(parents=True)
        pixels = torch.randint(0, 256, (size, size, 3), dtype=torch.uint8).numpy()
        Image.fromarray(pixels, "RGB").save(root / name / "1.png")
    return root


def per_image_rows(path: Path) -> Dict[str, dict]:
    return {r["image"]: r for r in map(json.loads, path.read_text().splitlines())}


def test_hf_model_labels_folders_by_id2label_and_records_its_preprocessing(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    model = save_tiny_hf_vit(tmp_path / "vit", id2label={0: "dog", 1: "cat"})
    images = image_folder(tmp_path / "images", ["cat", "dog"])
    rows, table = tmp_path / "rows.jsonl", tmp_path / "table.json"
    argv = ["--model", f"hf:{model}", "--images", str(images), "--target", "label"]
    assert main(argv + ["--per-image", str(rows), "--output", str(table), *QUICK]) == 0
    by_image = per_image_rows(rows)
    # the file named by its path under --images, labelled by the model's own index
    assert (by_image["cat/1.png"]["label"], by_image["cat/1.png"]["target"]) == (1, 1)
    assert (by_image["dog/1.png"]["label"], by_image["dog/1.png"]["target"]) == (0, 0)
    recorded = json.loads(table.read_text())["preprocessing"]
    assert (recorded["mean"], recorded["std"], recorded["input_size"]) == (
        [0.5] * 3,
        [0.5] * 3,
        [3, 32, 32],
    )
    settings = json.loads(Path(f"{rows}.settings.json").read_text())
    assert settings["preprocessing"] == recorded
    err = capsys.readouterr().err
    assert err.count("preprocessing (the Hugging Face image processor): input_size 3x32x32") == 1
    assert "random weights" not in err  # a local folder holds trained weights


def test_imagenet_synset_folders_get_their_imagenet_index_and_random_weights_are_said(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    images = image_folder(tmp_path / "images", ["n01440764", "n02102040", "n02979186"], 64)
    rows = tmp_path / "rows.jsonl"
    argv = ["--model", "timm:test_vit", "--images", str(images), "--target", "label"]
    assert main(argv + ["--per-image", str(rows), *QUICK]) == 0
    labels = [r["label"] for r in per_image_rows(rows).values()]
    assert labels == [0, 217, 482]
    assert capsys.readouterr().err.count("has random weights") == 1


def test_folders_the_model_does_not_name_keep_sorted_order_said_once_unless_class_map(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    model = save_tiny_hf_vit(tmp_path / "vit")
    images = image_folder(tmp_path / "images", ["bird", "fish"])
    rows = tmp_path / "rows.jsonl"
    argv = ["--model", f"hf:{model}", "--images", str(images), "--target", "label", *QUICK]
    assert main(argv + ["--per-image", str(rows)]) == 0
    assert [r["label"] for r in per_image_rows(rows).values()] == [0, 1]
    assert capsys.readouterr().err.count("in sorted order (--class-map FILE sets them)") == 1
    (tmp_path / "map.json").write_text('{"bird": 1, "fish": 0}')
    argv += ["--class-map", str(tmp_path / "map.json")]
    assert main(argv + ["--per-image", str(tmp_path / "mapped.jsonl")]) == 0
    mapped = per_image_rows(tmp_path / "mapped.jsonl")
    assert (mapped["bird/1.png"]["label"], mapped["fish/1.png"]["label"]) == (1, 0)
    assert "sorted order" not in capsys.readouterr().err


def test_a_file_model_with_overridden_preprocessing(tmp_path: Path) -> None:
    (tmp_path / "mine.py").write_text(MY_MODEL)
    images = image_folder(tmp_path / "images", ["a"], 64)
    table = tmp_path / "table.json"
    argv = ["--model", f"{tmp_path}/mine.py:build", "--images", str(images), *QUICK]
    overrides = ["--input-size", "48", "--mean", "0", "0", "0", "--std", "1", "1", "1"]
    assert main(argv + overrides + ["--crop-pct", "0.5", "--output", str(table)]) == 0
    recorded = json.loads(table.read_text())["preprocessing"]
    assert (recorded["input_size"], recorded["mean"], recorded["std"]) == (
        [3, 48, 48],
        [0.0] * 3,
        [1.0] * 3,
    )
    assert (recorded["interpolation"], recorded["crop_pct"]) == ("bilinear", 0.5)


def test_without_network_a_pretrained_model_is_one_line_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from huggingface_hub import constants

    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # refuses at once, locally
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    images = image_folder(tmp_path / "images", ["a"])
    assert main(["--model", "test_vit", "--pretrained", "--images", str(images), *QUICK]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'test_vit'" in err[0] and "no network" in err[0]


@pytest.mark.parametrize(
    "option, name, suggestion",
    [("--methods", "rolout", "attention_rollout"), ("--metrics", "aopcc", "aopc")],
)
def test_unknown_names_suggest_the_closest_valid_name(
    option: str, name: str, suggestion: str, capsys: pytest.CaptureFixture
) -> None:
    assert main([option, name]) == 2
    assert f"(did you mean {suggestion}?)" in capsys.readouterr().err


@pytest.mark.parametrize("columns", [100, 60])
def test_the_printed_table_fits_the_terminal_with_every_name_whole(
    columns: int, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("COLUMNS", str(columns))
    argv = ["--limit", "2", "--methods", *METHODS, "--metrics", *DEFAULT_METRICS]
    # two K: the metric agreement and the rank stability are printed too
    assert main(argv + ["--n-groups", "5,10", "--no-progress", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "Metric agreement" in out and "Rank stability" in out
    assert max(len(line) for line in out.splitlines()) <= columns
    words = set(out.replace(",", " ").replace(":", " ").replace(";", " ").split())
    assert set(METHODS) | set(DEFAULT_METRICS) <= words


def test_warnings_are_one_line_without_source_location(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    Image.new("L", (28, 28)).save(images / "a.png")
    (images / "b.png").write_bytes(b"not an image")
    proc = subprocess.run(
        [sys.executable, "-m", "captum_saco", "--images", str(images), *QUICK],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    warning_lines = [line for line in proc.stderr.splitlines() if "warning" in line.lower()]
    assert any("skipping the image 'b.png'" in line for line in warning_lines)
    assert all(line.startswith("captum-saco: warning: ") for line in warning_lines)
    assert ".py:" not in proc.stderr and "warnings.warn" not in proc.stderr


TINY_SWIN = """
import timm

def build():
    return timm.models.swin_transformer.SwinTransformer(
        img_size=32, patch_size=4, window_size=4, embed_dim=24, depths=(1, 1),
        num_heads=(2, 2), num_classes=3,
    ).eval()
"""


def test_default_methods_a_model_does_not_define_are_left_out_with_a_note(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # A Swin has no token-by-token attention: the attention-map methods refuse it,
    # so a first run with the defaults explains it with the methods that work
    # instead of stopping at the first refusal, and says which ones it left out.
    (tmp_path / "swin.py").write_text(TINY_SWIN)
    images = image_folder(tmp_path / "images", ["a"])
    table = tmp_path / "table.json"
    model = ["--model", f"{tmp_path}/swin.py:build", "--images", str(images)]
    quick = ["--metrics", "saco", "--n-groups", "4", "--input-size", "32", *QUICK[-3:]]
    assert main(model + quick + ["--output", str(table)]) == 0
    err = capsys.readouterr().err
    assert "the default methods raw_attention, attention_rollout" in err
    assert "only ConservativeLRP and AttnLRP explain it" in err
    run = {row["method"] for row in json.loads(table.read_text())["results"]}
    assert {"conservative_lrp", "attn_lrp", "random", "saliency"} <= run
    assert "raw_attention" not in run
    # named with --methods, a method the model does not define is an error
    assert main(model + quick + ["--methods", "raw_attention"]) == 2
    assert "--model: SwinTransformer is a Swin Transformer" in capsys.readouterr().err
