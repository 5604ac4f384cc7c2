"""The result of :func:`~captum_saco.evaluation.evaluate`: the methods x
metrics table, the per-image values behind it, and its writers."""

import csv
import io
import json
import os
import tempfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch
from torch import Tensor

from captum_saco.evaluation.registry import METRICS
from captum_saco.evaluation.statistics import CI_METHOD, compare_pairs, p_value_method

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
    ci95: Optional[Tuple[float, float]] = None
    """95% confidence interval of the mean (see :data:`statistics.CI_METHOD`)."""


def summarise(
    method: str, metric: str, values: Tensor, ci95: Optional[Tuple[float, float]]
) -> ResultRow:
    """The row of one method and metric from its per-image values and the
    confidence interval of their mean."""
    defined = values[~torch.isnan(values)].double()
    n = int(defined.numel())
    mean = float(defined.mean()) if n else None
    std = float(defined.std()) if n > 1 else None
    return ResultRow(method, metric, mean, std, n, int(values.numel()) - n, ci95)


def _number(value: Optional[float], digits: int = 4) -> str:
    return "nan" if value is None else f"{value:.{digits}f}"


def _cell(r: ResultRow) -> str:
    ci = "" if r.ci95 is None else f" [{_number(r.ci95[0])}, {_number(r.ci95[1])}]"
    return f"{_number(r.mean)} ± {_number(r.std)}{ci} ({r.nan})"


def _vs_cell(comparison: Tuple[Optional[float], Optional[float]]) -> str:
    fraction, p = comparison
    return f"{_number(fraction, 2)} (p {'n/a' if p is None else f'{p:.1e}'})"


def output_suffix(path: str) -> str:
    """The writer suffix of ``path``, or a ValueError naming ``output``."""
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in SUFFIXES:
        raise ValueError(f"output: expected a file name ending in .json, .csv or .md, got {path!r}")
    return suffix


def _markdown_cell(text: str) -> str:
    """``text`` as one cell of a Markdown table row (a method name may hold ``|``
    or a line break)."""
    return " ".join(text.replace("|", "\\|").splitlines())


@contextmanager
def replacing(path: str) -> Iterator[str]:
    """A temporary file in ``path``'s folder to write, renamed to ``path`` when
    the block ends: a failed write (a full disk) leaves the previous file whole.
    A symbolic link stays one: the file it points to is replaced."""
    path = os.path.realpath(path)
    folder = os.path.dirname(path)
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=".captum-saco-", suffix=".tmp")
    os.close(handle)
    try:
        yield temporary
        mode = os.stat(path).st_mode if os.path.exists(path) else _default_file_mode()
        os.chmod(temporary, mode & 0o777)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def write_atomically(path: str, text: str) -> None:
    """Write ``text`` to ``path`` in UTF-8, whatever the locale, through
    :func:`replacing`."""
    with replacing(path) as temporary, open(temporary, "w", newline="", encoding="utf-8") as f:
        f.write(text)


def _default_file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _align(header: List[str], body: List[List[str]]) -> str:
    """An aligned text table: the first column left, the others right."""
    widths = [max(len(row[i]) for row in [header] + body) for i in range(len(header))]

    def line(row: List[str]) -> str:
        first = row[0].ljust(widths[0])
        return "  ".join([first] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])])

    rule = "-" * len(line(header))
    return "\n".join([line(header), rule] + [line(r) for r in body] + [rule])


