"""What the client prints: rich tables and progress bars for people (on a terminal), one
JSON document for scripts (``--json``); errors always go to stderr."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Mapping
from typing import Any

from rich.console import Console
from rich.filesize import decimal
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from rich.text import Text


class Output:
    def __init__(self, *, json_mode: bool = False, quiet: bool = False) -> None:
        self.json_mode = json_mode
        self.quiet = quiet
        # Piped output is as wide as it needs (up to a limit), so ids are never cut short;
        # a terminal's width is its own.
        wide = not sys.stdout.isatty() and "COLUMNS" not in os.environ
        self.console = Console(no_color=json_mode, highlight=False, width=200 if wide else None)
        self.show_progress = not json_mode and not quiet and sys.stdout.isatty()

    def progress(self) -> Progress:
        """Bars for byte transfers; a disabled one (drawing nothing) when bars are off."""
        return Progress(
            TextColumn("{task.description}", markup=False),
            BarColumn(),
            TaskProgressColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            disable=not self.show_progress,
            transient=True,
        )

    def document(self, doc: Any) -> None:
        """The one JSON document of ``--json``."""
        sys.stdout.write(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
        sys.stdout.flush()

    def say(self, text: str) -> None:
        """A line for people: not in ``--json`` or ``--quiet`` mode."""
        if not self.json_mode and not self.quiet:
            self.console.print(text, markup=False)

    def show(self, renderable: Table) -> None:
        if not self.json_mode:
            self.console.print(renderable)

    def error(self, text: str) -> None:
        print(f"csvstore: {text}", file=sys.stderr, flush=True)

    def warn(self, text: str) -> None:
        if not self.quiet:
            print(f"csvstore: {text}", file=sys.stderr, flush=True)


def _add_row(table: Table, *cells: str) -> None:
    """Cells as plain text: a name like ``[red].csv`` is shown, never read as markup."""
    table.add_row(*(Text(cell) for cell in cells))


def size_text(size: int | None) -> str:
    return "-" if size is None else decimal(size)


def sessions_table(sessions: Iterable[Mapping[str, Any]]) -> Table:
    table = Table(box=None)
    table.add_column("session", overflow="fold")
    table.add_column("files", justify="right", no_wrap=True)
    table.add_column("size", justify="right", no_wrap=True)
    table.add_column("created", no_wrap=True)
    table.add_column("expires", no_wrap=True)
    for session in sessions:
        files = session.get("csv_files") or []
        _add_row(
            table,
            session["session_id"],
            str(len(files)),
            size_text(sum(int(f.get("file_size") or 0) for f in files)),
            session.get("created_at") or "",
            session.get("expires_at") or "-",
        )
    return table


def files_table(files: Iterable[Mapping[str, Any]]) -> Table:
    table = Table(box=None)
    table.add_column("file id", no_wrap=True, min_width=36)
    table.add_column("name", overflow="fold")
    table.add_column("size", justify="right", no_wrap=True)
    table.add_column("rows", justify="right", no_wrap=True)
    table.add_column("sha256", no_wrap=True)
    table.add_column("created", no_wrap=True)
    for file in files:
        rows = file.get("row_count")
        _add_row(
            table,
            file["id"],
            file.get("original_filename") or "",
            size_text(file.get("file_size")),
            "-" if rows is None else str(rows),
            (file.get("sha256") or "-")[:16],
            file.get("created_at") or "",
        )
    return table


def fields_table(record: Mapping[str, Any], *, skip: Iterable[str] = ()) -> Table:
    """One object as ``field  value`` lines."""
    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    skipped = set(skip)
    for key, value in record.items():
        if key in skipped:
            continue
        if isinstance(value, list):
            text = ", ".join(map(str, value))
        elif value is None:
            text = "-"
        else:
            text = str(value) if not isinstance(value, str) else repr(value)[1:-1]
        _add_row(table, key, text)
    return table


def _cell(value: Any) -> str:
    return "null" if value is None else str(value)


def result_table(result: Mapping[str, Any]) -> Table:
    """A query's result: its columns (with their types) and rows."""
    table = Table(box=None)
    for name, kind in zip(result["columns"], result["types"], strict=True):
        table.add_column(f"{name}\n{kind}", overflow="fold")
    for row in result["rows"]:
        _add_row(table, *map(_cell, row))
    return table


def summary_columns_table(columns: Iterable[Mapping[str, Any]]) -> Table:
    table = Table(box=None)
    names = ("column", "type", "count", "nulls", "≈distinct", "min", "max", "mean", "std")
    for name in names:
        table.add_column(name, overflow="fold")
    table.add_column("most frequent", overflow="fold")
    for c in columns:
        top = ", ".join(f"{_cell(t['value'])} ({t['count']})" for t in c["top"])
        numbers = [c["mean"], c["std"]]
        shown = ["-" if n is None else f"{n:.6g}" for n in numbers]
        fixed = [c["name"], c["type"], c["count"], c["nulls"], c["approx_distinct"]]
        _add_row(table, *map(_cell, fixed), _cell(c["min"]), _cell(c["max"]), *shown, top)
    return table
