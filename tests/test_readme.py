"""The README is the entry point: its set-up commands and examples must stay true."""

import re
from pathlib import Path

import pytest

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


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=lambda b: b.splitlines()[-1][:40])
def test_readme_python_example_runs(block: str) -> None:
    exec(compile(block, "README.md", "exec"), {"__name__": "readme_example"})
