"""The per-image results file: one row per image and method, appended and
flushed batch by batch, so that an interrupted run can be resumed.

Columns: ``image`` (the path relative to the image folder, or the index),
``label`` (None/empty when unknown), ``target``, ``probability`` (the clean
probability of the target), ``method``, then one column per metric (None/empty
where the metric is undefined). Under ``torch.distributed`` each process
appends to its own part, ``FILE.rank<r>``; the first process merges the parts
into ``FILE`` at the end.
"""

import csv
import glob
import io
import json
import math
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

from captum_saco.evaluation.result import write_atomically

FIXED_COLUMNS = ("image", "label", "target", "probability", "method")
SUFFIXES = (".jsonl", ".csv")

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


def _complete_lines(path: str) -> Tuple[List[str], int]:
    """The complete lines of ``path`` and the byte length they span (a line
    cut by a killed process is left out)."""
    with open(path, "rb") as f:
        data = f.read()
    end = data.rfind(b"\n") + 1
    return data[:end].decode("utf-8").splitlines(), end


class PerImageFile:
    """Reads, appends to and merges the per-image results file."""

    def __init__(self, path: str, metrics: Sequence[str], rank: int, world: int) -> None:
        self.path, self.metrics = path, list(metrics)
        self.csv = check_suffix(path) == ".csv"
        self.columns = list(FIXED_COLUMNS) + self.metrics
        self.part = path if world == 1 else f"{path}.rank{rank}"
        self._file: Optional[io.TextIOBase] = None

    def _paths(self) -> List[str]:
        return [
            p
            for p in [self.path, *sorted(glob.glob(glob.escape(self.path) + ".rank*"))]
            if os.path.isfile(p)
        ]

    def _parse(self, path: str, lines: List[str]) -> List[Row]:
        if not self.csv:
            return [json.loads(line) for line in lines if line.strip()]
        rows = list(csv.DictReader(lines))
        if lines and next(csv.reader(lines[:1])) != self.columns:
            raise ValueError(
                f"per_image_file: {path!r} has the columns {lines[0]!r}, expected "
                f"{','.join(self.columns)}; resume with the same metrics"
            )
        return rows

    def read(self) -> Dict[Tuple[str, str], Row]:
        """The stored rows by ``(str(image), method)``; the last row wins."""
        stored: Dict[Tuple[str, str], Row] = {}
        for path in self._paths():
            for row in self._parse(path, _complete_lines(path)[0]):
                for k in self.metrics:
                    if k in row:
                        row[k] = _number(row[k])
                row["probability"] = _number(row["probability"])
                row["target"] = int(row["target"])
                row["label"] = None if row["label"] in (None, "") else int(row["label"])
                stored[(str(row["image"]), row["method"])] = row
        return stored

    def open(self, resume: bool) -> None:
        """Open this process's part for appending (emptied unless resuming)."""
        if resume and os.path.isfile(self.part):
            os.truncate(self.part, _complete_lines(self.part)[1])
        self._file = open(self.part, "a" if resume else "w", newline="", encoding="utf-8")
        if self.csv and self._file.tell() == 0:
            self._file.write(",".join(self.columns) + "\n")
            self._file.flush()

    def _format(self, rows: List[Row]) -> str:
        if not self.csv:
            return "".join(json.dumps(_for_json(r, self.metrics)) + "\n" for r in rows)
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=self.columns, lineterminator="\n")
        writer.writerows(
            {c: "" if r.get(c) is None or r[c] != r[c] else r[c] for c in self.columns}
            for r in rows
        )
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
        header = ",".join(self.columns) + "\n" if self.csv else ""
        write_atomically(self.path, header + self._format(rows))
        for part in glob.glob(glob.escape(self.path) + ".rank*"):
            os.unlink(part)


def _for_json(row: Row, metrics: Sequence[str]) -> Row:
    out = {c: row.get(c) for c in FIXED_COLUMNS}
    out["probability"] = _stored(row["probability"])
    out.update({k: _stored(row[k]) for k in metrics})
    return out
