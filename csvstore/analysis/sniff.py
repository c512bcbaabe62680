"""Sniffing the dialect, the preamble and the comment character from the sample."""

from __future__ import annotations

import csv
import io
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final, NamedTuple

from csvstore.analysis.header import _column_kinds, _looks_like_header, _plain_names

_DELIMITERS: Final = (",", ";", "\t", "|")
_EXTRA_DELIMITERS: Final = (":", "~", "^", "!")
_FITS: Final = 0.9  # share of sampled records with the modal width that counts as a fit
_COMMENT: Final = "#"
_DEFAULT_TERMINATOR: Final = "\n"
# The sample doubles up to this many times `sample_size` for _MIN_SNIFF_RECORDS records.
_MAX_SAMPLE_FACTOR: Final = 64
_MIN_SNIFF_RECORDS: Final = 8
_MAX_SNIFF_RECORDS: Final = 40
_MAX_HEADER_VOTE_ROWS: Final = 20
_MAX_PREAMBLE: Final = 32


class _SampleRecord(NamedTuple):  # not a frozen dataclass: cheaper, forty per upload
    start: int
    end: int
    fields: list[str]


@dataclass(frozen=True, slots=True)
class _Sniffed:
    delimiter: str
    quotechar: str
    terminator: str
    records: list[_SampleRecord]  # whole, non-blank records of the table
    complete: bool  # False: not one whole record in the largest sample
    table_start: int = 0
    preamble_lines: int = 0
    skip_space: bool = False
    comment_char: str | None = None
    escape_char: str | None = None


_SEPARATOR_CLASS: Final = "[,;\t|\r\n]"
_DOUBLE_QUOTE_OPENS_RE: Final = re.compile(f'(?:^|(?<={_SEPARATOR_CLASS}))"')
_SINGLE_QUOTED_FIELD_RE: Final = re.compile(
    f"(?:^|(?<={_SEPARATOR_CLASS}))'(?:[^']++|'')*+'(?={_SEPARATOR_CLASS}|$)"
)


def _choose_quotechar(text: str) -> str:
    """``'`` only when fields are clearly quoted with it and never with ``"``."""
    if "'" not in text or ('"' in text and _DOUBLE_QUOTE_OPENS_RE.search(text)):
        return '"'
    for quoted, _ in enumerate(_SINGLE_QUOTED_FIELD_RE.finditer(text), start=1):
        if quoted == 2:
            return "'"
    return '"'


def _line_ending(text: str, stop: int) -> str:
    if text.startswith("\r\n", stop - 2):
        return "\r\n"
    if stop and text[stop - 1] in "\r\n":
        return text[stop - 1]
    return ""


def _parse_sample(
    text: str, delimiter: str, quotechar: str, *, whole: bool, skip: bool = False,
    escape: str | None = None,
) -> tuple[list[_SampleRecord], Counter[str]]:  # fmt: skip
    """Non-blank records of `text` and the count of each terminator; unless `whole`, the
    last record (maybe cut short) is dropped."""
    if not skip and escape is None and _is_plain(text, quotechar):
        return _split_sample(text, delimiter, whole=whole)
    return _read_sample(text, delimiter, quotechar, whole=whole, skip=skip, escape=escape)


def _read_sample(
    text: str, delimiter: str, quotechar: str, *, whole: bool, skip: bool = False,
    escape: str | None = None,
) -> tuple[list[_SampleRecord], Counter[str]]:  # fmt: skip
    consumed = 0

    def lines() -> Iterator[str]:
        # csv.reader pulls exactly one record's lines before yielding it: `consumed` is its end.
        nonlocal consumed
        for line in io.StringIO(text, newline=""):
            consumed += len(line)
            yield line

    records: list[_SampleRecord] = []
    terminators: Counter[str] = Counter()
    start = 0
    try:
        for fields in csv.reader(
            lines(), delimiter=delimiter, quotechar=quotechar, skipinitialspace=skip,
            escapechar=escape,
        ):  # fmt: skip
            stop = consumed
            if stop >= len(text) and not whole:
                break
            ending = _line_ending(text, stop)
            if (
                ending
                and stop == len(text)
                and fields
                != _one_record(text[start : stop - len(ending)], delimiter, quotechar, skip, escape)
            ):
                ending = ""  # inside a quoted field left open at the end
            if ending:
                terminators[ending] += 1
            if fields:
                records.append(_SampleRecord(start, stop - len(ending), fields))
                if len(records) >= _MAX_SNIFF_RECORDS:
                    break
            start = stop
    except csv.Error:
        pass  # a field beyond csv's size limit: judge on the records before it
    return records, terminators


