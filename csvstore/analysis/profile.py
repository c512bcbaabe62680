"""Single-pass profile of an upload while it streams to storage (docs/design/profiler.md)."""

from __future__ import annotations

import codecs
import dataclasses
import re
from collections import Counter
from dataclasses import dataclass
from typing import Final

from csvstore.analysis.counter import _Counter, _DialectFilter, _new_counter
from csvstore.analysis.footer import NO_FOOTER, TAIL, TailDialect, find_footer
from csvstore.analysis.header import (
    _looks_like_header,
    _plain_names,
    _quoted_numbers_name_columns,
)
from csvstore.analysis.projection import _decoding_codec, _Projector, profilable
from csvstore.analysis.sniff import (
    _MAX_HEADER_VOTE_ROWS,
    _MAX_SAMPLE_FACTOR,
    _one_record,
    _sniff,
    _Sniffed,
)

__all__ = ["CsvProfile", "CsvProfiler"]


@dataclass(frozen=True, slots=True)
class CsvProfile:
    """What `CsvProfiler.finish` learnt about a CSV file."""

    delimiter: str
    quotechar: str
    line_terminator: str
    has_header: bool
    columns: list[str]
    column_count: int
    row_count: int
    ragged_rows: int
    checkpoints: list[tuple[int, int]]
    encoding: str
    preamble_lines: int = 0
    table_offset: int = 0  # stored-file offset of the table's first line
    skip_initial_space: bool = False
    comment_char: str | None = None
    duplicate_columns: list[str] = dataclasses.field(default_factory=list)
    footer_lines: int = 0
    escape_char: str | None = None
    header_rule: bool = False


