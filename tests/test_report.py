"""The HTML report of a run (``--report``), as a person sees it in a browser,
its re-rendering from the per-image rows, the cost it records, and the
``--plot`` grid.

Run as a script, this file renders the README's screenshot:
``python -m tests.test_report docs/report.png``.
"""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

import pytest
import torch
from captum.attr import Attribution

from captum_saco.cli import main
from captum_saco.evaluation import evaluate, runner, saco_case_study
from captum_saco.report import render_report
from captum_saco.report.render import UNDEFINED_REASONS
from captum_saco.visualization import grid_shape, method_colours, plot_evaluation

METHODS = ["random", "saliency", "raw_attention", "gradient_weighted_attention"]
#: the command of the README's screenshot (run in a folder of one's choice)
COMMAND = [
    "--limit", "8", "--batch-size", "8", "--methods", ",".join(METHODS), "--report-images", "2",
    "--per-image", "rows.jsonl", "--output", "table.json", "--report", "report.html",
    "--no-progress",
]  # fmt: skip
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--hide-scrollbars",
]


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.skip("needs chromium (Debian: apt-get install chromium)")
    return found


def run_command(folder: Path) -> None:
    """The README's command, in ``folder``."""
    paths = {"rows.jsonl", "table.json", "report.html"}
    argv = [str(folder / a) if a in paths else a for a in COMMAND]
    assert main(argv) == 0


def screenshot(html: Path, png: Path, profile: Path, net_log: Path, width: int = 1280) -> str:
    """Render ``html`` in headless chromium, save the whole page to ``png``
    (the empty bottom of the window cropped) and return the rendered DOM."""
    chromium = _chromium()
    flags = CHROMIUM_FLAGS + [f"--user-data-dir={profile}", f"--log-net-log={net_log}"]
    url = html.resolve().as_uri()
    subprocess.run(
        [chromium, *flags, f"--window-size={width},9000", f"--screenshot={png}", url],
        check=True,
        capture_output=True,
        timeout=120,
    )
    dom = subprocess.run(
        [chromium, *flags, "--dump-dom", url],
        check=True,
        capture_output=True,
        timeout=120,
        text=True,
    ).stdout
    import numpy as np
    from PIL import Image

    with Image.open(png) as image:
        page = image.convert("RGB")
    pixels = np.asarray(page)
    drawn = (pixels != pixels[-1, -1]).any(axis=(1, 2)).nonzero()[0]
    page.crop((0, 0, page.width, int(drawn[-1]) + 16 if drawn.size else page.height)).save(png)
    return dom


def page_requests(net_log: Path) -> List[str]:
    """The URLs that the page asked the network for, from chromium's net log:
    requests whose initiator is the page (chromium's own background requests,
    for updates or dictionaries, have none: ``"not an origin"``)."""
    log = json.loads(net_log.read_text())
    start = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    internal = "not an origin"
    return [
        e["params"]["url"]
        for e in log["events"]
        if e["type"] == start and e.get("params", {}).get("initiator", internal) != internal
    ]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("run")
    run_command(folder)
    return folder


def _section(html: str, element_id: str) -> str:
    """The HTML of the table with id ``element_id``."""
    match = re.search(rf'<table[^>]*id="{element_id}".*?</table>', html, re.S)
    assert match, element_id
    return match.group(0)


def test_the_report_holds_every_resource_itself_and_needs_no_script(run: Path) -> None:
    html = (run / "report.html").read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html)
    assert "<script" not in html and "<link" not in html and "@import" not in html
    sources = re.findall(r'<img[^>]*src="([^"]*)"', html)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)


