"""Reading stored rows back from a checkpoint, bounded in rows and bytes."""

from __future__ import annotations

import bisect
import codecs
import csv
import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO, Final, Protocol

from csvstore.analysis import READ_FIELD_LIMIT
from csvstore.analysis.counter import _Counter, _DialectFilter, _first_break, _new_counter
from csvstore.analysis.projection import _decoding_codec, _Projector
from csvstore.analysis.sniff import _DEFAULT_TERMINATOR


class RowSource(Protocol):
    """What `iter_rows_from` needs of a profile (a `CsvProfile` or a stored copy of one)."""

    @property
    def encoding(self) -> str: ...

    @property
    def delimiter(self) -> str: ...

    @property
    def quotechar(self) -> str: ...

    @property
    def checkpoints(self) -> Sequence[tuple[int, int]]: ...

    @property
    def skip_initial_space(self) -> bool: ...

    @property
    def comment_char(self) -> str | None: ...

    @property
    def escape_char(self) -> str | None: ...


def iter_rows_from(
    fp: BinaryIO, profile: RowSource, start_row: int, limit: int, row_count: int | None = None
) -> tuple[list[list[str]], int | None]:
    """Up to `limit` data rows from `start_row` (of `row_count`, if given) and the next index
    or None, parsed from the last checkpoint before it. `fp` is left open; csv.Error
    propagates."""
    if start_row < 0 or limit < 1:
        raise ValueError("start_row must be >= 0 and limit >= 1")
    if row_count is not None:
        if start_row >= row_count:
            return [], None
        limit = min(limit, row_count - start_row)
    checkpoints = profile.checkpoints
    at = bisect.bisect_right(checkpoints, start_row, key=lambda checkpoint: checkpoint[0]) - 1
    if at < 0:
        return [], None
    row, offset = checkpoints[at]
    little = True
    if profile.encoding == "utf-16":
        fp.seek(0)
        little = fp.read(2) != codecs.BOM_UTF16_BE
    fp.seek(offset)
    text = io.TextIOWrapper(
        fp, encoding=_decoding_codec(profile.encoding, little), errors="replace", newline=""
    )
    try:
        rows, next_row = _collect_rows(text, profile, row, start_row, limit)
    finally:
        text.detach()
    if row_count is not None and next_row is not None and next_row >= row_count:
        return rows, None
    return rows, next_row


def _collect_rows(
    text: io.TextIOWrapper, profile: RowSource, row: int, start_row: int, limit: int
) -> tuple[list[list[str]], int | None]:
    rows: list[list[str]] = []
    for record in _reader(text, profile):
        if not record:
            continue
        if row >= start_row:
            if len(rows) == limit:
                return rows, row
            rows.append(record)
        row += 1
    return rows, None


# Rows are skipped in blocks this size: it bounds the checkpoints the counter holds.
_SKIP_BLOCK: Final = 64 * 1024


@dataclass(frozen=True, slots=True)
class RowsPage:
    rows: list[list[str]]
    next_row: int | None
    truncated: list[tuple[int, int]]  # (index in rows, column)


def read_page(
    fp: BinaryIO,
    profile: RowSource,
    start_row: int,
    limit: int,
    *,
    max_bytes: int,
    cell_limit: int,
    row_count: int | None = None,
    line_terminator: str | None = None,
) -> RowsPage:
    """Up to `limit` data rows from `start_row`, parsing at most `max_bytes` bytes: a row
    the bound cuts waits for the next page unless it is the first (then it is truncated)."""
    if start_row < 0 or limit < 1 or not 2 <= max_bytes <= READ_FIELD_LIMIT or cell_limit < 1:
        raise ValueError(
            f"start_row must be >= 0, max_bytes 2-{READ_FIELD_LIMIT}, limit and cell_limit > 0"
        )
    if row_count is not None:
        if start_row >= row_count:
            return RowsPage([], None, [])
        limit = min(limit, row_count - start_row)  # footer lines after the table are no rows
    little = True
    if profile.encoding == "utf-16":
        fp.seek(0)
        little = fp.read(2) != codecs.BOM_UTF16_BE
    begin = _row_offset(fp, profile, start_row, little, line_terminator or _DEFAULT_TERMINATOR)
    if begin is None:
        return RowsPage([], None, [])
    if profile.comment_char is not None:  # the bound is for rows, not for comments before
        wide = profile.encoding == "utf-16"
        begin = _after_blank_lines(
            fp, begin, wide=wide, little=little, comment=profile.comment_char
        )
    fp.seek(begin)
    capped = _CappedReader(fp, max_bytes - max_bytes % 2)
    text = io.TextIOWrapper(
        io.BufferedReader(capped, 64 * 1024),
        encoding=_decoding_codec(profile.encoding, little),
        errors="replace",
        newline="",
    )
    rows: list[list[str]] = []
    more = False
    for record in _reader(text, profile):
        if not record:
            continue
        if len(rows) == limit:
            more = True
            break
        rows.append(record)
    truncated: list[tuple[int, int]] = []
    if not more and capped.cut and rows:
        if len(rows) > 1:
            rows.pop()  # maybe cut: the next page starts with it
        else:
            truncated.append((0, len(rows[0]) - 1))
        more = True
    for index, row in enumerate(rows):
        for column, cell in enumerate(row):
            if len(cell) > cell_limit:
                row[column] = cell[:cell_limit]
                if (index, column) not in truncated:
                    truncated.append((index, column))
    truncated.sort()
    next_row = start_row + len(rows)
    if not more or (row_count is not None and next_row >= row_count):
        return RowsPage(rows, None, truncated)
    return RowsPage(rows, next_row, truncated)