class CsvProfiler:
    """Profiles a CSV file from its bytes, fed in order in chunks of any size: a sample is
    sniffed, then every chunk counted and dropped."""

    def __init__(
        self,
        *,
        encoding: str,
        checkpoint_every: int = 10_000,
        sample_size: int = 64 * 1024,
    ) -> None:
        if not profilable(encoding):
            raise ValueError(f"unsupported encoding {encoding!r}")
        if checkpoint_every < 1 or sample_size < 1:
            raise ValueError("checkpoint_every and sample_size must be positive")
        self._encoding = encoding
        self._checkpoint_every = checkpoint_every
        self._unit = 2 if encoding == "utf-16" else 1
        self._threshold = max(sample_size * self._unit, 4)
        self._max_sample = self._threshold * _MAX_SAMPLE_FACTOR
        self._sample: bytearray | None = bytearray()
        self._bom_len = 0
        self._projector = _Projector(wide=self._unit == 2, little=True, encoding=encoding)
        self._scanner: _Counter | _DialectFilter | None = None  # what is fed
        self._counter: _Counter | None = None  # what counts
        self._sniffed: _Sniffed | None = None
        self._has_header = False
        self._columns: list[str] = []
        self._rule = False
        self._profile: CsvProfile | None = None
        self._tail = bytearray()  # the last bytes counted, for the footer
        self._counted = 0

    def feed(self, data: bytes) -> None:
        if self._profile is not None:
            raise RuntimeError("feed() after finish()")
        if self._scanner is not None:
            self._count(self._projector.project(data))
            return
        assert self._sample is not None
        self._sample += data
        while self._sample is not None and len(self._sample) >= self._threshold:
            if not self._try_sniff(at_eof=False):
                self._threshold *= 2

    def finish(self) -> CsvProfile:
        if self._profile is None:
            if self._scanner is None:
                self._try_sniff(at_eof=True)
            assert self._scanner is not None
            assert self._counter is not None
            assert self._sniffed is not None
            self._scanner.finish()
            self._profile = self._build_profile(self._counter, self._sniffed)
        return self._profile

    def _try_sniff(self, *, at_eof: bool) -> bool:
        assert self._sample is not None
        raw = bytes(self._sample)
        little = True
        if self._encoding == "utf-16":
            bom_len = 2 if raw[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE) else 0
            little = raw[:2] != codecs.BOM_UTF16_BE
        elif self._encoding.startswith("utf-8"):
            bom_len = len(codecs.BOM_UTF8) if raw.startswith(codecs.BOM_UTF8) else 0
        else:
            bom_len = 0
        projector = _Projector(wide=self._unit == 2, little=little, encoding=self._encoding)
        projected = projector.project(raw[bom_len:])
        window = min(len(projected), (self._threshold - bom_len) // self._unit)
        # The window, not what is buffered, decides: chunking must not change the outcome.
        last_chance = at_eof or self._threshold >= self._max_sample
        sniffed = _sniff(
            projected[:window].decode("latin-1"),
            whole=at_eof and window == len(projected),
            last_chance=last_chance,
        )
        if sniffed is None:
            return False
        self._bom_len = bom_len
        self._projector = projector
        self._sniffed = sniffed
        self._counter = self._start_scanner(
            sniffed, raw[bom_len:], _decoding_codec(self._encoding, little)
        )
        self._scanner = self._counter
        if sniffed.skip_space or sniffed.comment_char is not None or sniffed.escape_char:
            self._scanner = _DialectFilter(
                self._counter, delimiter=sniffed.delimiter, quotechar=sniffed.quotechar,
                skip_space=sniffed.skip_space, comment_char=sniffed.comment_char,
                escape_char=sniffed.escape_char,
            )  # fmt: skip
        self._sample = None
        self._count(projected[sniffed.table_start :] if sniffed.table_start else projected)
        return True

    def _count(self, data: bytes) -> None:
        assert self._scanner is not None
        self._scanner.feed(data)
        self._counted += len(data)
        if len(data) >= TAIL:
            self._tail[:] = data[-TAIL:]
        else:
            self._tail += data
            if len(self._tail) > 2 * TAIL:
                del self._tail[:-TAIL]

    def _start_scanner(self, sniffed: _Sniffed, body: bytes, codec: str) -> _Counter:
        records = sniffed.records
        expected: int | None = None
        if records:
            first = records[0]
            self._rule = len(records) > 1 and _rule_line(
                first.fields, records[1].fields, sniffed.delimiter
            )
            below = records[1 + self._rule :]
            rows = [record.fields for record in below[:_MAX_HEADER_VOTE_ROWS]]
            unnamed = (
                None if self._rule else _unnamed_column(first.fields, [r.fields for r in below])
            )
            self._has_header = (
                self._rule or unnamed is not None or _looks_like_header(first.fields, rows)
            )
            if not self._has_header and sniffed.quotechar:
                voters = records[: _MAX_HEADER_VOTE_ROWS + 1]
                raws = [
                    body[r.start * self._unit : r.end * self._unit].decode(codec, "replace")
                    for r in voters
                ]
                self._has_header = _quoted_numbers_name_columns(
                    first.fields, rows, raws[0], raws[1:],
                    sniffed.delimiter, sniffed.quotechar, sniffed.skip_space,
                )  # fmt: skip
            if self._has_header:
                raw_header = body[first.start * self._unit : first.end * self._unit]
                self._columns = _one_record(
                    raw_header.decode(codec, "replace"),
                    sniffed.delimiter,
                    sniffed.quotechar,
                    sniffed.skip_space,
                    sniffed.escape_char,
                )
                if self._columns and self._columns[0].startswith("\ufeff"):  # GB18030's BOM
                    self._columns[0] = self._columns[0][1:]
                if unnamed is not None:
                    self._columns.insert(unnamed, "")
                expected = len(self._columns)
            else:
                widths = Counter(len(record.fields) for record in records)
                expected = widths.most_common(1)[0][0]
        return _new_counter(
            delimiter=sniffed.delimiter,
            quotechar=sniffed.quotechar,
            terminator=sniffed.terminator,
            expected_fields=expected,
            header_records=int(self._has_header) + self._rule,
            checkpoint_every=self._checkpoint_every,
        )

    def _build_profile(self, scanner: _Counter, sniffed: _Sniffed) -> CsvProfile:
        bom, unit = self._bom_len, self._unit
        table = sniffed.table_start
        seen: Counter[str] = Counter(self._columns)
        footer = NO_FOOTER
        if scanner.expected_fields is not None:
            footer = find_footer(
                bytes(self._tail), self._counted - len(self._tail), scanner.recent_starts,
                data_rows=scanner.data_rows,
                width=scanner.expected_fields,
                dialect=TailDialect(sniffed.delimiter, sniffed.quotechar, sniffed.skip_space,
                                    sniffed.comment_char, sniffed.escape_char),
            )  # fmt: skip
        rows = scanner.data_rows - footer.records
        return CsvProfile(
            delimiter=sniffed.delimiter,
            quotechar=sniffed.quotechar,
            line_terminator=sniffed.terminator,
            has_header=self._has_header,
            columns=list(self._columns),
            column_count=scanner.expected_fields or 0,
            row_count=rows,
            ragged_rows=scanner.ragged - footer.ragged,
            checkpoints=[
                (row, bom + unit * (table + offset))
                for row, offset in scanner.checkpoints
                if row < rows
            ],
            encoding=self._encoding,
            preamble_lines=sniffed.preamble_lines,
            table_offset=bom + unit * table,
            skip_initial_space=sniffed.skip_space,
            comment_char=sniffed.comment_char,
            duplicate_columns=[name for name, count in seen.items() if count > 1 and name.strip()],
            footer_lines=footer.lines,
            escape_char=sniffed.escape_char,
            header_rule=self._rule,
        )


def _rule_line(header: list[str], record: list[str], delimiter: str) -> bool:
    """A rule under the header (sqlcmd ``--,-``, psql ``--+-``, Markdown ``|--|:-|``): runs of
    ``-`` or ``=`` (empty over an empty name), one over 1 long unless all names are 1 long."""
    runs = [cell.strip() for cell in record]
    if delimiter == "|" and len(runs) == 1 < len(header):
        runs = runs[0].split("+")
    if len(runs) != len(header) or not any(runs):
        return False
    pairs = zip(runs, header, strict=True)
    if not all(_RULE_RE.fullmatch(run) or not (run or name.strip()) for run, name in pairs):
        return False
    return any(len(run) > 1 for run in runs) or all(len(n.strip()) == 1 for n in header)


_RULE_RE: Final = re.compile(r":?-+:?|=+")


def _unnamed_column(header: list[str], rows: list[list[str]]) -> int | None:
    """Where a header of names one short of all its rows (two or more) lacks one: last
    when every row ends empty (a trailing delimiter), else first (R's ``write.table``)."""
    width = len(header)
    if (
        len(rows) < 2
        or not _plain_names(header)  # text, not a short row of data (`1,2` over `3,4,5`)
        or len({name.strip().lower() for name in header}) < width
        or any(len(row) != width + 1 for row in rows)
    ):
        return None
    return width if all(row[-1] == "" for row in rows) else 0
