"""The per-image results file: one row per image and method, appended and
flushed batch by batch, so that an interrupted run can be resumed.

Columns: ``image`` (the path relative to the image folder, or the index),
``label`` (None/empty when unknown), ``target``, ``probability`` (the clean
probability of the target), ``method``, then one column per metric (None/empty
where the metric is undefined), and, when a metric reads the most-salient-first
deletion curve (AOPC, LOdds, AUC), ``deletion_curve``: the probabilities of
the target after removing the fractions ``0, 1/K, ..., (K-1)/K`` of the
pixels (a JSON list; in CSV the numbers separated by spaces, ``nan`` where
undefined), from which a report is re-rendered. Under ``torch.distributed`` each process
appends to its own part, ``FILE.rank<r>``; the first process merges the parts
into ``FILE`` at the end. Beside it, ``FILE.settings.json`` records what the
values depend on (model name, the images' number and a digest of their
names, methods, metrics, ``n_groups``, batch size, seed and targets), so that
a resumed run continues only the run it was started as, and, once the run
has finished, what it cost (see :mod:`captum_saco.evaluation.cost`).
"""

import csv
import glob
import io
import json
import math
import os
import re
import warnings
from typing import Any, Dict, List, Optional, Sequence, Tuple

from captum_saco.evaluation.result import write_atomically

FIXED_COLUMNS = ("image", "label", "target", "probability", "method")
CURVE_COLUMN = "deletion_curve"
#: the metrics that read the most-salient-first deletion curve
CURVE_METRICS = ("aopc", "lodds", "auc")
SUFFIXES = (".jsonl", ".csv")
#: RFC 4180's line end: the csv module quotes the fields that hold a character of
#: it, so that an image name with a carriage return stays one field
CSV_LINE_END = "\r\n"

Row = Dict[str, Any]


def check_suffix(path: str) -> str:
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in SUFFIXES:
        raise ValueError(
            f"per_image_file: expected a file name ending in .jsonl or .csv, got {path!r}"
        )
    return suffix


def _number(value: Any) -> Optional[float]:
    """A stored value as a float (None and empty cells are undefined: NaN)."""
    return math.nan if value in (None, "") else float(value)


def _stored(value: float) -> Optional[float]:
    return None if math.isnan(value) else value


def _curve(value: Any) -> List[float]:
    """A stored deletion curve (a JSON list, or numbers separated by spaces)
    as floats (NaN where undefined)."""
    points = value.split() if isinstance(value, str) else value
    return [_number(v) for v in points]


def _complete_text(path: str) -> Tuple[str, int]:
    """The text of ``path`` up to its last line end, and its length in bytes (a
    row cut by a killed process is left out)."""
    with open(path, "rb") as f:
        data = f.read()
    end = data.rfind(b"\n") + 1
    try:
        return data[:end].decode("utf-8"), end
    except UnicodeDecodeError as e:
        raise _unreadable(path, f"bytes that are not UTF-8 text ({e.reason})") from None


def _unreadable(path: str, what: str) -> ValueError:
    return ValueError(
        f"per_image_file: {path!r} holds {what}; resume from a file that this command "
        "wrote, or start afresh without resume"
    )


def _read_settings(path: str) -> Dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            recorded = json.load(f)
    except ValueError as e:  # not UTF-8, or not JSON
        raise _unreadable(path, f"no settings ({e})") from None
    if not isinstance(recorded, dict):
        raise _unreadable(path, f"no settings (a JSON {type(recorded).__name__})")
    return recorded


