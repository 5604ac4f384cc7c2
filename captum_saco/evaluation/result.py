"""The result of :func:`~captum_saco.evaluation.evaluate`: the methods x
metrics table, the per-image values behind it, and its writers."""

import csv
import io
import json
import os
import shutil
import tempfile
import textwrap
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch
from torch import Tensor

from captum_saco.evaluation.registry import METRICS
from captum_saco.evaluation.statistics import (
    AGREEMENT_METHOD,
    CI_METHOD,
    STABILITY_METHOD,
    compare_pairs,
    p_value_method,
    stability,
)

SUFFIXES = (".json", ".csv", ".md")
UNCHANGED_NOTE = (
    "unchanged: the model's output did not change under any perturbation of the metrics "
    "(no ranking to judge), so their values are NaN"
)


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
    n_groups: int = 10
    """``K`` of SaCo's groups and of the deletion steps."""
    unchanged: int = 0
    """Of the undefined values, the images where the model's output did not
    change under any perturbation of the metrics: there is no ranking to judge."""
    perturbation: str = "baseline"
    """How the metrics removed features (see :func:`captum_saco.metrics.deletion_curve`)."""


def summarise(
    method: str,
    metric: str,
    values: Tensor,
    ci95: Optional[Tuple[float, float]],
    n_groups: int = 10,
    unchanged: int = 0,
    perturbation: str = "baseline",
) -> ResultRow:
    """The row of one method and metric from its per-image values and the
    confidence interval of their mean."""
    defined = values[~torch.isnan(values)].double()
    n = int(defined.numel())
    mean = float(defined.mean()) if n else None
    std = float(defined.std()) if n > 1 else None
    nan = int(values.numel()) - n
    return ResultRow(method, metric, mean, std, n, nan, ci95, n_groups, unchanged, perturbation)


def _number(value: Optional[float], digits: int = 4) -> str:
    return "nan" if value is None else f"{value:.{digits}f}"


def _cell(r: ResultRow) -> str:
    ci = "" if r.ci95 is None else f" [{_number(r.ci95[0])}, {_number(r.ci95[1])}]"
    unchanged = f", {r.unchanged} unchanged" if r.unchanged else ""
    return f"{_number(r.mean)} ± {_number(r.std)}{ci} ({r.nan}{unchanged})"


def _pair_label(pair: Tuple[Any, ...]) -> str:
    return " vs ".join(str(p) for p in pair)


def _tau_text(tau: Optional[float]) -> str:
    return "n/a" if tau is None else f"{tau:+.2f}"


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


def _wrap(text: str, width: int) -> str:
    """``text`` with each line longer than ``width`` wrapped between words
    (a name is never cut)."""
    return "\n".join(
        textwrap.fill(line, width, break_long_words=False, break_on_hyphens=False) or line
        for line in text.splitlines()
    )


def _fits(text: str, width: int) -> bool:
    return max(map(len, text.splitlines())) <= width


def _fit(header: List[str], body: List[List[str]], width: int) -> str:
    """The table of :func:`_align` in the first layout that fits ``width``
    columns: the whole table; else tables of some of the columns (each row's name and
    as many columns as fit); else a list, each row's name followed by its cells
    under their column names, wrapped."""
    table = _align(header, body)
    if _fits(table, width):
        return table
    chunks: List[List[int]] = []  # as many columns per table as fit
    for j in range(1, len(header)):
        columns = (chunks[-1] if chunks else []) + [j]
        sub = _align(
            [header[i] for i in [0] + columns], [[r[i] for i in [0] + columns] for r in body]
        )
        if chunks and _fits(sub, width):
            chunks[-1].append(j)
        else:
            chunks.append([j])
    blocks = "\n\n".join(
        _align([header[i] for i in [0] + c], [[r[i] for i in [0] + c] for r in body])
        for c in chunks
    )
    if _fits(blocks, width):
        return blocks
    pad = max(map(len, header[1:])) + 2
    lines: List[str] = []
    for row in body:
        lines.append(row[0])
        for name, cell in zip(header[1:], row[1:]):
            first = f"  {name}:".ljust(pad + 2)
            lines.append(
                textwrap.fill(
                    cell,
                    width,
                    initial_indent=first,
                    subsequent_indent=" " * 4,
                    break_long_words=False,
                )
            )
    return "\n".join(lines)