def _is_plain(text: str, quotechar: str) -> bool:
    """Whether csv.reader reads `text` as lines (LF or CRLF) split at the delimiter."""
    return (
        quotechar not in text
        and "\x00" not in text
        and ("\r" not in text or text.count("\r") == text.count("\r\n"))
        and len(text) <= csv.field_size_limit()
    )


def _split_sample(
    text: str, delimiter: str, *, whole: bool
) -> tuple[list[_SampleRecord], Counter[str]]:
    """`_parse_sample` of a plain sample by str.split: the same result, far cheaper."""
    records: list[_SampleRecord] = []
    lines = text.split("\n", 4 * _MAX_SNIFF_RECORDS)
    if "\n" in lines[-1]:
        lines = text.split("\n")
    last = len(lines) - 1
    crlf = "\r" in text
    start = 0
    for index, line in enumerate(lines):
        if index == last:
            if whole and line:
                records.append(_SampleRecord(start, len(text), line.split(delimiter)))
            break
        stop = start + len(line) + 1
        if stop >= len(text) and not whole:
            break
        content = line[:-1] if crlf and line.endswith("\r") else line
        if content:
            records.append(_SampleRecord(start, start + len(content), content.split(delimiter)))
            if len(records) >= _MAX_SNIFF_RECORDS:
                start = stop
                break
        start = stop
    return records, _line_endings(text, start)


_LONE_LF_RE: Final = re.compile(r"(?<!\r)\n")


def _line_endings(text: str, stop: int) -> Counter[str]:
    """Lines before `stop` ending in CRLF and in LF, in csv.reader's order (ties)."""
    crlf = text.count("\r\n", 0, stop) if "\r" in text else 0
    lf = text.count("\n", 0, stop) - crlf
    if crlf and lf:
        lone_lf = _LONE_LF_RE.search(text, 0, stop)
        if lone_lf is not None and lone_lf.start() < text.find("\r\n", 0, stop):
            return Counter({"\n": lf, "\r\n": crlf})
        return Counter({"\r\n": crlf, "\n": lf})
    if crlf:
        return Counter({"\r\n": crlf})
    return Counter({"\n": lf}) if lf else Counter()


def _one_record(
    text: str, delimiter: str, quotechar: str, skip: bool = False, escape: str | None = None
) -> list[str]:
    reader = csv.reader(
        io.StringIO(text, newline=""),
        delimiter=delimiter,
        quotechar=quotechar,
        skipinitialspace=skip,
        escapechar=escape,
    )
    return next(reader, [])


def _only_between_digits(text: str, delimiter: str) -> bool:
    between = re.findall(rf"(?<=\d){re.escape(delimiter)}(?=\d)", text)
    return len(between) == text.count(delimiter)


def _others_present(text: str) -> bool:
    return ";" in text or "\t" in text or "|" in text


def _inside_values(text: str, delimiter: str) -> bool:
    """Whether a rarer delimiter reads as part of the values rather than between them."""
    count = text.count(delimiter)
    d = re.escape(delimiter)
    if _only_between_digits(text, delimiter) or 2 * text.count(delimiter + " ") > count:
        return True
    if delimiter != ":":
        return False
    # URLs (https://), drives (C:\ C:/), MAC and IPv6 addresses (00:1A:2B, 2001:db8::1)
    parts = len(re.findall(rf"{d}(?=//)|(?<![^\s,;|\t\"']\w){d}(?=[\\/])", text))
    parts += len(re.findall(rf"(?<=[0-9A-Fa-f]){d}(?=[0-9A-Fa-f:])|(?<=:){d}", text))
    return parts * 10 >= count * 9


def _fits_after_a_preamble(text: str, records: list[_SampleRecord]) -> bool:
    """Whether a main delimiter fits the table once a preamble is set aside."""
    first, _ = _table_start(text, records)
    if not first:
        return False
    table = Counter(len(record.fields) for record in records[first:])
    count, width = max((count, width) for width, count in table.items())
    return width >= 2 and count >= _FITS * (len(records) - first)


def _delimiter_score(records: list[_SampleRecord], comments: bool) -> tuple[float, int]:
    """(share of records with the modal width, that width), comments not counted; ties go
    to the wider: a preamble as long as the table is not the table."""
    counted = records
    if comments:
        counted = [record for record in records if not record.fields[0].startswith(_COMMENT)]
        counted = counted or records
    widths = Counter([len(record.fields) for record in counted])
    if not widths:
        return 0.0, 0
    count, width = max((count, width) for width, count in widths.items())
    if width < 2:
        width = _tail_width(counted, widths)
        if not width:
            return 0.0, 0
        count = widths[width]
    return count / len(counted), width