def _reader(text: io.TextIOWrapper, profile: RowSource) -> Iterator[list[str]]:
    """csv.reader in the profile's dialect, comment lines blank as the counter sees them."""
    mark = profile.comment_char
    lines: Iterator[str] = (
        text if mark is None else ("\n" if line.startswith(mark) else line for line in text)
    )
    return csv.reader(
        lines,
        delimiter=profile.delimiter,
        quotechar=profile.quotechar,
        skipinitialspace=profile.skip_initial_space,
        escapechar=profile.escape_char,
    )


class _CappedReader(io.RawIOBase):
    """At most `cap` bytes of `fp` from where it stands; `cut` once more remained unread."""

    def __init__(self, fp: BinaryIO, cap: int) -> None:
        super().__init__()
        self._fp = fp
        self._left = cap
        self.cut = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any, /) -> int:
        target = memoryview(buffer).cast("B")
        if self._left <= 0:
            self.cut = self.cut or bool(self._fp.read(1))
            return 0
        data = self._fp.read(min(len(target), self._left))
        target[: len(data)] = data
        self._left -= len(data)
        return len(data)


def _row_offset(
    fp: BinaryIO, profile: RowSource, start_row: int, little: bool, terminator: str
) -> int | None:
    """Where data row `start_row` starts (None: past the end), counted by the record counter
    from the last checkpoint before it."""
    checkpoints = profile.checkpoints
    at = bisect.bisect_right(checkpoints, start_row, key=lambda checkpoint: checkpoint[0]) - 1
    if at < 0:
        return None
    row, offset = checkpoints[at]
    skip = start_row - row
    if not skip:
        return offset
    wide = profile.encoding == "utf-16"
    unit = 2 if wide else 1
    projector = _Projector(wide=wide, little=little, encoding=profile.encoding)
    scanner = _new_counter(
        delimiter=profile.delimiter,
        quotechar=profile.quotechar,
        terminator=terminator,
        expected_fields=None,
        header_records=0,
        checkpoint_every=skip,
    )
    fed: _Counter | _DialectFilter = scanner
    if profile.skip_initial_space or profile.comment_char is not None or profile.escape_char:
        fed = _DialectFilter(
            scanner, delimiter=profile.delimiter, quotechar=profile.quotechar,
            skip_space=profile.skip_initial_space, comment_char=profile.comment_char,
            escape_char=profile.escape_char,
        )  # fmt: skip
    fp.seek(offset)
    counted = 0
    while True:
        data = fp.read(_SKIP_BLOCK)
        if data:
            projected = projector.project(data)
            fed.feed(projected)
            counted += len(projected)
        if not data or scanner.data_rows >= skip:
            # finish() closes row `skip` if it has begun, recording its checkpoint.
            fed.finish()
            break
    for index, where in scanner.checkpoints:
        if index == skip:
            return offset + unit * where
    if scanner.data_rows < skip:
        return None
    return _after_blank_lines(fp, offset + unit * counted, wide=wide, little=little)


def _after_blank_lines(
    fp: BinaryIO, position: int, *, wide: bool, little: bool, comment: str | None = None
) -> int:
    """Start of the first line from `position` neither blank nor a comment; else EOF."""
    projector = _Projector(wide=wide, little=little)
    unit = 2 if wide else 1
    mark = comment.encode("latin-1") if comment else None
    in_comment = False
    fp.seek(position)
    while True:
        data = fp.read(_SKIP_BLOCK)
        if not data:
            return position
        projected = projector.project(data)
        at = 0
        while at < len(projected):
            if in_comment:
                at = _first_break(projected[at:]) + at
                in_comment = at == len(projected)
                continue
            rest = projected[at:].lstrip(b"\r\n")
            at = len(projected) - len(rest)
            if not rest:
                break
            if mark is None or not rest.startswith(mark):
                return position + unit * at
            in_comment = True
        position += unit * len(projected)