def test_the_report_shows_settings_results_with_ci_and_vs_random(run: Path) -> None:
    html = (run / "report.html").read_text(encoding="utf-8")
    for setting in ("fashion_mnist_vit", "timm VisionTransformer", "K (SaCo groups",
                    "precision", "float32", "seed", "torch ", "wall time of the run",
                    "8 evaluated", "predicted"):  # fmt: skip
        assert setting in html, setting
    table = json.loads((run / "table.json").read_text())
    results = _section(html, "results-table")
    for row in table["results"]:
        assert f"<code>{row['method']}</code>" in results
        assert f"{row['mean']:.4f}" in results
        assert f"[{row['ci95'][0]:.3f}, {row['ci95'][1]:.3f}]" in results
    assert results.count("vs random") == (len(METHODS) - 1) * 5


def test_the_cost_of_each_method_is_in_the_json_the_settings_file_and_the_report(
    run: Path,
) -> None:
    table = json.loads((run / "table.json").read_text())
    settings = json.loads((run / "rows.jsonl.settings.json").read_text())
    assert settings["cost"] == table["cost"]
    assert table["cost"]["images"] == 8
    assert table["cost"]["forward_seconds_per_image"] > 0
    for method in METHODS:
        cost = table["cost"]["methods"][method]
        assert cost["seconds_per_image"] > 0 and cost["scoring_seconds_per_image"] > 0
        assert cost["ratio_to_forward"] == pytest.approx(
            cost["seconds_per_image"] / table["cost"]["forward_seconds_per_image"]
        )
        assert cost["peak_memory_bytes"] is None  # the CPU reports none
    cost_table = _section((run / "report.html").read_text(encoding="utf-8"), "cost-table")
    assert all(f"<code>{m}</code>" in cost_table for m in METHODS)


def test_the_per_image_rows_keep_the_deletion_curve_from_the_clean_probability(
    run: Path,
) -> None:
    rows = [json.loads(line) for line in (run / "rows.jsonl").read_text().splitlines()]
    assert len(rows) == 8 * len(METHODS)
    for row in rows:
        curve = row["deletion_curve"]
        assert len(curve) == 10  # K = 10: fractions 0, 0.1, ..., 0.9
        assert curve[0] == pytest.approx(row["probability"], abs=1e-6)
        assert all(0 <= p <= 1 for p in curve)


def test_a_finished_run_is_re_rendered_without_running_the_model_over_the_data(
    run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path
    for name in ("rows.jsonl", "rows.jsonl.settings.json", "table.json"):
        shutil.copy(run / name, folder / name)

    def no_batches(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model ran over the data again")

    monkeypatch.setattr(runner._Scorer, "rows", no_batches)
    before = (run / "report.html").read_text(encoding="utf-8")
    paths = {"rows.jsonl", "table.json", "report.html"}
    assert main([str(folder / a) if a in paths else a for a in COMMAND] + ["--resume"]) == 0
    after = (folder / "report.html").read_text(encoding="utf-8")
    for element in ("results-table", "cost-table", "matrix-saco", "matrix-auc"):
        assert _section(after, element) == _section(before, element)
    assert json.loads((folder / "table.json").read_text()) == json.loads(
        (run / "table.json").read_text()
    )
    examples = re.findall(r'data-method="([^"]+)"', after)
    assert examples == METHODS


def test_the_report_renders_in_a_browser_with_the_table_and_every_methods_heatmaps(
    run: Path, tmp_path: Path
) -> None:
    png, net_log = tmp_path / "report.png", tmp_path / "net.json"
    dom = screenshot(run / "report.html", png, tmp_path / "profile", net_log)
    from PIL import Image, ImageStat

    with Image.open(png) as image:
        page = image.convert("L")
        assert page.height > 2000  # the whole page, not an empty window
        assert ImageStat.Stat(page).stddev[0] > 20  # not blank
        assert len(page.getcolors(2**16) or []) > 100
    assert 'id="results-table"' in dom
    assert re.findall(r'data-method="([^"]+)"', dom) == METHODS
    assert page_requests(net_log) == []


def test_the_browser_check_sees_a_page_that_asks_the_network(tmp_path: Path) -> None:
    page = tmp_path / "page.html"
    page.write_text('<p>text</p><img src="http://example.invalid/logo.png">')
    net_log = tmp_path / "net.json"
    screenshot(page, tmp_path / "page.png", tmp_path / "profile", net_log)
    assert page_requests(net_log) == ["http://example.invalid/logo.png"]


class ConstantMaps(Attribution):
    """Maps that rank nothing: SaCo is undefined on every image."""

    def __init__(self) -> None:
        super().__init__(lambda x: x)

    def attribute(self, inputs: torch.Tensor, target: Any = None) -> torch.Tensor:
        return torch.zeros_like(inputs)


def test_the_report_flags_undefined_values_with_their_count_and_reason() -> None:
    _ = torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3)).eval()
    methods = {"random": "random", "constant": ConstantMaps()}
    with pytest.warns(UserWarning, match="undefined for 4 of 4"):
        result = evaluate(model, torch.randn(4, 1, 8, 8), methods=methods, metrics=["saco"])
    html = render_report(result, {"model": "a linear model"})
    undefined = _section(html, "undefined")
    assert "<code>constant</code>" in undefined and "4 images" in undefined
    assert UNDEFINED_REASONS["saco"].replace("'", "&#39;") in undefined
    assert "undefined on 4 images" in _section(html, "results-table")


