"""The tutorials run top to bottom, offline, in the interpreter running the tests.

Each notebook in ``tutorials/`` is executed in memory (the stored files are not
rewritten) in a fresh ``python3`` Jupyter kernel, with matplotlib's Agg
backend; any cell error fails the test. ``tutorials/execute_notebooks.py``
refreshes the stored outputs the same way.
"""

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import nbformat
import pytest

TUTORIALS = Path(__file__).resolve().parent.parent / "tutorials"


def _load_runner() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "execute_notebooks", TUTORIALS / "execute_notebooks.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


runner = _load_runner()
NOTEBOOKS = runner.notebooks()


def test_tutorials_folder_holds_notebooks() -> None:
    assert NOTEBOOKS, f"no notebooks found in {TUTORIALS}"


def test_kernel_runs_the_interpreter_running_the_tests(tmp_path: Path) -> None:
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell("import sys; print(sys.executable)")]
    path = tmp_path / "which_python.ipynb"
    nbformat.write(notebook, path)
    executed = runner.execute_notebook(path, timeout=60)
    assert executed.cells[0].outputs[0].text.strip() == sys.executable


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_tutorial_is_stored_with_its_outputs(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    unexecuted = [i for i, cell in enumerate(code_cells) if cell.execution_count is None]
    assert not unexecuted, (
        f"code cells {unexecuted} have no stored outputs: run execute_notebooks.py"
    )
    pictures = [
        output
        for cell in code_cells
        for output in cell.outputs
        if any(kind.startswith("image/") for kind in output.get("data", {}))
    ]
    assert pictures, "the stored notebook shows no figure"
    assert path.stat().st_size < 1.5 * 2**20, "keep stored notebooks under 1.5 MB"


def test_printed_warnings_are_stored_without_machine_paths() -> None:
    printed = (
        "/home/me/site-packages/lib/file.py:53: UserWarning: saco of x: ties\n"
        "  scores = score_attributions(\n"
        "a table\n"
    )
    assert runner.without_machine_paths(printed) == "UserWarning: saco of x: ties\na table\n"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_tutorial_outputs_show_no_path_of_the_machine(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    texts = [
        str(output.get("text", "")) + str(output.get("data", {}).get("text/plain", ""))
        for cell in notebook.cells
        for output in cell.get("outputs", [])
    ]
    paths = [m.group() for text in texts for m in re.finditer(r"(/[\w.+-]+){2,}\.py\b", text)]
    assert not paths, f"stored outputs show machine paths {paths}: run execute_notebooks.py"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_tutorial_executes_top_to_bottom(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MPLBACKEND", "Agg")  # the kernel inherits it: no display needed
    executed = runner.execute_notebook(path)  # raises CellExecutionError on any cell error
    errors = [
        output
        for cell in executed.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if output.output_type == "error"
    ]
    assert not errors