@dataclass
class EvaluationResult:
    """The table of :func:`evaluate`, with the per-image values behind it."""

    model: str
    n_images: int
    rows: List[ResultRow]
    per_example: Dict[Tuple[str, str], Tensor] = field(repr=False)
    """``(method, metric)`` -> CPU tensor ``(n_images,)`` in input order."""
    per_image: List[Dict[str, Any]] = field(default_factory=list, repr=False)
    """One row per image and method, in input order: ``image`` (path or
    index), ``label`` (None if unknown), ``target``, ``probability`` (the
    clean probability of the target) and ``method``, then every metric."""
    skipped: List[Any] = field(default_factory=list)
    """The images that could not be read (paths or indices)."""
    comparisons: List[Dict[str, Any]] = field(default_factory=list, repr=False)
    """Every pair of methods under every metric: ``metric``, ``method_a``,
    ``method_b``, ``a_better_fraction`` (the share of the images where A
    scores better) and ``p_value`` (None where it cannot be computed)."""
    cost: Dict[str, Any] = field(default_factory=dict, repr=False)
    """What the run cost (see :meth:`captum_saco.evaluation.cost.CostMeter.record`):
    per method under ``"methods"``, ``seconds_per_image`` (attribution) and
    ``scoring_seconds_per_image``, their ratio to one forward and one
    forward+backward pass, and the peak memory where the device reports it."""

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
        """``{"model", "n_images", "n_skipped", "results": [{"method",
        "metric", "mean", "std", "n", "nan", "ci95": [low, high]}, ...],
        "ci95_method", "comparisons": [...], "p_value_method", "skipped",
        "cost": {...}}`` (see :attr:`cost`); undefined values are None."""
        return {
            "model": self.model,
            "n_images": self.n_images,
            "n_skipped": len(self.skipped),
            "results": [
                {**asdict(r), "ci95": None if r.ci95 is None else list(r.ci95)} for r in self.rows
            ],
            "ci95_method": CI_METHOD,
            "comparisons": self.comparisons,
            "p_value_method": p_value_method(),
            "skipped": list(self.skipped),
            "cost": self.cost,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def to_csv(self) -> str:
        out = io.StringIO()
        writer = csv.DictWriter(
            out,
            fieldnames=["method", "metric", "mean", "std", "n", "nan", "ci95_low", "ci95_high"],
            lineterminator="\n",
        )
        writer.writeheader()
        for r in self.rows:
            row = asdict(r)
            row["ci95_low"], row["ci95_high"] = row.pop("ci95") or (None, None)
            writer.writerow(row)
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
        skipped = f" ({len(self.skipped)} skipped)" if self.skipped else ""
        return (
            f"{self.model}, {self.n_images} images{skipped}; cells: mean ± std [95% CI] "
            f"(undefined values); {'; '.join(parts)}\n{CI_METHOD}"
        )

    def _versus(self, reference: str) -> List[List[str]]:
        methods = [m for m in self.methods if m != reference]
        columns = [
            compare_pairs(
                [(self.per_example[(m, k)], self.per_example[(reference, k)]) for m in methods],
                METRICS[k].startswith("higher"),
            )
            for k in self.metrics
        ]
        return [[m] + [_vs_cell(column[i]) for column in columns] for i, m in enumerate(methods)]

    def format_comparison(self, reference: str = "random") -> str:
        """For each method and metric, the share of the images where the
        method scores better than ``reference``, with the paired test's
        p-value: the paper's question, whether a metric tells a method from
        Random Attribution. Empty if ``reference`` was not evaluated."""
        if reference not in self.methods or len(self.methods) < 2:
            return ""
        header = [f"vs {reference}"] + self.metrics
        title = (
            f"Paired comparison with {reference}: share of the images where the method "
            f"scores better (p-value)"
        )
        return "\n".join([title, _align(header, self._versus(reference)), p_value_method()])

    def to_markdown(self) -> str:
        header, body = self._cells()
        lines = [
            "| " + " | ".join(header) + " |",
            "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|",
        ]
        lines += ["| " + " | ".join(_markdown_cell(c) for c in row) + " |" for row in body]
        return "\n".join(lines) + "\n\n" + self._legend() + "\n"

    def format_table(self) -> str:
        """The methods x metrics table as aligned plain text."""
        header, body = self._cells()
        return _align(header, body) + "\n" + self._legend()

    def __str__(self) -> str:
        comparison = self.format_comparison()
        return self.format_table() + ("\n\n" + comparison if comparison else "")

    def save(self, path: str) -> None:
        """Write the table to ``path`` as JSON, CSV or Markdown by its suffix
        (``.json``, ``.csv``, ``.md``)."""
        writers = {".json": self.to_json, ".csv": self.to_csv, ".md": self.to_markdown}
        write_atomically(path, writers[output_suffix(path)]())
