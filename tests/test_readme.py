"""The README is the entry point: its set-up commands and examples must stay true."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
PYTHON_BLOCKS = re.findall(r"```python\n(.*?)```", README, re.S)


def test_readme_shows_the_two_setup_commands_that_ci_runs() -> None:
    install_and_run = 'pip install -e ".[all]" && python -m captum_saco'
    install_and_test = 'pip install -e ".[test]" && python -m pytest -rs'
    assert install_and_run in README
    assert install_and_test in README
    assert install_and_test in (ROOT / ".ci" / "run").read_text()


def test_readme_has_python_quick_starts() -> None:
    assert len(PYTHON_BLOCKS) >= 2


def test_readme_python_examples_run_in_order(tmp_path: Path, monkeypatch) -> None:
    """Every ```python block, one after another in one namespace, as a reader
    (or a notebook) runs them: a block may use what an earlier one defined."""
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "readme_example"}
    for block in PYTHON_BLOCKS:
        exec(compile(block, "README.md", "exec"), namespace)


def test_readme_shows_a_call_of_each_cumulative_metric_with_fractions() -> None:
    for metric in ("aopc", "lodds", "auc", "comprehensiveness"):
        assert any(f"{metric}(model, " in b and "fractions=fractions" in b for b in PYTHON_BLOCKS)


def test_readme_own_model_command_runs_on_a_folder_of_photos(tmp_path: Path, monkeypatch) -> None:
    """The "Your own model and data" section: ``mymodel.py`` as shown, run with
    the command shown, from the folder holding it."""
    import shlex

    from PIL import Image

    from captum_saco.cli import main

    section = README[README.index("## Your own model and data") :]
    section = section[: section.index("\n## ")]
    module = re.search(r"`mymodel.py`:\n\n```python\n(.*?)```", section, re.S).group(1)
    command = re.search(r"^    (captum-saco --model mymodel.py:build .*)$", section, re.M).group(1)
    (tmp_path / "mymodel.py").write_text(module)
    (tmp_path / "photos").mkdir()
    for i in range(2):
        Image.new("RGBA", (80, 60), (40 * i, 90, 200, 255)).save(tmp_path / "photos" / f"{i}.png")
    monkeypatch.chdir(tmp_path)
    assert main(shlex.split(command)[1:] + ["--no-progress", "--device", "cpu"]) == 0
