"""Footer lines after the table (notes, sources), judged on the stream's last records."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

from csvstore.analysis.scanner import RECENT

TAIL: Final = 32 * 1024  # bytes of the stream's end kept for the check
_MAX_NOTES: Final = 24
_FOOTNOTE_MARK_RE: Final = re.compile(
    r"\s*(?:[*\u2020\u2021]|\(\w{1,3}\)|\[\w{1,3}\]|\d{1,2}(?:/|\)|\.\s))"
)
# A database shell's row count after a result: psql's "(25 rows)", sqlcmd's "... affected)".
_ROW_COUNT_RE: Final = re.compile(r"\s*\(\d+ rows?(?: affected)?\)\s*\Z")
# Text is projected bytes read as latin-1: any byte over 0x7f may be part of a letter.
_LABEL_RE: Final = re.compile(r"[ \t]*(?:[^\W\d]|[\x80-\xff])[\w ./\x80-\xff-]{0,40}:(?:\s|$)")

assert _MAX_NOTES < RECENT  # the table's last row must be among the recent records


@dataclass(frozen=True, slots=True)
class Footer:
    lines: int = 0  # after the table's last row, blank ones included
    records: int = 0
    ragged: int = 0


NO_FOOTER: Final = Footer()


@dataclass(frozen=True, slots=True)
class TailDialect:
    delimiter: str
    quotechar: str
    skip_space: bool
    comment_char: str | None
    escape_char: str | None = None


def find_footer(
    tail: bytes,
    tail_at: int,
    starts: list[int],
    *,
    data_rows: int,
    width: int | None,
    dialect: TailDialect,
) -> Footer:
    """The footer of a stream ending in `tail` (at offset `tail_at`), given the offsets of
    its last records; rules: docs/profile.md#footers."""
    if width is None or width < 2 or data_rows < 2 or not starts or starts[-1] < tail_at:
        return NO_FOOTER
    try:
        last = next(_records(tail[starts[-1] - tail_at :], dialect), None)
        if last is None or not _in_footer(last[0], width):
            return NO_FOOTER
        usable = [start for start in starts if start >= tail_at]
        parsed = list(_records(tail[usable[0] - tail_at :], dialect))
    except csv.Error:
        return NO_FOOTER
    records = [(fields, line) for fields, line in parsed if fields]
    if len(records) != len(usable):
        return NO_FOOTER  # the parse and the counter disagree: judge nothing
    block = 0  # notes, and rows of empty cells (spreadsheet blank lines) among them
    while block < min(len(records) - 1, _MAX_NOTES):
        if not _in_footer(records[-1 - block][0], width):
            break
        block += 1
    footer = records[len(records) - block :]
    notes = [fields for fields, _ in footer if not _blank(fields)]
    only_space = bool(footer) and all(_space_line(fields) for fields, _ in footer)
    if not (notes or only_space) or data_rows - block < 1:
        return NO_FOOTER
    row, row_line = records[-1 - block]
    if not _fits(row, width) and (not only_space or _space_line(row)):
        return NO_FOOTER
    if notes:
        first_note_line = next(line for fields, line in footer if fields in notes)
        gap = any(_blank(fields) and row_line < line < first_note_line for fields, line in parsed)
        header_at = len(records) - data_rows - 1
        rows = [fields for at, (fields, _) in enumerate(records[:-block]) if at > header_at]
        if not gap and not all(_stands_out(fields, rows) for fields in notes):
            return NO_FOOTER
    lines = parsed[-1][1] - row_line
    ragged = sum(len(fields) != width for fields, _ in footer)
    return Footer(lines=lines, records=block, ragged=ragged)


def _records(data: bytes, dialect: TailDialect) -> Iterator[tuple[list[str], int]]:
    text: Iterator[str] = io.StringIO(data.decode("latin-1"), newline="")
    mark = dialect.comment_char
    if mark is not None:
        text = ("\n" if line.startswith(mark) else line for line in text)
    reader = csv.reader(
        text,
        delimiter=dialect.delimiter,
        quotechar=dialect.quotechar,
        skipinitialspace=dialect.skip_space,
        escapechar=dialect.escape_char,
    )
    for fields in reader:
        yield fields, reader.line_num


def _fits(fields: list[str], width: int) -> bool:
    return len(fields) == width and sum(1 for cell in fields if cell.strip()) >= 2


def _has_letter(text: str) -> bool:
    return any(char.isalpha() or char >= "\x80" for char in text)


def _in_footer(fields: list[str], width: int) -> bool:
    return _is_note(fields, width) or _blank(fields)


def _blank(fields: list[str]) -> bool:
    # Empty cells or a rule ("-----"): a spreadsheet's blank line.
    return not any(char.isalnum() or char >= "\x80" for cell in fields for char in cell)


def _space_line(fields: list[str]) -> bool:
    return len(fields) == 1 and not fields[0].replace("\x1a", "").strip()


def _is_note(fields: list[str], width: int) -> bool:
    if not _has_letter(fields[0]):
        return False
    if len(fields) < width or _LABEL_RE.fullmatch(fields[0]):  # "Source:,Census Bureau,,"
        return True
    return not any(cell.strip() for cell in fields[1:])


def _stands_out(note: list[str], rows: list[list[str]]) -> bool:
    text = note[0]
    values = [row[0] for row in rows]
    for pattern in (_LABEL_RE, _FOOTNOTE_MARK_RE, _ROW_COUNT_RE):
        if pattern.match(text) and not any(pattern.match(value) for value in values):
            return True
    if any(cell.strip() for cell in note[1:]):
        return False
    longest = max(map(len, values), default=0)
    words = sum(1 for word in text.split(" ") if word)
    return words >= 4 and len(text.strip()) > 2 * longest
