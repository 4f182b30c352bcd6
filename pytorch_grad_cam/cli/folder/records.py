"""Folder mode's records and ``results.csv``: one JSON record per (image, method) under
``.records/``, written last (after the image's outputs), which marks the pair done and
lets a run started again skip it; and ``results.csv`` and the contact sheet
(``index.html``), rebuilt from the records at the end of every run.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

from pytorch_grad_cam.cli.contact_sheet import RESULT_COLUMNS, write_contact_sheet
from pytorch_grad_cam.cli.folder.files import ImageItem, atomic_write
from pytorch_grad_cam.cli.jobs import note, one_line

RESULTS_NAME = "results.csv"
#: The columns of results.csv, before one column per ``--metrics`` name (the contact
#: sheet reads the same ones).
COLUMNS = RESULT_COLUMNS
RECORD_VERSION = 1


def empty_row(item: ImageItem, method: str, status: str, metric_names: Sequence[str]) -> Dict[str, str]:
    """A row of results.csv with only the path, the method and the status filled in."""
    row = {column: "" for column in (*COLUMNS, *metric_names)}
    row.update(path=item.relative, method=method, status=status)
    return row


def record_settings(args: argparse.Namespace, layer_path: str, category: Optional[int]) -> Dict[str, object]:
    """What a row depends on besides the image and the method: a record made with other
    settings is made again."""
    weights = None
    if args.weights is not None:
        stat = Path(args.weights).stat()
        weights = [str(Path(args.weights).resolve()), stat.st_size, stat.st_mtime_ns]
    return {
        "model": args.model,
        "weights": weights,
        "target_layer": layer_path,
        "category": category,
        "aug_smooth": bool(args.aug_smooth),
        "eigen_smooth": bool(args.eigen_smooth),
        "metrics": list(args.metrics or []),
    }


class Records:
    """The per-(image, method) records under ``output_dir/.records``: a record whose
    settings and source file match, whose status is not an error, and whose outputs
    exist, means "done"."""

    def __init__(self, output_dir: Path, settings: Dict[str, object]) -> None:
        self.output_dir = output_dir
        self.settings = settings

    def settings_of(self, method: str) -> Dict[str, object]:
        """The settings a record of ``method`` must have been made with."""
        return {**self.settings, "method": method}

    @staticmethod
    def source_of(item: ImageItem) -> List[int]:
        """The input file's size and modification time: a changed file is explained again
        ([-1, -1] for a file that has gone)."""
        try:
            stat = item.path.stat()
        except OSError:
            return [-1, -1]
        return [stat.st_size, stat.st_mtime_ns]

    def _load(self, item: ImageItem, method: str) -> Optional[Dict[str, str]]:
        """The row of a current record (these settings, this source file), else None."""
        try:
            record = json.loads((self.output_dir / item.record(method)).read_text(encoding="utf-8"))
            current = (
                record.get("version") == RECORD_VERSION
                and record.get("settings") == self.settings_of(method)
                and record.get("source") == self.source_of(item)
            )
            row = record.get("row")
        except (OSError, ValueError, AttributeError):
            return None
        return row if current and isinstance(row, dict) else None

    def read(self, item: ImageItem, method: str) -> Optional[Dict[str, str]]:
        """The record's row if the (image, method) is done, else None (errors are tried again)."""
        row = self._load(item, method)
        if row is None or str(row.get("status", "")).startswith("error"):
            return None
        outputs = [row.get(column, "") for column in ("thumbnail", "overlay", "map")]
        if not all((self.output_dir / output).is_file() for output in outputs if output):
            return None
        return row

    def row(self, item: ImageItem, method: str, metric_names: Sequence[str]) -> Dict[str, str]:
        """The (image, method)'s row of results.csv: its record's, errors included, or
        an error row where there is no current record."""
        row = self.read(item, method)
        if row is None:
            row = self._load(item, method)
            if row is None or not str(row.get("status", "")).startswith("error"):
                row = empty_row(item, method, "error: not explained (no complete record)", metric_names)
        return {column: str(row.get(column, "")) for column in (*COLUMNS, *metric_names)}

    def write(self, item: ImageItem, method: str, row: Dict[str, str], rank: int) -> None:
        """Write the record of ``row``, atomically (after its outputs).

        Raises:
            OSError: if it cannot be written.
        """
        record = {
            "version": RECORD_VERSION,
            "settings": self.settings_of(method),
            "source": self.source_of(item),
            "rank": rank,
            "row": row,
        }
        atomic_write(self.output_dir / item.record(method), json.dumps(record, indent=1).encode("utf-8"))


def csv_text(rows: Sequence[Mapping[str, str]], metric_names: Sequence[str]) -> str:
    """results.csv's text: the columns, then the rows sorted by (path, method)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=[*COLUMNS, *metric_names], lineterminator="\n")
    writer.writeheader()
    for row in sorted(rows, key=lambda row: (row["path"], row["method"])):
        writer.writerow(row)
    return buffer.getvalue()


def write_sheet(output_dir: Path, rows: Sequence[Mapping[str, str]], title: str) -> Optional[Path]:
    """Write ``index.html`` of the results; its path, or None (with a note) if it could not be written.

    The CSV is already written when this runs, so a failure here is a note, never an error.
    """
    try:
        return write_contact_sheet(output_dir, rows, title=title)
    except Exception as error:  # noqa: BLE001 - the CSV is written; a page is not worth failing the run
        note(f"the contact sheet (index.html) was not written: {one_line(error)}")
        return None