class PerImageFile:
    """Reads, appends to and merges the per-image results file."""

    def __init__(self, path: str, settings: Dict[str, Any], rank: int, world: int) -> None:
        """``settings``: what the values depend on, JSON-serialisable, with the
        list of ``"metrics"`` (the columns after the fixed ones)."""
        self.path, self.settings, self.metrics = path, settings, list(settings["metrics"])
        self.csv = check_suffix(path) == ".csv"
        self.columns = list(FIXED_COLUMNS) + self.metrics
        if any(k in CURVE_METRICS for k in self.metrics):
            self.columns.append(CURVE_COLUMN)
        self.rank, self.world = rank, world
        self.part = path if world == 1 else f"{path}.rank{rank}"
        self._file: Optional[io.TextIOBase] = None

    @property
    def settings_path(self) -> str:
        return f"{self.path}.settings.json"

    def check_settings(self) -> None:
        """Refuse to resume a file whose recorded settings differ from this run's;
        warn about one without them (written before they were recorded, or
        copied without them)."""
        if os.path.isdir(self.settings_path):
            raise ValueError(
                f"per_image_file: {self.settings_path!r}, where its settings go, is a folder"
            )
        if not os.path.isfile(self.settings_path):
            if self._paths():
                warnings.warn(
                    f"per_image_file: {self.settings_path!r} is missing, so it is not "
                    f"checked that {self.path!r} was written with this run's settings",
                    UserWarning,
                    stacklevel=4,
                )
            return
        recorded = _read_settings(self.settings_path)
        differ = [k for k in self.settings if recorded.get(k) != self.settings[k]]
        if differ:
            then = ", ".join(f"{k}={recorded.get(k)!r}" for k in differ)
            now = ", ".join(f"{k}={self.settings[k]!r}" for k in differ)
            raise ValueError(
                f"per_image_file: {self.path!r} was written with {then}, and this run has "
                f"{now}; resume with the same settings, or write to another file"
            )

    def _parts(self) -> Dict[int, str]:
        """The processes' parts on disk, ``FILE.rank<r>``, by rank ``r``."""
        pattern = re.compile(re.escape(self.path) + r"\.rank(\d+)")
        found = (pattern.fullmatch(p) for p in glob.glob(glob.escape(self.path) + ".rank*"))
        return {int(m.group(1)): m.group(0) for m in found if m and os.path.isfile(m.group(0))}

    def _paths(self) -> List[str]:
        """The file and the parts, whose rows a resumed run reads."""
        parts = self._parts()
        main = [self.path] if os.path.isfile(self.path) else []
        return main + [parts[r] for r in sorted(parts)]

    def _parse(self, path: str, text: str) -> List[Row]:
        if not self.csv:
            try:
                return [json.loads(line) for line in text.split("\n") if line.strip()]
            except json.JSONDecodeError as e:
                raise _unreadable(path, f"a line that is not JSON ({e})") from None
        # The csv module reads the quoted line breaks an image's name may hold.
        header, *rows = list(csv.reader(io.StringIO(text, newline=""))) or [self.columns]
        if header != self.columns:
            raise ValueError(
                f"per_image_file: {path!r} has the columns {','.join(header)}, expected "
                f"{','.join(self.columns)}; resume with the same metrics"
            )
        if any(len(row) != len(header) for row in rows):
            raise _unreadable(path, f"a row without the {len(header)} columns")
        return [dict(zip(header, row)) for row in rows]

    def read(self) -> Dict[Tuple[str, str], Row]:
        """The stored rows by ``(str(image), method)``; the last row wins."""
        self.check_settings()
        stored: Dict[Tuple[str, str], Row] = {}
        for path in self._paths():
            for row in self._parse(path, _complete_text(path)[0]):
                try:
                    for k in self.metrics:
                        if k in row:
                            row[k] = _number(row[k])
                    row["probability"] = _number(row["probability"])
                    if CURVE_COLUMN in row:
                        row[CURVE_COLUMN] = _curve(row[CURVE_COLUMN])
                    row["target"] = int(row["target"])
                    row["label"] = None if row["label"] in (None, "") else int(row["label"])
                    stored[(str(row["image"]), row["method"])] = row
                except (KeyError, TypeError, ValueError) as e:
                    raise _unreadable(path, f"the row {row!r} ({type(e).__name__}: {e})") from None
        return stored

    def recorded(self, key: str) -> Any:
        """The value of ``key`` in the settings file (None if absent)."""
        if not os.path.isfile(self.settings_path):
            return None
        return _read_settings(self.settings_path).get(key)

    def record(self, key: str, value: Any) -> None:
        """Add ``key: value`` (JSON-serialisable) to the settings file, beside
        the settings (which a resumed run checks)."""
        self.settings = {**self.settings, key: value}
        write_atomically(self.settings_path, json.dumps(self.settings, indent=1) + "\n")

    def open(self, resume: bool) -> None:
        """Open this process's part for appending (emptied unless resuming); the
        first process records the settings and, for a fresh run, removes the
        files of an earlier run that no process of this one empties (which a
        later resume would read)."""
        if self.rank == 0:
            write_atomically(self.settings_path, json.dumps(self.settings, indent=1) + "\n")
            if not resume:
                mine = {
                    self.path if self.world == 1 else f"{self.path}.rank{r}"
                    for r in range(self.world)
                }
                for stale in set(self._paths()) - mine:
                    os.unlink(stale)
        if resume and os.path.isfile(self.part):
            os.truncate(self.part, _complete_text(self.part)[1])
        self._file = open(self.part, "a" if resume else "w", newline="", encoding="utf-8")
        if self.csv and self._file.tell() == 0:
            self._file.write(self._header())
            self._file.flush()

    def _header(self) -> str:
        return ",".join(self.columns) + CSV_LINE_END if self.csv else ""

    def _format(self, rows: List[Row]) -> str:
        if not self.csv:
            return "".join(json.dumps(_for_json(r, self.metrics)) + "\n" for r in rows)
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=self.columns, lineterminator=CSV_LINE_END)
        writer.writerows({c: _cell(r.get(c)) for c in self.columns} for r in rows)
        return out.getvalue()

    def append(self, rows: List[Row]) -> None:
        """Append the rows of one batch in one write, and flush them to disk."""
        assert self._file is not None
        self._file.write(self._format(rows))
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def merge(self, rows: List[Row]) -> None:
        """Replace the file by ``rows`` (all the images, in order) and remove
        the processes' parts."""
        write_atomically(self.path, self._header() + self._format(rows))
        for part in self._parts().values():
            os.unlink(part)


def _cell(value: Any) -> Any:
    """A CSV cell: empty where undefined, a curve's numbers separated by spaces."""
    if isinstance(value, list):
        return " ".join(repr(float(v)) for v in value)
    return "" if value is None or value != value else value


def _for_json(row: Row, metrics: Sequence[str]) -> Row:
    out = {c: row.get(c) for c in FIXED_COLUMNS}
    out["probability"] = _stored(row["probability"])
    out.update({k: _stored(row[k]) for k in metrics})
    if CURVE_COLUMN in row:
        out[CURVE_COLUMN] = [_stored(v) for v in row[CURVE_COLUMN]]
    return out
