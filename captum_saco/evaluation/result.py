"""The result of :func:`~captum_saco.evaluation.evaluate`: the methods x
metrics table, the per-image values behind it, and its writers."""

import csv
import io
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import Tensor

from captum_saco.evaluation.registry import METRICS

SUFFIXES = (".json", ".csv", ".md")


@dataclass(frozen=True)
class ResultRow:
    """One method scored by one metric over the data set."""

    method: str
    metric: str
    mean: Optional[float]
    """Mean over the images where the metric is defined (None if none is)."""
    std: Optional[float]
    """Sample standard deviation over the same images (None under two)."""
    n: int
    """Images where the metric is defined."""
    nan: int
    """Images where it is undefined (NaN)."""


def summarise(method: str, metric: str, values: Tensor) -> ResultRow:
    """The row of one method and metric from its per-image values."""
    defined = values[~torch.isnan(values)].double()
    n = int(defined.numel())
    mean = float(defined.mean()) if n else None
    std = float(defined.std()) if n > 1 else None
    return ResultRow(method, metric, mean, std, n, int(values.numel()) - n)


def _cell(r: ResultRow) -> str:
    mean = "nan" if r.mean is None else f"{r.mean:.4f}"
    std = "nan" if r.std is None else f"{r.std:.4f}"
    return f"{mean} ± {std} ({r.nan})"


def output_suffix(path: str) -> str:
    """The writer suffix of ``path``, or a ValueError naming ``output``."""
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in SUFFIXES:
        raise ValueError(f"output: expected a file name ending in .json, .csv or .md, got {path!r}")
    return suffix


def write_atomically(path: str, text: str) -> None:
    """Write ``text`` to a temporary file in ``path``'s folder, then rename it
    to ``path``: a failed write (a full disk) leaves the previous file whole."""
    folder = os.path.dirname(os.path.abspath(path))
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=".captum-saco-", suffix=".tmp")
    os.close(handle)
    try:
        with open(temporary, "w", newline="") as f:
            f.write(text)
        mode = os.stat(path).st_mode if os.path.exists(path) else _default_file_mode()
        os.chmod(temporary, mode & 0o777)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def _default_file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@dataclass
class EvaluationResult:
    """The table of :func:`evaluate`, with the per-image values behind it."""

    model: str
    n_images: int
    rows: List[ResultRow]
    per_example: Dict[Tuple[str, str], Tensor] = field(repr=False)
    """``(method, metric)`` -> CPU tensor ``(n_images,)`` in input order."""

    @property
    def methods(self) -> List[str]:
        return list(dict.fromkeys(r.method for r in self.rows))

    @property
    def metrics(self) -> List[str]:
        return list(dict.fromkeys(r.metric for r in self.rows))

    def row(self, method: str, metric: str) -> ResultRow:
        """The row of ``method`` and ``metric``."""
        for r in self.rows:
            if r.method == method and r.metric == metric:
                return r
        raise KeyError((method, metric))

    def to_dict(self) -> Dict[str, Any]:
        """``{"model", "n_images", "results": [{"method", "metric", "mean",
        "std", "n", "nan"}, ...]}``; undefined means and stds are None."""
        return {
            "model": self.model,
            "n_images": self.n_images,
            "results": [asdict(r) for r in self.rows],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def to_csv(self) -> str:
        out = io.StringIO()
        writer = csv.DictWriter(
            out, fieldnames=["method", "metric", "mean", "std", "n", "nan"], lineterminator="\n"
        )
        writer.writeheader()
        for r in self.rows:
            writer.writerow(asdict(r))
        return out.getvalue()

    def _cells(self) -> Tuple[List[str], List[List[str]]]:
        header = ["method"] + self.metrics
        body = [[m] + [_cell(self.row(m, k)) for k in self.metrics] for m in self.methods]
        return header, body

    def _legend(self) -> str:
        directions: Dict[str, List[str]] = {}
        for k in self.metrics:
            directions.setdefault(METRICS[k], []).append(k)
        parts = [f"{d}: {', '.join(ks)}" for d, ks in directions.items()]
        return (
            f"{self.model}, {self.n_images} images; cells: mean ± std (undefined values)"
            f"; {'; '.join(parts)}"
        )

    def to_markdown(self) -> str:
        header, body = self._cells()
        lines = [
            "| " + " | ".join(header) + " |",
            "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|",
        ]
        lines += ["| " + " | ".join(row) + " |" for row in body]
        return "\n".join(lines) + "\n\n" + self._legend() + "\n"

    def format_table(self) -> str:
        """The methods x metrics table as aligned plain text."""
        header, body = self._cells()
        widths = [max(len(row[i]) for row in [header] + body) for i in range(len(header))]

        def line(row: List[str]) -> str:
            first = row[0].ljust(widths[0])
            return "  ".join([first] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])])

        rule = "-" * len(line(header))
        return "\n".join([line(header), rule] + [line(r) for r in body] + [rule, self._legend()])

    def __str__(self) -> str:
        return self.format_table()

    def save(self, path: str) -> None:
        """Write the table to ``path`` as JSON, CSV or Markdown by its suffix
        (``.json``, ``.csv``, ``.md``)."""
        writers = {".json": self.to_json, ".csv": self.to_csv, ".md": self.to_markdown}
        write_atomically(path, writers[output_suffix(path)]())