def _tail_width(records: list[_SampleRecord], widths: Counter[int]) -> int:
    """The width two records or more share from the first of them to the end (a title
    block longer than its table), or 0."""
    wider = [(count, width) for width, count in widths.items() if width >= 2 and count >= 2]
    if not wider:
        return 0
    width = max(wider)[1]
    at = next(i for i, record in enumerate(records) if len(record.fields) == width)
    return width if all(len(record.fields) == width for record in records[at:]) else 0


def _spaced(records: list[_SampleRecord]) -> bool:
    """Whether fields after a delimiter start with a space: nearly all that are not empty,
    in at least two records (``1, "Smith, J"``)."""
    spaced = plain = lines = checked = 0
    for record in records:
        if len(record.fields) < 2:
            continue
        if checked == 3 and not lines:
            return False
        checked += 1
        after = [field[:1] for field in record.fields[1:] if field]
        count = after.count(" ")
        spaced += count
        plain += len(after) - count
        lines += count > 0
    return lines >= 2 and spaced >= 9 * plain


_Candidate = tuple[tuple[float, int, int], str, list[_SampleRecord], Counter[str], bool, str | None]


def _candidate(
    text: str, delimiter: str, quotechar: str, preference: int, *, whole: bool
) -> _Candidate:
    records, terminators = _parse_sample(text, delimiter, quotechar, whole=whole)
    skip = _spaced(records)
    if skip:
        records, terminators = _parse_sample(text, delimiter, quotechar, whole=whole, skip=True)
    score = _delimiter_score(records, _COMMENT in text)
    escape = None
    if quotechar == '"' and '\\"' in text and _ESCAPED_QUOTE_RE.search(text):
        # \" in fields (MySQL, pandas): kept if the table reads as well, no records merged.
        escaped = _parse_sample(text, delimiter, quotechar, whole=whole, skip=skip, escape="\\")
        tried = _delimiter_score(escaped[0], _COMMENT in text)
        if tried >= score and len(escaped[0]) >= len(records):
            (records, terminators), score, escape = escaped, tried, "\\"
    return (*score, -preference), delimiter, records, terminators, skip, escape


_ESCAPED_QUOTE_RE: Final = re.compile(r'\\"[^"\r\n,;\t|]')


def _sniff(text: str, *, whole: bool, last_chance: bool) -> _Sniffed | None:
    """Dialect of the sample; None when it needs more data and more may come."""
    quotechar = _choose_quotechar(text)
    # Excel's "sep=;" first line names the delimiter; it is not part of the table.
    named = _SEP_LINE_RE.match(text)
    best: _Candidate | None = None
    if named is not None:
        best = _candidate(text, named.group(1), quotechar, 0, whole=whole)
    for preference, delimiter in enumerate(_DELIMITERS):
        if named is not None:
            break
        if delimiter not in text and best is not None:
            continue
        if delimiter == "," and _others_present(text) and _only_between_digits(text, ","):
            preference = len(_DELIMITERS)  # decimal commas (1,87;2,37): a tie goes elsewhere
        candidate = _candidate(text, delimiter, quotechar, preference, whole=whole)
        if best is None or candidate[0] > best[0]:
            best = candidate
    assert best is not None
    if best[0][0] < _FITS and named is None and not _fits_after_a_preamble(text, best[2]):
        # The rarer delimiters only now (each costs a parse), and only when one fits and
        # does not read as part of the values (docs/profile.md).
        for preference, delimiter in enumerate(_EXTRA_DELIMITERS, start=len(_DELIMITERS)):
            if delimiter in text and not _inside_values(text, delimiter):
                candidate = _candidate(text, delimiter, quotechar, preference, whole=whole)
                if candidate[0] > best[0] and candidate[0][0] >= _FITS:
                    best = candidate
    (consistency, _, _), delimiter, records, terminators, skip, escape = best
    if consistency == 0.0 and named is None:
        delimiter, skip, escape = ",", False, None
        records, terminators = _parse_sample(text, delimiter, quotechar, whole=whole)
    complete = whole or bool(records)
    first, comment_char = _table_start(text, records)
    if not first and (
        (named is not None and len(records) > 1) or (not skip and _title_with_commas(records))
    ):
        first = 1
    table = records[first:]
    if comment_char is not None:
        table = [record for record in table if not text.startswith(comment_char, record.start)]
    if len(table) < _MIN_SNIFF_RECORDS and not whole:
        if not last_chance:
            return None
        if not table:
            # Not one whole record: the width is found while streaming.
            return _sniff_partial(text, quotechar)
    terminator = terminators.most_common(1)[0][0] if terminators else _DEFAULT_TERMINATOR
    start = records[first].start if first else 0
    return _Sniffed(
        delimiter, quotechar, terminator, table, complete,
        table_start=start, preamble_lines=_line_count(text, start), skip_space=skip,
        comment_char=comment_char, escape_char=escape,
    )  # fmt: skip


