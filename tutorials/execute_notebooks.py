"""Execute the tutorials top to bottom and store them with their outputs.

The notebooks in this folder are kept *with* their outputs (tables and
pictures), so that they read well on GitHub without being run. After editing a
notebook, refresh its outputs with::

    python tutorials/execute_notebooks.py                       # every notebook
    python tutorials/execute_notebooks.py tutorials/NAME.ipynb  # some of them

Each notebook runs in a fresh ``python3`` Jupyter kernel started with the
Python interpreter that runs this script, from this folder, and is written back
only if every cell succeeds. ``tests/test_tutorials.py`` executes the
notebooks the same way, in memory, so that they cannot rot.
"""

import argparse
import os
import re
import sys
import time
from pathlib import Path
from typing import List

import nbformat
from nbclient import NotebookClient

TUTORIALS = Path(__file__).resolve().parent
#: a warning as Python prints it: ``/abs/path/file.py:12: UserWarning: text``,
#: then the source line of the call, indented
_WARNING = re.compile(r"^\S+\.py:\d+: (\w+: .*)\n(?:  .*\n)?", re.M)


def without_machine_paths(text: str) -> str:
    """``text`` with each printed warning reduced to ``Category: message``:
    no file path of the machine that ran the notebook, no echoed source line."""
    return _WARNING.sub(lambda m: m.group(1) + "\n", text)


def notebooks() -> List[Path]:
    """The tutorial notebooks, in name order."""
    return sorted(TUTORIALS.glob("*.ipynb"))


def execute_notebook(path: Path, timeout: int = 600) -> nbformat.NotebookNode:
    """Run every cell of the notebook at ``path`` and return it with its outputs.

    Raises ``nbclient.exceptions.CellExecutionError`` on the first failing cell.
    ``timeout`` is the limit of one cell, in seconds. Printed warnings are
    stored without machine paths (:func:`without_machine_paths`).
    """
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook,
        kernel_name="python3",
        timeout=timeout,
        record_timing=False,  # no timestamps in the stored files: diffs stay readable
        resources={"metadata": {"path": str(path.parent)}},
    )
    client.execute()
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream":
                output["text"] = without_machine_paths(output["text"])
    return notebook


def main(argv: List[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: every tutorial")
    args = parser.parse_args(argv)
    # Pictures are stored through the kernel's inline backend, not a file backend.
    os.environ.pop("MPLBACKEND", None)
    for path in args.notebooks or notebooks():
        start = time.perf_counter()
        notebook = execute_notebook(path)
        nbformat.write(notebook, path)
        size = path.stat().st_size / 2**20
        print(f"{path.name}: {time.perf_counter() - start:.0f} s, {size:.2f} MB")


if __name__ == "__main__":
    main(sys.argv[1:])