def terminal_width() -> int:
    """The width of the terminal (``COLUMNS`` if set), 100 when there is none."""
    return shutil.get_terminal_size((100, 24)).columns


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
    n_groups: int = 10
    """``K`` of this table."""
    perturbation: str = "baseline"
    """How the metrics of this table removed features."""
    agreement: Dict[Tuple[str, str], Dict[str, Any]] = field(default_factory=dict, repr=False)
    """``(metric_a, metric_b)`` -> ``{"tau_b", "per_image_tau_b", "n_images"}``:
    Kendall's τ-b between the two metrics' rankings of the methods by mean,
    each best first (lower-is-better metrics negated), and the mean over the
    images of τ-b between their rankings of the methods on each image (see
    :func:`~captum_saco.evaluation.statistics.agreement`)."""
    variants: Dict[Tuple[str, int], "EvaluationResult"] = field(
        default_factory=dict, repr=False
    )
    """With several ``n_groups`` or perturbations: ``(perturbation, K)`` -> the
    result of that setting (this object is the first's); empty otherwise."""
    stability: Dict[Tuple[str, Any, Any], Dict[str, Any]] = field(
        default_factory=dict, repr=False
    )
    """With several ``n_groups``: ``(metric, K_a, K_b)`` -> ``{"tau_b",
    "swaps"}``: Kendall's τ-b between the methods' rankings by mean under the
    two ``K`` (with the first perturbation), and the pairs of methods they
    order oppositely; with several perturbations, likewise ``(metric,
    perturbation_a, perturbation_b)`` (with the first ``K``)."""

    @property
    def by_n_groups(self) -> Dict[int, "EvaluationResult"]:
        """``K`` -> the result of that ``K`` with the first perturbation (with
        several ``n_groups``; else empty)."""
        first = self.perturbation
        found = {k: r for (p, k), r in self.variants.items() if p == first}
        return found if len(found) > 1 else {}

    @property
    def by_perturbation(self) -> Dict[str, "EvaluationResult"]:
        """Perturbation -> its result with the first ``K`` (with several
        perturbations; else empty)."""
        found = {p: r for (p, k), r in self.variants.items() if k == self.n_groups}
        return found if len(found) > 1 else {}
    preprocessing: Optional[Dict[str, Any]] = field(default=None, repr=False)
    """How the images were prepared for the model (``input_size``, ``mean``,
    ``std``, ...), where the caller said so."""
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

    @property
    def results(self) -> List["EvaluationResult"]:
        """The result of every setting: :attr:`variants`' values, or this one."""
        return list(self.variants.values()) or [self]

    @property
    def unchanged_images(self) -> List[Any]:
        """The images where the model's output did not change under any
        perturbation of the metrics (under some ``K``); their values are NaN."""
        return list(
            dict.fromkeys(r["image"] for res in self.results for r in res.per_image if r.get("unchanged"))
        )

    def to_dict(self) -> Dict[str, Any]:
        """``{"model", "n_images", "n_skipped", "n_groups", "perturbation",
        "results": [{"method", "metric", "mean", "std", "n", "nan", "ci95": [low,
        high], "n_groups", "unchanged", "perturbation"}, ...], "ci95_method",
        "comparisons": [...], "p_value_method", "agreement": [...],
        "agreement_method", "stability": [...], "stability_method",
        "unchanged_images", "notes", "skipped", "cost": {...}}`` (see :attr:`cost`);
        undefined values are None. With several ``n_groups`` or perturbations the
        results, comparisons and agreement of every setting, each record with its
        ``n_groups`` and ``perturbation``; ``"preprocessing"`` where it is
        known."""
        results = self.results
        return {
            "model": self.model,
            "n_images": self.n_images,
            "n_skipped": len(self.skipped),
            "n_groups": self.n_groups
            if len({r.n_groups for r in results}) == 1
            else list(dict.fromkeys(r.n_groups for r in results)),
            "perturbation": self.perturbation
            if len({r.perturbation for r in results}) == 1
            else list(dict.fromkeys(r.perturbation for r in results)),
            "results": [
                {**asdict(r), "ci95": None if r.ci95 is None else list(r.ci95)}
                for res in results
                for r in res.rows
            ],
            "ci95_method": CI_METHOD,
            "comparisons": [
                {**c, "n_groups": res.n_groups, "perturbation": res.perturbation}
                for res in results
                for c in res.comparisons
            ],
            "p_value_method": p_value_method(),
            "agreement": [
                {
                    "metric_a": a,
                    "metric_b": b,
                    "n_groups": res.n_groups,
                    "perturbation": res.perturbation,
                    **values,
                }
                for res in results
                for (a, b), values in res.agreement.items()
            ],
            "agreement_method": AGREEMENT_METHOD,
            "stability": [
                {
                    "metric": metric,
                    "setting": "n_groups" if isinstance(a, int) else "perturbation",
                    "a": a,
                    "b": b,
                    "tau_b": values["tau_b"],
                    "swaps": [list(pair) for pair in values["swaps"]],
                }
                for (metric, a, b), values in self.stability.items()
            ],
            "stability_method": STABILITY_METHOD,
            "unchanged_images": self.unchanged_images,
            "notes": [UNCHANGED_NOTE] if self.unchanged_images else [],
            "skipped": list(self.skipped),
            "cost": self.cost,
            **({} if self.preprocessing is None else {"preprocessing": self.preprocessing}),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def to_csv(self) -> str:
        out = io.StringIO()
        writer = csv.DictWriter(
            out,
            fieldnames=[
                "method",
                "metric",
                "mean",
                "std",
                "n",
                "nan",
                "ci95_low",
                "ci95_high",
                "n_groups",
                "unchanged",
                "perturbation",
            ],
            lineterminator="\n",
        )
        writer.writeheader()
        for r in (r for res in self.results for r in res.rows):
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
        unchanged = max((r.unchanged for r in self.rows), default=0)
        note = f"\n{unchanged} of {self.n_images} images {UNCHANGED_NOTE}" if unchanged else ""
        return (
            f"{self.model}, {self.n_images} images{skipped}, K = {self.n_groups}"
            f"{'' if self.perturbation == 'baseline' else ', ' + self.perturbation}; cells: "
            f"mean ± std [95% CI] (undefined values)\n{'; '.join(parts)}\n{CI_METHOD}{note}"
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

    def format_comparison(self, reference: str = "random", width: Optional[int] = None) -> str:
        """For each method and metric, the share of the images where the
        method scores better than ``reference``, with the paired test's
        p-value: the paper's question, whether a metric tells a method from
        Random Attribution. Empty if ``reference`` was not evaluated. Laid
        out to fit ``width`` columns as :meth:`format_table` is."""
        if reference not in self.methods or len(self.methods) < 2:
            return ""
        header = [f"vs {reference}"] + self.metrics
        title = (
            f"Paired comparison with {reference}: share of the images where the method "
            f"scores better (p-value)"
        )
        width = width or terminal_width()
        table = _fit(header, self._versus(reference), width)
        return "\n".join([_wrap(title, width), table, _wrap(p_value_method(), width)])

    def to_markdown(self) -> str:
        header, body = self._cells()
        lines = [
            "| " + " | ".join(header) + " |",
            "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|",
        ]
        lines += ["| " + " | ".join(_markdown_cell(c) for c in row) + " |" for row in body]
        return "\n".join(lines) + "\n\n" + self._legend() + "\n"

    def format_table(self, width: Optional[int] = None) -> str:
        """The methods x metrics table as aligned plain text, in ``width``
        columns (default: the terminal's, :func:`terminal_width`): the whole
        table where it fits, else one table per metric, else a list per
        method; the legend is wrapped. Names are never cut."""
        width = width or terminal_width()
        header, body = self._cells()
        return _fit(header, body, width) + "\n" + _wrap(self._legend(), width)

    def format_agreement(self, width: Optional[int] = None) -> str:
        """The metrics' agreement on the methods (see :attr:`agreement`), one
        line per pair of metrics, laid out to fit ``width`` columns as
        :meth:`format_table` is; empty with one metric or one method."""
        if not self.agreement or len(self.methods) < 2:
            return ""
        header = ["metrics", "tau-b of means", "per-image tau-b (images)"]
        body = [
            [
                _pair_label(pair),
                _tau_text(v["tau_b"]),
                f"{_tau_text(v['per_image_tau_b'])} ({v['n_images']})",
            ]
            for pair, v in self.agreement.items()
        ]
        width = width or terminal_width()
        return "\n".join(
            ["Metric agreement", _fit(header, body, width), _wrap(AGREEMENT_METHOD, width)]
        )

    def format_stability(self, width: Optional[int] = None) -> str:
        """The rank stability of the methods across ``n_groups`` and
        perturbations (see :attr:`stability`), laid out to fit ``width``
        columns as :meth:`format_table` is; empty with one setting."""
        if not self.stability:
            return ""
        header = ["metric", "settings", "tau-b", "swapped pairs"]
        body = [
            [
                metric,
                _pair_label((a, b)),
                _tau_text(v["tau_b"]),
                "; ".join(_pair_label(p) for p in v["swaps"]) or "none",
            ]
            for (metric, a, b), v in self.stability.items()
        ]
        title = "Rank stability across K and perturbations"
        width = width or terminal_width()
        return "\n".join([title, _fit(header, body, width), _wrap(STABILITY_METHOD, width)])

    def __str__(self) -> str:
        width = terminal_width()
        parts = []
        for res in self.results:
            comparison = res.format_comparison(width=width)
            parts.append(res.format_table(width) + ("\n\n" + comparison if comparison else ""))
            agreement = res.format_agreement(width)
            if agreement:
                parts.append(agreement)
        stability = self.format_stability(width)
        return "\n\n".join(parts + ([stability] if stability else []))

    def save(self, path: str) -> None:
        """Write the table to ``path`` as JSON, CSV or Markdown by its suffix
        (``.json``, ``.csv``, ``.md``)."""
        writers = {".json": self.to_json, ".csv": self.to_csv, ".md": self.to_markdown}
        write_atomically(path, writers[output_suffix(path)]())


def combine(results: List[EvaluationResult]) -> EvaluationResult:
    """The result of several ``n_groups`` or perturbations: the first
    setting's, holding every setting's result in
    :attr:`~EvaluationResult.variants` and the methods' rank stability across
    ``K`` (with the first perturbation) and across perturbations (with the
    first ``K``) in :attr:`~EvaluationResult.stability`."""
    first = results[0]
    first.variants = {(res.perturbation, res.n_groups): res for res in results}
    means = {
        setting: {(r.method, r.metric): r.mean for r in res.rows}
        for setting, res in first.variants.items()
    }
    across_k = {k: means[(p, k)] for p, k in means if p == first.perturbation}
    across_p = {p: means[(p, k)] for p, k in means if k == first.n_groups}
    first.stability = {}
    for axis in (across_k, across_p):
        if len(axis) > 1:
            first.stability.update(stability(axis, first.methods, first.metrics))
    return first