_SEP_LINE_RE: Final = re.compile(r"sep=([^\r\n\"])(?:\r\n|\r|\n)")


def _line_count(text: str, stop: int) -> int:
    crlf = text.count("\r\n", 0, stop)
    return text.count("\n", 0, stop) + text.count("\r", 0, stop) - crlf


def _table_start(text: str, records: list[_SampleRecord]) -> tuple[int, str | None]:
    """(index of the table's first record, comment character or None); the rules are in
    docs/design/profiler.md (preamble)."""
    if _COMMENT in text:
        widths = Counter(len(r.fields) for r in records if not text.startswith(_COMMENT, r.start))
    else:
        widths = Counter([len(record.fields) for record in records])
    if not widths:
        return 0, None
    width = max((count, width) for width, count in widths.items())[1]
    if width == 1:
        width = _tail_width(records, widths) or width
    first = 0
    limit = min(len(records) - 1, _MAX_PREAMBLE)
    while first < limit:
        record = records[first]
        size = len(record.fields)
        if text.startswith(_COMMENT, record.start):
            if size == width and width > 1:
                break  # a header like "#,name": part of the table
        elif size >= width and not (width >= 3 and size <= width and _padded(record.fields)):
            break
        first += 1
    if first and sum(len(record.fields) == width for record in records[first:]) < first:
        # Fewer rows than preamble lines: kept for one-cell titles over a confirmed header.
        titles = all(
            text.startswith(_COMMENT, record.start) or sum(map(bool, record.fields)) <= 1
            for record in records[:first]
        )
        rows = [record.fields for record in records[first + 1 : first + 21]]
        if not (
            titles
            and width >= 2
            and len(records[first].fields) == width
            and len(rows) >= 2
            and _plain_names(records[first].fields)
            and _looks_like_header(records[first].fields, rows)
        ):
            first = 0
    if first and len(records[first].fields) != width:
        first = 0
    if first and not all(
        text.startswith(_COMMENT, record.start) or sum(map(bool, record.fields)) <= 1
        for record in records[:first]
    ):
        # Maybe a short header over rows with trailing empty cells ("a,b" over "1,2,,").
        rows = [record.fields for record in records[first + 1 : first + 21]]
        if not _looks_like_header(records[first].fields, rows):
            first = 0
    if _COMMENT not in text:
        return first, None
    commented = [record for record in records[first:] if text.startswith(_COMMENT, record.start)]
    lead = any(text.startswith(_COMMENT, record.start) for record in records[:first])
    header = records[first] if first < len(records) else None
    if header and text.startswith(_COMMENT, header.start) and len(header.fields) == width:
        return first, None  # the header itself ("#,name", "#id;name"): part of the table
    # One commented-out row of the table's width among many comment lines is still a comment
    # (a "# 20;7" in a file of "#" notes); more than one in ten, and "#" starts data.
    as_wide = sum(len(record.fields) == width for record in commented)
    comment = (lead or bool(commented)) and as_wide * 10 <= len(commented)
    return first, _COMMENT if comment else None


def _padded(fields: list[str]) -> bool:
    """A title or a ``Label:;value`` line padded to the table's width (``Zeitraum:;Jan;;;``)."""
    filled = sum(map(bool, fields))
    return filled <= 1 or (filled == 2 and fields[0].rstrip().endswith(":") and bool(fields[1]))


def _title_with_commas(records: list[_SampleRecord]) -> bool:
    """A title whose delimiters are its words' ("Sales, by region") over a header as wide:
    each of its cells after the first starts with a space, none of the header's does."""
    if len(records) < 4 or not 2 <= len(records[0].fields) == len(records[1].fields):
        return False
    title, header = records[0].fields, records[1].fields
    if not all(cell[:1] == " " and cell.strip() for cell in title[1:]):
        return False
    rows = [record.fields for record in records[2:22]]
    # A typed column: text over text ("Country, Capital" over "France,Paris") proves nothing.
    typed = any(
        _column_kinds([row[at] for row in rows if len(row) > at]) <= {"number", "date", "bool"}
        for at in range(len(header))
    )
    return (
        typed
        and not any(cell[:1] == " " for cell in header)
        and _plain_names(header)
        and _looks_like_header(header, rows)
    )


def _sniff_partial(text: str, quotechar: str) -> _Sniffed:
    records = {d: _parse_sample(text, d, quotechar, whole=True) for d in _DELIMITERS}
    delimiter = max(
        _DELIMITERS, key=lambda d: max((len(r.fields) for r in records[d][0]), default=0)
    )
    terminators = records[delimiter][1]
    terminator = terminators.most_common(1)[0][0] if terminators else _DEFAULT_TERMINATOR
    return _Sniffed(delimiter, quotechar, terminator, [], False)