def test_under_torchrun_the_first_process_writes_the_report_of_all_the_images(
    tmp_path: Path,
) -> None:
    from tests.test_cli import _command, _subprocess_env, shipped_images_as_pngs

    images = tmp_path / "pngs"
    shipped_images_as_pngs(images, 4, class_folders=False)
    report = tmp_path / "report.html"
    args = ["--images", str(images), "--batch-size", "2", "--methods", "random,saliency"]
    proc = subprocess.run(
        [*_command(True), *args, "--no-progress", "--device", "cpu", "--report", str(report)],
        capture_output=True,
        text=True,
        env=_subprocess_env(),
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    html = report.read_text(encoding="utf-8")
    assert "4 evaluated, 0 skipped" in html  # both processes' images, gathered
    assert re.findall(r'data-method="([^"]+)"', html) == ["random", "saliency"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pngs", "report.html"]


def _many_methods_result() -> Dict[str, Any]:
    _ = torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3)).eval()
    images = torch.randn(4, 1, 8, 8)
    methods = {f"method_{i}_with_a_rather_long_name": "saliency" for i in range(14)}
    result = evaluate(model, images, methods=methods, metrics=["saco", "auc"], n_groups=4)
    study = saco_case_study(model, images, 0, methods=methods, n_groups=4)
    return {"result": result, "study": study, "image": images[0]}


def test_the_plot_is_a_grid_between_1_to_2_and_2_to_1_for_any_number_of_methods(
    tmp_path: Path,
) -> None:
    from PIL import Image

    for n in range(1, 40):
        rows, columns = grid_shape(n)
        assert rows * columns >= n and 0.5 <= columns / rows <= 2
    made = _many_methods_result()
    path = tmp_path / "plot.png"
    plot_evaluation(made["result"], str(path), made["study"], made["image"])
    with Image.open(path) as image:
        assert 0.5 <= image.width / image.height <= 2


@pytest.mark.parametrize("n", [13, 14, 20, 25])
def test_every_method_gets_its_own_colour(n: int) -> None:
    assert len(set(method_colours(n))) == n


def _render_readme_screenshot(target: Path) -> None:
    """The README's screenshot: the command, then the page in chromium."""
    import tempfile

    from PIL import Image

    with tempfile.TemporaryDirectory() as folder:
        run_command(Path(folder))
        png = Path(folder) / "page.png"
        screenshot(
            Path(folder) / "report.html", png, Path(folder) / "profile", Path(folder) / "net.json"
        )
        with Image.open(png) as page:
            small = page.convert("RGB").resize((page.width * 2 // 3, page.height * 2 // 3))
            small.save(target, optimize=True)


if __name__ == "__main__":
    _render_readme_screenshot(Path(sys.argv[1]))
    print(f"captum-saco {' '.join(COMMAND)}  ->  {sys.argv[1]}", file=sys.stderr)
