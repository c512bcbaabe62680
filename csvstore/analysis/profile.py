"""Single-pass CSV profiling of an upload while it streams to disk, and paged read-back.

`CsvProfiler` is fed the stored bytes chunk by chunk (any chunk size, down to one byte) and
reports the dialect, the header, the number of data rows, the rows whose width differs from
the header's, and checkpoints (data-row index -> byte offset) that let `iter_rows_from` seek
close to any row of a large file instead of parsing it from the top.

How it stays fast and flat
--------------------------
Only the first `sample_size` bytes (more if the first records are longer) are buffered and
parsed with the `csv` module to sniff the dialect and the header. Everything after that is
counted by the C extension `csvstore._scan` when it was built (one pass, without the GIL;
see csvstore/_scan.c), or else by `_RecordScanner` below, which reads the bytes the same way
with C-level bytes operations, never one byte at a time in Python:

* ``bytes.translate`` deletes every byte but the delimiter, CR, LF and the quote character.
  That reduced string is a few bytes per row, and for a file whose rows all have the
  expected width it must equal ``(delimiter * (columns - 1) + terminator) * rows``, which one
  comparison verifies. Ragged rows are then counted by splitting the reduced string (still
  C-level); only blank lines or mixed terminators make rows be counted one by one. For CRLF
  files one regex search for a CR not followed by LF guards against a lone CR and a lone LF
  that look like one CRLF once the bytes between them are deleted.
* Quoted fields matter only when they contain a delimiter or a line break. In the reduced
  string such a field opens with an odd run of quote characters, and fields without one
  reduce to an even run: when every run up to the last line break is even, the quotes are
  ignored wholesale. Otherwise the chunk is split on the quote character, alternate pieces
  being inside quotes, and the delimiters and line breaks of those are masked (one
  ``translate`` over the joined inside pieces). That is csv.reader's reading unless a quote
  follows an ordinary byte where it would open a field (csv.reader takes such a quote as a
  plain character): that is checked in bulk too, and only then are quotes walked one by
  one with ``bytes.find``.
* Checkpoint offsets are found from the average row length, corrected by ``bytes.count``
  from the nearest known row start and a few ``find`` calls.
* Chunks are counted in blocks of at most 256 KiB, which bounds the transient memory of
  splitting on quotes; nothing else is kept but a few counters and the checkpoint list.

Decisions
---------
* Records follow `csv.reader` over ``open(..., newline="")`` exactly: CR, LF and CRLF all end
  a record outside quotes, a quote opens a quoted field only at the start of a field, ``""``
  inside a quoted field is one quote, an unterminated quoted field at the end of the file
  makes one last record.
* Blank lines (a record with no bytes at all, which `csv.reader` yields as ``[]``) are not rows,
  like pandas' default ``skip_blank_lines=True``: they are not counted, not ragged, and
  `iter_rows_from` skips them too. A line holding only spaces or ``""`` is a row.
* The header is the first non-blank record, when the heuristics in `_looks_like_header`
  say so. Without a header, `columns` is empty and `column_count` is the most common width
  among the sampled records.
* `line_terminator` is the most frequent record terminator in the sample (ties: the first
  seen); ``"\\n"`` when the sample has none (empty file, one line without a newline).
* Checkpoints are ``(i, offset)`` for every data row ``i`` that is a multiple of
  `checkpoint_every`, ``offset`` being where that row's first byte is in the stored file.

Encodings
---------
The caller names the encoding. ``utf-8``, ``utf-8-sig`` and ``cp1252`` are processed as raw
bytes: the delimiter, quote and line breaks are ASCII and never occur inside a multi-byte
UTF-8 sequence. A leading UTF-8 BOM is skipped for either UTF-8 name. ``utf-16`` starts with a
BOM giving the byte order (little-endian is assumed without one); each 2-byte code unit is
projected onto one byte that is ASCII only when the code unit is, so surrogate pairs count as
the two code units they are and offsets stay exact: ``BOM length + 2 * code units``.
"""

from __future__ import annotations

import bisect
import codecs
import csv
import dataclasses
import functools
import io
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO, Final, NamedTuple, Protocol

if TYPE_CHECKING:
    from csvstore.analysis._scan import Scanner

__all__ = [
    "SUPPORTED_ENCODINGS",
    "CsvProfile",
    "CsvProfiler",
    "RowSource",
    "RowsPage",
    "iter_rows_from",
    "profilable",
    "read_page",
]

SUPPORTED_ENCODINGS: Final = ("utf-8", "utf-8-sig", "cp1252", "utf-16")

_DELIMITERS: Final = (",", ";", "\t", "|")
# Tried only when none of _DELIMITERS splits the sample consistently (see _sniff).
_EXTRA_DELIMITERS: Final = (":", "~", "^", "!")
_FITS: Final = 0.9  # share of sampled records with the modal width that counts as a fit
_COMMENT: Final = "#"
_DEFAULT_TERMINATOR: Final = "\n"
_CR: Final = 0x0D
_LF: Final = 0x0A
_TERMINATOR_RE: Final = re.compile(rb"\r\n|\r|\n")
_LONE_CR_RE: Final = re.compile(rb"\r(?!\n)")
# The sample grows (doubling) until it holds _MIN_SNIFF_RECORDS records of the table, up to
# this many times `sample_size` (4 MiB by default); past that it makes do with what it has.
_MAX_SAMPLE_FACTOR: Final = 64
# The sample grows until it holds this many records of the table (a header and enough rows
# to vote on), whatever their width, within the bound above.
_MIN_SNIFF_RECORDS: Final = 8
# has_header and the delimiter score look at this many sampled records at most (preamble
# lines included).
_MAX_SNIFF_RECORDS: Final = 40
_MAX_HEADER_VOTE_ROWS: Final = 20
# Leading records that may be preamble (titles, comments, key: value lines).
_MAX_PREAMBLE: Final = 16
# The scanner takes chunks in blocks of at most this many bytes (see _RecordScanner.feed).
_BLOCK: Final = 256 * 1024


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
    # Dialect beyond csv's defaults (see _sniff and the README's "How a file is read").
    preamble_lines: int = 0  # lines before the table (titles, comments, blank lines)
    table_offset: int = 0  # stored-file offset of the table's first line (the header)
    skip_initial_space: bool = False
    comment_char: str | None = None
    duplicate_columns: list[str] = dataclasses.field(default_factory=list)


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


# --------------------------------------------------------------------------------------------
# Byte-level helpers
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)  # a handful of dialects; built once, not per upload
def _deletion_table(keep: bytes) -> bytes:
    """The `delete` argument of bytes.translate that keeps only the bytes in `keep`."""
    return bytes(b for b in range(256) if b not in keep)


def _index_after_nth(data: bytes, needle: bytes, n: int, lo: int, hi: int) -> int:
    """Index just past the n-th (n >= 1) occurrence of the one-byte `needle` in data[lo:hi].

    Bisecting with bytes.count keeps the work at C speed: each step halves the window, so about
    (hi - lo) bytes are scanned in total, where a find() per occurrence would cost one Python
    iteration per row skipped.
    """
    while n > 8:
        mid = (lo + hi) // 2
        found = data.count(needle, lo, mid)
        if found >= n:
            hi = mid
        else:
            n -= found
            lo = mid
    for _ in range(n):
        lo = data.index(needle, lo, hi) + 1
    return lo


def _row_start(
    data: bytes,
    needle: bytes,
    first: int,
    stop: int,
    rows: int,
    ordinal: int,
    cursor: int,
    passed: int,
) -> int:
    """Where row `ordinal` starts, data[first:stop] holding `rows` rows each ending in `needle`.

    Row `passed` (< ordinal) starts at `cursor`. The guess from the average row length is
    corrected by counting from the nearer known row start, then a few finds; a checkpoint
    then costs a count over a fraction of the chunk, not a Python step per row.
    """
    guess = min(max(first + (stop - first) * ordinal // rows, cursor), stop)
    if guess - cursor <= stop - guess:
        seen = passed + data.count(needle, cursor, guess)  # row ends before `guess`
    else:
        seen = rows - data.count(needle, guess, stop)
    if seen >= ordinal:  # the row starts before the guess: step back
        back = seen - ordinal + 1
        if back > 32:
            return _index_after_nth(data, needle, ordinal - passed, cursor, guess)
        position = guess
        for _ in range(back):
            position = data.rindex(needle, cursor, position)
        return position + 1
    ahead = ordinal - seen
    if ahead > 32:
        return _index_after_nth(data, needle, ahead, guess, stop)
    position = guess
    for _ in range(ahead):
        position = data.index(needle, position, stop) + 1
    return position


class _Projector:
    """Turns stored bytes into one byte per code unit, with the CSV specials where they were.

    For ASCII-compatible encodings that is the identity. For UTF-16 a code unit maps to its
    low byte when it is ASCII (high byte zero) and to a byte >= 0x80 otherwise, so a code unit
    like U+012C (low byte 0x2C, a comma) cannot pass for a delimiter.
    """

    __slots__ = ("_carry", "_little", "_pairs", "_wide")

    def __init__(self, *, wide: bool, little: bool, encoding: str = "") -> None:
        self._wide = wide
        self._little = little
        self._carry = b""  # an odd trailing byte of UTF-16, completed by the next chunk
        self._pairs = _DOUBLE_BYTE.get(encoding)

    def project(self, data: bytes) -> bytes:
        if self._pairs is not None:
            return self._mask_pairs(self._pairs, data)
        if not self._wide:
            return data
        if self._carry:
            data = self._carry + data
        if len(data) % 2:
            self._carry = data[-1:]
            data = data[:-1]
        else:
            self._carry = b""
        low, high = (data[0::2], data[1::2]) if self._little else (data[1::2], data[0::2])
        if high.count(0) == len(high):
            return low  # all code units below U+0100: the low bytes are the projection
        flags = high.translate(_NONZERO_TO_HIGH_BIT)
        # One big-int OR sets the high bit of every non-ASCII unit at C speed; a Python loop
        # over the units would be two orders of magnitude slower.
        merged = int.from_bytes(low, "big") | int.from_bytes(flags, "big")
        return merged.to_bytes(len(low), "big")

    def _mask_pairs(self, pairs: tuple[re.Pattern[bytes], bytes], data: bytes) -> bytes:
        # Double-byte codecs such as Shift-JIS have trail bytes in the ASCII range ("|" is
        # one): each lead+trail pair becomes two non-ASCII bytes, offsets unchanged.
        pattern, leads = pairs
        carry, self._carry = self._carry, b""
        if carry:
            data = carry + data
        masked = pattern.sub(b"\x80\x80", data)
        if data and masked[-1] == data[-1] and data[-1] in leads:
            self._carry = data[-1:]  # a lead byte whose trail is the next chunk's first byte
        return masked[len(carry) :]


_NONZERO_TO_HIGH_BIT: Final = bytes([0] + [0x80] * 255)
_SJIS_LEADS: Final = bytes([*range(0x81, 0xA0), *range(0xE0, 0xFD)])
_DBCS_LEADS: Final = bytes(range(0x81, 0xFF))
_SJIS_PAIR: Final = (re.compile(rb"[\x81-\x9f\xe0-\xfc][\x40-\x7e\x80-\xfc]"), _SJIS_LEADS)
# GB18030's four-byte sequences are two such pairs (the second byte of each is a digit).
_DBCS_PAIR: Final = (re.compile(rb"[\x81-\xfe][\x30-\x39\x40-\x7e\x80-\xfe]"), _DBCS_LEADS)
# Python's names (codecs.lookup(...).name) of the codecs whose trail bytes can be ASCII.
_DOUBLE_BYTE: Final = {
    **dict.fromkeys(("shift_jis", "cp932", "shift_jis_2004", "shift_jisx0213"), _SJIS_PAIR),
    **dict.fromkeys(("gbk", "gb18030", "big5", "big5hkscs", "cp950", "cp949", "johab"), _DBCS_PAIR),
}


def profilable(encoding: str) -> bool:
    """True if the profiler can count records of a file in this codec (Python's name)."""
    if encoding in SUPPORTED_ENCODINGS or encoding in _DOUBLE_BYTE:
        return True
    try:
        return bytes(range(128)).decode(encoding) == bytes(range(128)).decode("ascii")
    except (UnicodeDecodeError, LookupError):
        return False


# --------------------------------------------------------------------------------------------
# The streaming counter
# --------------------------------------------------------------------------------------------


class _RecordScanner:
    """Counts the records and fields of projected bytes whose dialect is already known.

    Offsets here are projected offsets (code units after any BOM); the profiler converts them
    to stored-file bytes.
    """

    __slots__ = (
        "_checkpoint_every",
        "_checkpoints",
        "_classes",
        "_cr_pending",
        "_delim",
        "_delim_bytes",
        "_expected",
        "_field_start",
        "_header_records",
        "_in_quote",
        "_keep_specials",
        "_keep_specials_quote",
        "_mask",
        "_pos",
        "_quote",
        "_quote_bytes",
        "_quote_pair",
        "_quote_pending",
        "_ragged",
        "_rec_delims",
        "_rec_nonempty",
        "_rec_start",
        "_records",
        "_row_pattern",
        "_specials",
        "_term",
        "_term_last",
    )

    def __init__(
        self,
        *,
        delimiter: int,
        quotechar: int,
        terminator: bytes,
        expected_fields: int | None,
        header_records: int,
        checkpoint_every: int,
    ) -> None:
        self._delim = delimiter
        self._delim_bytes = bytes([delimiter])
        self._quote = quotechar
        self._quote_bytes = bytes([quotechar])
        self._quote_pair = self._quote_bytes * 2
        self._specials = bytes([delimiter, _CR, _LF])
        self._term = terminator
        self._term_last = terminator[-1:]
        self._keep_specials = _deletion_table(self._specials)
        self._keep_specials_quote = _deletion_table(self._specials + self._quote_bytes)
        # Masking turns the specials inside a quoted field into a byte that means nothing.
        self._mask = bytes.maketrans(self._specials, b"   ")
        classes = bytearray(b"c" * 256)  # c: ordinary byte, s: special, q: quote
        for special in self._specials:
            classes[special] = ord("s")
        classes[quotechar] = ord("q")
        self._classes = bytes(classes)
        self._expected: int | None = None
        self._row_pattern = b""
        if expected_fields is not None:
            self._set_expected(expected_fields - 1)
        self._header_records = header_records
        self._checkpoint_every = checkpoint_every
        self._checkpoints: list[tuple[int, int]] = []
        self._pos = 0  # projected offset of the next chunk's first byte
        # Quote state, carried across chunks.
        self._in_quote = False
        self._quote_pending = False  # in a quoted field and the last byte was a quote
        self._cr_pending = False  # last byte was a CR ending a record; an LF next belongs to it
        self._field_start = True  # the next byte starts a field (a quote there opens one)
        # The record being read.
        self._rec_delims = 0
        self._rec_nonempty = False
        self._rec_start = 0
        # Totals.
        self._records = 0  # non-blank records completed, header included
        self._ragged = 0

    # -- results -------------------------------------------------------------------------

    @property
    def data_rows(self) -> int:
        return max(0, self._records - self._header_records)

    @property
    def ragged(self) -> int:
        return self._ragged

    @property
    def checkpoints(self) -> list[tuple[int, int]]:
        return self._checkpoints

    @property
    def expected_fields(self) -> int | None:
        return None if self._expected is None else self._expected + 1

    # -- feeding -------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        # Big chunks go in blocks: splitting a block on quotes makes an object per quote,
        # and this bounds that (a 1 MiB chunk of quoted fields would make ~300k at once).
        for first in range(0, len(data), _BLOCK):
            self._feed_block(data[first : first + _BLOCK] if len(data) > _BLOCK else data)

    def _feed_block(self, data: bytes) -> None:
        start = self._resume(data)
        if start < len(data):
            self._scan_outside(data, start)
        self._pos += len(data)

    def finish(self) -> None:
        # A quote as the very last byte closes its field; an unterminated quoted field at the
        # end still makes a record, as csv.reader does.
        self._quote_pending = False
        if self._rec_nonempty or self._in_quote:
            self._end_record(True, self._pos)
        self._in_quote = False

    # -- state carried over a chunk boundary ---------------------------------------------

    def _resume(self, data: bytes) -> int:
        """Settle the state carried from the previous chunk; return where to go on from."""
        start = 0
        if self._quote_pending:
            self._quote_pending = False
            if data[0] == self._quote:
                start = 1  # the two quotes were an escaped quote: still inside the field
            else:
                self._in_quote = False
                self._field_start = False
        if self._in_quote:
            start = self._skip_quoted(data, start)
            if self._in_quote:
                return len(data)
        if self._cr_pending and start < len(data):
            self._cr_pending = False
            if data[start] == _LF:
                start += 1  # second half of a CRLF split over the boundary
                self._rec_start = self._pos + start
        return start

    def _skip_quoted(self, data: bytes, start: int) -> int:
        """Inside a quoted field from `start`: return the index after its closing quote.

        Returns len(data) when the field goes on into the next chunk.
        """
        quote = self._quote_bytes
        end = len(data)
        while True:
            found = data.find(quote, start)
            if found < 0:
                return end
            if found + 1 == end:
                self._quote_pending = True  # closing quote or half of "", the next byte tells
                return end
            if data[found + 1] == self._quote:
                start = found + 2
                continue
            self._in_quote = False
            self._field_start = False
            return found + 1

    # -- outside quotes ------------------------------------------------------------------

    def _scan_outside(self, data: bytes, start: int) -> None:
        """Count data[start:], which begins outside any quoted field."""
        reduced = (data[start:] if start else data).translate(None, self._keep_specials_quote)
        quote = self._quote_bytes
        if quote not in reduced:
            self._count_unquoted(data, start, len(data), reduced)
            self._field_start = data[-1] in self._specials
            return
        last = max(reduced.rfind(b"\n"), reduced.rfind(b"\r"))
        if last >= 0 and reduced.count(quote, 0, last + 1) == 2 * reduced.count(
            self._quote_pair, 0, last + 1
        ):
            # Up to the last line break every quote run is even, so no quoted field there
            # holds a delimiter or a line break (one that did would open with an odd run right
            # before it): the quotes can be ignored. What follows may be an open field.
            cut = max(data.rfind(b"\n", start), data.rfind(b"\r", start)) + 1
            self._count_unquoted(data, start, cut, reduced[: last + 1].translate(None, quote))
            self._field_start = True
            if cut < len(data):
                self._scan_quoted(data, cut)  # less than a line: walk its quotes
            return
        if not self._scan_by_parity(data, start, reduced):
            self._scan_quoted(data, start)

    def _scan_by_parity(self, data: bytes, start: int, reduced: bytes) -> bool:
        """Count data[start:] taking every other quote as opening a field; False if unsound.

        Splitting on the quote character alternates outside and inside pieces (a "" escape
        is an empty outside piece), all at C speed. That is csv.reader's reading unless a
        quote opening a piece follows an ordinary byte (a quote inside an unquoted field is
        a plain character to csv.reader), which `_openers_at_field_start` rules out.
        """
        quote = self._quote_bytes
        pieces = (data[start:] if start else data).split(quote)
        outside = pieces[0::2]
        followed = outside if len(pieces) % 2 == 0 else outside[:-1]
        if not self._openers_at_field_start(followed):
            return False
        inside = quote.join(pieces[1::2])
        masked_inside = inside.translate(self._mask)
        masked = data
        if masked_inside != inside:
            pieces[1::2] = masked_inside.split(quote)
            masked = quote.join(pieces)
            if start:
                masked = data[:start] + masked
        outside_reduced: bytes | None = None
        if len(pieces) < len(reduced) // 16:
            # Few quotes: the specials outside them come cheaper from `reduced` (same quotes,
            # same alternation) than from translating the masked bytes again.
            outside_reduced = b"".join(reduced.split(quote)[0::2])
        self._count_unquoted(masked, start, len(data), outside_reduced)
        if len(pieces) % 2 == 0:
            self._in_quote = True  # the last quote opened a field that goes on
        elif data[-1] == self._quote:
            self._in_quote = self._quote_pending = True  # closing, or half of a ""
        else:
            self._field_start = data[-1] in self._specials
        return True

    def _openers_at_field_start(self, followed: list[bytes]) -> bool:
        """Whether each piece before an opening quote ends where a field starts."""
        if followed and not followed[0] and not self._field_start:
            return False  # a quote at the chunk start, in the middle of a field
        if len(followed) <= 4096:
            last_bytes = b"".join([piece[-1:] for piece in followed])
            return not last_bytes.translate(None, self._specials)
        # Many short pieces (every field quoted): classify the joined pieces instead, so the
        # cost follows their total length rather than their number.
        classes = (self._quote_bytes.join(followed) + self._quote_bytes).translate(self._classes)
        return b"cq" not in classes

    def _scan_quoted(self, data: bytes, start: int) -> None:
        """Locate the quoted fields of data[start:], mask their specials, count the rest."""
        quote = self._quote_bytes
        end = len(data)
        spans: list[tuple[int, int]] = []
        position = start
        while True:
            found = data.find(quote, position)
            if found < 0:
                break
            opens = data[found - 1] in self._specials if found else self._field_start
            if not opens:
                position = found + 1  # a quote inside an unquoted field is just a character
                continue
            self._in_quote = True
            after = self._skip_quoted(data, found + 1)
            spans.append((found + 1, after - 1 if not self._in_quote else end))
            if self._in_quote:
                break
            position = after
        masked = self._masked(data, spans) if spans else data
        self._count_unquoted(masked, start, end, None)
        if not self._in_quote:
            self._field_start = data[-1] in self._specials

    def _masked(self, data: bytes, spans: list[tuple[int, int]]) -> bytes:
        parts: list[bytes] = []
        previous = 0
        for first, stop in spans:
            parts.append(data[previous:first])
            parts.append(data[first:stop].translate(self._mask))
            previous = stop
        parts.append(data[previous:])
        return b"".join(parts)

    # -- counting records in bytes with no live quotes ----------------------------------

    def _count_unquoted(self, data: bytes, start: int, end: int, reduced: bytes | None) -> None:
        """Count data[start:end], in which quotes no longer matter.

        `reduced` is data[start:end] with all but the delimiter, CR and LF deleted, if known.
        """
        if start >= end:
            return
        if reduced is None:
            piece = data[start:end] if start or end != len(data) else data
            reduced = piece.translate(None, self._keep_specials)
        if self._term == b"\r\n" and data[end - 1] == _CR and end == len(data):
            # A CR at the end of the chunk: peel it off so the rest keeps the CRLF pattern.
            self._count_unquoted(data, start, end - 1, reduced[:-1])
            self._end_record(self._rec_nonempty, self._pos + end)
            self._cr_pending = True
            return
        first = reduced.find(b"\n")
        first_cr = reduced.find(b"\r")
        if first < 0 or 0 <= first_cr < first:
            first = first_cr
        if first < 0:  # no line break: the current record just grows
            self._rec_delims += len(reduced)
            self._rec_nonempty = True
            return
        bulk = self._expected is not None and self._count_lines_in_bulk(
            data, start, end, reduced, first
        )
        if not bulk:
            self._count_line_by_line(data, start, end)
        if data[end - 1] == _CR and end == len(data):
            self._cr_pending = True

    def _count_lines_in_bulk(
        self, data: bytes, start: int, end: int, reduced: bytes, first: int
    ) -> bool:
        """Count whole lines at once when the terminators are uniform; False if they are not.

        `first` is the index in `reduced` of its first CR or LF.
        """
        assert self._expected is not None
        term, width = self._term, self._expected
        last = max(reduced.rfind(b"\n"), reduced.rfind(b"\r"))
        body_len = last + 1 - first  # from the first line break through the last one
        rows, rest = divmod(body_len - len(term), len(self._row_pattern))
        expected_body = term + self._row_pattern * rows if rows >= 0 and not rest else b""
        if len(expected_body) == body_len and reduced.startswith(expected_body, first):
            # Every line has the expected width and terminator: the common case, one compare.
            widths: list[bytes] | None = None  # none ragged
            blank_possible = width == 0
        elif self._uniform_terminators(reduced):
            widths = reduced[first + len(term) : last + 1].split(term)
            widths.pop()  # the empty piece after the last terminator
            rows = len(widths)
            blank_possible = True
        else:
            return False
        if term == b"\r\n" and _LONE_CR_RE.search(data, start, end):
            # Deleting the bytes between a lone CR and a later lone LF makes them look like
            # one CRLF in `reduced`: only the stored bytes can tell.
            return False
        head_end = data.find(term, start, end)
        tail_start = data.rfind(term, start, end) + len(term)
        # A blank line shows as two terminators in a row in `reduced` too (which is much
        # shorter); only then are the stored bytes searched, as a line with one field but no
        # delimiter looks the same there.
        double = term + term
        if (
            blank_possible
            and reduced.find(double, first, last + 1) >= 0
            and data.find(double, head_end, tail_start) >= 0
        ):
            return False  # blank lines in between are not rows: go line by line
        self._rec_delims += first
        self._end_record(self._rec_nonempty or head_end > start, self._pos + head_end + len(term))
        self._add_rows(data, head_end + len(term), tail_start, rows, widths)
        self._rec_start = self._pos + tail_start
        self._rec_delims = len(reduced) - last - 1
        self._rec_nonempty = tail_start < end
        return True

    def _uniform_terminators(self, reduced: bytes) -> bool:
        term = self._term
        if term == b"\n":
            return b"\r" not in reduced
        if term == b"\r":
            return b"\n" not in reduced
        pairs = reduced.count(b"\r\n")
        return pairs == reduced.count(b"\r") == reduced.count(b"\n")

    def _add_rows(
        self, data: bytes, first: int, stop: int, rows: int, widths: list[bytes] | None
    ) -> None:
        """Record `rows` complete, non-blank records filling data[first:stop].

        `widths` holds each record's delimiters (None: all have the expected number).
        """
        index = self._records - self._header_records  # data index of the first of them
        if widths is not None:
            # The header is not a data row, ragged or not (it is among these rows when blank
            # lines come before it).
            headers = min(max(-index, 0), rows)
            data_widths = widths[headers:] if headers else widths
            self._ragged += len(data_widths) - data_widths.count(
                self._row_pattern[: -len(self._term)]
            )
        self._records += rows
        every = self._checkpoint_every
        wanted = max(index, 0)
        wanted += -wanted % every  # the first multiple of `every` at or after it
        cursor, passed = first, 0  # row `passed` of these starts at data[cursor]
        while wanted < index + rows:
            ordinal = wanted - index
            if ordinal > passed:
                cursor = _row_start(
                    data, self._term_last, first, stop, rows, ordinal, cursor, passed
                )
                passed = ordinal
            self._checkpoints.append((wanted, self._pos + cursor))
            wanted += every

    def _count_line_by_line(self, data: bytes, start: int, end: int) -> None:
        """The general case: any mix of terminators, blank lines, ragged rows."""
        delim = self._delim_bytes
        previous = start
        for match in _TERMINATOR_RE.finditer(data, start, end):
            line_end = match.start()
            self._rec_delims += data.count(delim, previous, line_end)
            self._end_record(self._rec_nonempty or line_end > previous, self._pos + match.end())
            previous = match.end()
        if previous < end:
            self._rec_delims += data.count(delim, previous, end)
            self._rec_nonempty = True

    def _end_record(self, nonempty: bool, next_start: int) -> None:
        """Close the current record; the next one starts at projected offset `next_start`."""
        if nonempty:
            index = self._records - self._header_records
            if index >= 0:
                if self._expected is None:
                    self._set_expected(self._rec_delims)
                elif self._rec_delims != self._expected:
                    self._ragged += 1
                if index % self._checkpoint_every == 0:
                    self._checkpoints.append((index, self._rec_start))
            self._records += 1
        self._rec_delims = 0
        self._rec_nonempty = False
        self._rec_start = next_start

    def _set_expected(self, delims: int) -> None:
        self._expected = delims
        self._row_pattern = self._delim_bytes * delims + self._term


class _Counter(Protocol):
    """What the profiler needs of a record counter: `_RecordScanner` or the C `Scanner`."""

    def feed(self, data: bytes, /) -> None: ...

    def finish(self) -> None: ...

    @property
    def data_rows(self) -> int: ...

    @property
    def ragged(self) -> int: ...

    @property
    def expected_fields(self) -> int | None: ...

    @property
    def checkpoints(self) -> list[tuple[int, int]]: ...


# The same counter in C (csvstore/_scan.c), built at install when a C compiler is there: it
# costs about a quarter of `_RecordScanner`'s time per byte and lets go of the GIL, so a large
# upload's profile no longer holds up the event loop. `_RecordScanner` stays the reference
# (the tests run both against csv.reader) and the fallback.
def _native_scanner() -> type[Scanner] | None:
    try:
        from csvstore.analysis._scan import Scanner
    except ImportError:  # not built: there was no C compiler at install time
        return None
    return Scanner


_NativeScanner = _native_scanner()
_use_native = True  # the tests switch it off to run the Python counter


def native_counter() -> bool:
    """Whether profiles are counted by the C counter (else by the pure-Python one)."""
    return _NativeScanner is not None and _use_native


class _DialectFilter:
    """Feeds a counter bytes rewritten, length for length, so that its plain reading of
    records (csv.reader's defaults) gives the counts of a file with comment lines or a space
    after the delimiter; offsets are unchanged.

    * A line starting with the comment character becomes line breaks only: blank lines,
      which are not rows. `read_page` blanks the same physical lines before csv.reader.
    * With skip_initial_space, ``delimiter + spaces + quote`` becomes ``spaces + delimiter +
      quote``: the quote then opens a field where csv.reader(skipinitialspace=True) opens
      one, with the same fields and records.

    Files with neither (nearly all) do not go through it.
    """

    __slots__ = ("_at_line_start", "_carry", "_comment", "_counter", "_in_comment", "_space_re",
                 "_tail_re")  # fmt: skip

    def __init__(
        self, counter: _Counter, *, delimiter: str, quotechar: str, skip_space: bool,
        comment_char: str | None,
    ) -> None:  # fmt: skip
        self._counter = counter
        self._comment = comment_char.encode("latin-1") if comment_char else None
        delim = re.escape(delimiter.encode("latin-1"))
        quote = re.escape(quotechar.encode("latin-1"))
        self._space_re = re.compile(delim + rb"( +)(?=" + quote + rb")") if skip_space else None
        self._tail_re = re.compile(delim + rb" *\Z")
        self._at_line_start = True
        self._in_comment = False
        self._carry = b""

    @property
    def counter(self) -> _Counter:
        return self._counter

    def feed(self, data: bytes) -> None:
        if self._comment is not None and data:
            data = self._blank_comments(data)
        if self._space_re is not None:
            data = self._carry + data
            # A delimiter and spaces at the end wait for the next byte (a quote or not).
            tail = self._tail_re.search(data)
            cut = tail.start() if tail is not None else len(data)
            data, self._carry = data[:cut], data[cut:]
            data = self._space_re.sub(_move_spaces, data)
        if data:
            self._counter.feed(data)

    def finish(self) -> None:
        if self._carry:
            self._counter.feed(self._carry)
            self._carry = b""
        self._counter.finish()

    def _blank_comments(self, data: bytes) -> bytes:
        assert self._comment is not None
        mark = self._comment
        original = data
        line_start = self._at_line_start
        if self._in_comment:  # the rest of a comment line begun in the previous chunk
            stop = _first_break(data)
            data = b"\n" * stop + data[stop:]
            if stop == len(data):
                self._at_line_start = False
                return data
            self._in_comment = line_start = False
        if line_start and data.startswith(mark):
            stop = _first_break(data)
            data = b"\n" * stop + data[stop:]
        if b"\n" + mark in data or b"\r" + mark in data:
            pattern = _COMMENT_LINE_RE if mark == b"#" else _comment_line_re(mark)
            data = pattern.sub(_blank, data)
        last = max(original.rfind(b"\n"), original.rfind(b"\r"))
        start = last + 1 if last >= 0 else (0 if line_start else len(original))
        self._in_comment = original.startswith(mark, start)  # runs on into the next chunk
        self._at_line_start = original[-1] in (0x0A, 0x0D)
        return data


_COMMENT_LINE_RE: Final = re.compile(rb"(?<=[\r\n])#[^\r\n]*")


@functools.lru_cache(maxsize=8)
def _comment_line_re(mark: bytes) -> re.Pattern[bytes]:
    return re.compile(rb"(?<=[\r\n])" + re.escape(mark) + rb"[^\r\n]*")


def _blank(match: re.Match[bytes]) -> bytes:
    return b"\n" * (match.end() - match.start())


def _move_spaces(match: re.Match[bytes]) -> bytes:
    return match.group(1) + match.group(0)[:1]


def _first_break(data: bytes) -> int:
    found = [i for i in (data.find(b"\n"), data.find(b"\r")) if i >= 0]
    return min(found) if found else len(data)


# --------------------------------------------------------------------------------------------
# Sniffing the dialect and the header from the sample
# --------------------------------------------------------------------------------------------


class _SampleRecord(NamedTuple):  # not a frozen dataclass: twenty are made per upload
    start: int  # offset of the record in the sample
    end: int  # offset just past its last field (terminator excluded)
    fields: list[str]


@dataclass(frozen=True, slots=True)
class _Sniffed:
    delimiter: str
    quotechar: str
    terminator: str
    records: list[_SampleRecord]  # complete, non-blank records of the table in the sample
    complete: bool  # False: not one whole record in the largest sample, first one unknown
    table_start: int = 0  # offset in the sample of the table's first line (after a preamble)
    preamble_lines: int = 0
    skip_space: bool = False
    comment_char: str | None = None


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
    text: str, delimiter: str, quotechar: str, *, whole: bool, skip: bool = False
) -> tuple[list[_SampleRecord], Counter[str]]:
    """Non-blank records of `text` and the count of each record terminator.

    Unless `whole` (the sample is the entire file), the record running into the end of the
    sample is dropped: it may be cut short.
    """
    if not skip and _is_plain(text, quotechar):
        return _split_sample(text, delimiter, whole=whole)
    return _read_sample(text, delimiter, quotechar, whole=whole, skip=skip)


def _read_sample(
    text: str, delimiter: str, quotechar: str, *, whole: bool, skip: bool = False
) -> tuple[list[_SampleRecord], Counter[str]]:
    """`_parse_sample` with csv.reader: any sample."""
    consumed = 0

    def lines() -> Iterator[str]:
        # csv.reader pulls exactly the lines of one record before yielding it, so the length
        # consumed so far is where that record ends.
        nonlocal consumed
        for line in io.StringIO(text, newline=""):
            consumed += len(line)
            yield line

    records: list[_SampleRecord] = []
    terminators: Counter[str] = Counter()
    start = 0
    try:
        for fields in csv.reader(
            lines(), delimiter=delimiter, quotechar=quotechar, skipinitialspace=skip
        ):
            stop = consumed
            if stop >= len(text) and not whole:
                break
            ending = _line_ending(text, stop)
            if (
                ending
                and stop == len(text)
                and fields
                != _one_record(text[start : stop - len(ending)], delimiter, quotechar, skip)
            ):
                ending = ""  # a line break inside a quoted field left open at the end
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
    """Whether csv.reader reads `text` as lines split at the delimiter, each ended by LF or
    CRLF: no quote character, no CR but before an LF, no NUL, and no field that could pass
    csv's field size limit."""
    return (
        quotechar not in text
        and "\x00" not in text
        and ("\r" not in text or text.count("\r") == text.count("\r\n"))
        and len(text) <= csv.field_size_limit()
    )


def _split_sample(
    text: str, delimiter: str, *, whole: bool
) -> tuple[list[_SampleRecord], Counter[str]]:
    """`_parse_sample` of a plain sample (see `_is_plain`), the same result at a fraction of
    the cost: csv.reader, fed through a generator that tracks offsets, cost ~5 us a record,
    and every upload is sniffed. str.split, not StringIO, which copies the sample into a
    buffer of its own and makes each line from it."""
    records: list[_SampleRecord] = []
    # Enough lines for the records wanted and some blank ones; all of them if not enough.
    lines = text.split("\n", 4 * _MAX_SNIFF_RECORDS)
    if "\n" in lines[-1]:
        lines = text.split("\n")
    last = len(lines) - 1  # what follows the last LF
    crlf = "\r" in text  # (then every CR ends a line, before its LF: see _is_plain)
    start = 0
    for index, line in enumerate(lines):
        if index == last:
            if whole and line:  # a last line without a line break
                records.append(_SampleRecord(start, len(text), line.split(delimiter)))
            break
        stop = start + len(line) + 1
        if stop >= len(text) and not whole:
            break  # the last line may be cut short
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
    """How many lines before `stop` end in CRLF and in LF alone, counted in the order in
    which each first appears (csv.reader's order, which decides a tie)."""
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


def _one_record(text: str, delimiter: str, quotechar: str, skip: bool = False) -> list[str]:
    reader = csv.reader(
        io.StringIO(text, newline=""),
        delimiter=delimiter,
        quotechar=quotechar,
        skipinitialspace=skip,
    )
    return next(reader, [])


def _delimiter_score(records: list[_SampleRecord], comments: bool) -> tuple[float, int]:
    """(share of records with the most common width, that width); (0, 0) if it is 1.

    Records that start with ``#`` (comments, if any others are left) are not counted, and of
    two widths as common the wider wins: a preamble as long as the table is not the table.
    """
    counted = records
    if comments:  # (the sample holds a "#")
        counted = [record for record in records if not record.fields[0].startswith(_COMMENT)]
        counted = counted or records
    widths = Counter([len(record.fields) for record in counted])
    if not widths:
        return 0.0, 0
    count, width = max((count, width) for width, count in widths.items())
    if width < 2:
        return 0.0, 0
    return count / len(counted), width


def _spaced(records: list[_SampleRecord]) -> bool:
    """Whether fields after a delimiter start with a space: nearly all that are not empty,
    in at least two records (``1, "Smith, J"``)."""
    spaced = plain = lines = checked = 0
    for record in records:
        if len(record.fields) < 2:
            continue  # a title or a comment
        if checked == 3 and not lines:
            return False  # (cheaper than searching the sample for ", ")
        checked += 1
        after = [field[:1] for field in record.fields[1:] if field]
        count = after.count(" ")
        spaced += count
        plain += len(after) - count
        lines += count > 0
    return lines >= 2 and spaced >= 9 * plain


_Candidate = tuple[tuple[float, int, int], str, list[_SampleRecord], Counter[str], bool]


def _candidate(
    text: str, delimiter: str, quotechar: str, preference: int, *, whole: bool
) -> _Candidate:
    records, terminators = _parse_sample(text, delimiter, quotechar, whole=whole)
    skip = _spaced(records)
    if skip:
        records, terminators = _parse_sample(text, delimiter, quotechar, whole=whole, skip=True)
    score = _delimiter_score(records, _COMMENT in text)
    return (*score, -preference), delimiter, records, terminators, skip


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
            continue  # it cannot split anything: no need to parse the sample with it
        candidate = _candidate(text, delimiter, quotechar, preference, whole=whole)
        if best is None or candidate[0] > best[0]:
            best = candidate
    assert best is not None
    if best[0][0] < _FITS and named is None:
        # None of the usual delimiters fits: the rarer ones, only now (they cost a parse
        # each), and only if one splits the records more consistently.
        for preference, delimiter in enumerate(_EXTRA_DELIMITERS, start=len(_DELIMITERS)):
            if delimiter in text:
                candidate = _candidate(text, delimiter, quotechar, preference, whole=whole)
                if candidate[0] > best[0]:
                    best = candidate
    (consistency, _, _), delimiter, records, terminators, skip = best
    if consistency == 0.0 and named is None:
        delimiter, skip = ",", False  # no candidate splits the lines consistently: one column
        records, terminators = _parse_sample(text, delimiter, quotechar, whole=whole)
    complete = whole or bool(records)
    first, comment_char = _table_start(text, records)
    if named is not None and not first and len(records) > 1:
        first = 1
    table = records[first:]
    if comment_char is not None:
        table = [record for record in table if not text.startswith(comment_char, record.start)]
    if len(table) < _MIN_SNIFF_RECORDS and not whole:
        if not last_chance:
            return None
        if not table:
            # Not one whole record even in the largest sample: pick the delimiter from the
            # partial first record, and let its width be found while streaming.
            return _sniff_partial(text, quotechar)
    terminator = terminators.most_common(1)[0][0] if terminators else _DEFAULT_TERMINATOR
    start = records[first].start if first else 0
    return _Sniffed(
        delimiter, quotechar, terminator, table, complete,
        table_start=start, preamble_lines=_line_count(text, start), skip_space=skip,
        comment_char=comment_char,
    )  # fmt: skip


_SEP_LINE_RE: Final = re.compile(r"sep=([^\r\n\"])(?:\r\n|\r|\n)")


def _line_count(text: str, stop: int) -> int:
    crlf = text.count("\r\n", 0, stop)
    return text.count("\n", 0, stop) + text.count("\r", 0, stop) - crlf


def _table_start(text: str, records: list[_SampleRecord]) -> tuple[int, str | None]:
    """(index of the table's first record, comment character or None).

    Leading records are preamble, not table, when they are comments (starting with ``#``)
    narrower than the table, or narrower than the table (titles, ``key: value`` lines,
    ``Sales, Q1``), or, in a table of three columns or more, have at most one non-empty
    cell (a title in a spreadsheet export), and the table after them is what most records
    are: at least as many records of the table's width follow as there are preamble records
    (and, unless each is a comment or a single cell, a header is voted after them).
    ``#`` is the comment character when some sampled line starts with it and none of them
    has the table's width after the preamble.
    """
    if _COMMENT in text:
        widths = Counter(len(r.fields) for r in records if not text.startswith(_COMMENT, r.start))
    else:
        widths = Counter([len(record.fields) for record in records])
    if not widths:
        return 0, None
    width = max((count, width) for width, count in widths.items())[1]  # ties: the wider
    first = 0
    limit = min(len(records) - 1, _MAX_PREAMBLE)
    while first < limit:
        record = records[first]
        size = len(record.fields)
        if text.startswith(_COMMENT, record.start):
            if size == width and width > 1:
                break  # a header like "#,name": part of the table
        elif size >= width and not (
            width >= 3 and size <= width and sum(map(bool, record.fields)) <= 1
        ):
            break
        first += 1
    if first and sum(len(record.fields) == width for record in records[first:]) < first:
        first = 0  # not a table after them: leave the file as it is
    if first and len(records[first].fields) != width:
        first = 0
    if first and not all(
        text.startswith(_COMMENT, record.start) or sum(map(bool, record.fields)) <= 1
        for record in records[:first]
    ):
        # A narrow record of several cells may be a short header over rows with trailing
        # empty cells ("a,b" over "1,2,,"): preamble only if a header follows it.
        rows = [record.fields for record in records[first + 1 : first + 21]]
        if not _looks_like_header(records[first].fields, rows):
            first = 0
    if _COMMENT not in text:
        return first, None
    commented = [record for record in records[first:] if text.startswith(_COMMENT, record.start)]
    lead = any(text.startswith(_COMMENT, record.start) for record in records[:first])
    comment = (lead or bool(commented)) and all(len(record.fields) != width for record in commented)
    return first, _COMMENT if comment else None


def _sniff_partial(text: str, quotechar: str) -> _Sniffed:
    records = {d: _parse_sample(text, d, quotechar, whole=True) for d in _DELIMITERS}
    delimiter = max(
        _DELIMITERS, key=lambda d: max((len(r.fields) for r in records[d][0]), default=0)
    )
    terminators = records[delimiter][1]
    terminator = terminators.most_common(1)[0][0] if terminators else _DEFAULT_TERMINATOR
    return _Sniffed(delimiter, quotechar, terminator, [], False)


_NUMBER_RE: Final = re.compile(
    r"[-+]?(?:\d+(?:[.,]\d*)?|[.,]\d+)(?:[eE][-+]?\d+)?%?"
    r"|[-+]?\d{1,3}(?:[,. \u00a0']\d{3})+(?:[.,]\d+)?"
)
_DATE_RE: Final = re.compile(
    r"\d{4}-\d{1,2}-\d{1,2}(?:[T ]\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[-+]\d{2}:?\d{2})?)?"
    r"|\d{1,2}[./-]\d{1,2}[./-]\d{2,4}(?: \d{1,2}:\d{2}(?::\d{2})?)?"
    r"|\d{1,2}:\d{2}(?::\d{2})?"
)
_BOOLEANS: Final = frozenset({"true", "false", "yes", "no"})


def _kind(cell: str) -> str:
    value = cell.strip()
    if not value:
        return "empty"
    # Fast paths for the common cells, the same answers as the patterns below: numbers and
    # dates start with a digit, a sign, '.' or ','; a plain run of ASCII digits is a number.
    # The header vote classifies every cell of its rows, on every upload.
    first = value[0]
    if first.isalpha():
        return "bool" if value.lower() in _BOOLEANS else "text"
    if value.isascii() and value.isdigit():
        return "number"
    if _NUMBER_RE.fullmatch(value):
        return "number"
    if _DATE_RE.fullmatch(value):
        return "date"
    if value.lower() in _BOOLEANS:
        return "bool"
    return "text"


def _column_re(cell: re.Pattern[str]) -> re.Pattern[str]:
    """Cells joined by NUL (which no accepted CSV holds), each matching ``cell`` whole."""
    return re.compile(f"(?:{cell.pattern})(?:\x00(?:{cell.pattern}))*")


_NUMBER_COLUMN_RE: Final = _column_re(_NUMBER_RE)
_DATE_COLUMN_RE: Final = _column_re(_DATE_RE)


def _column_kinds(values: list[str]) -> set[str]:
    """The kinds of a column's non-empty cells; the same as ``{_kind(v) for v in values}``.

    Columns of numbers or of dates, the commonest typed columns, are recognised by one match
    over the whole column instead of one or two per cell (the vote runs on every upload).
    No text matches both patterns (a date has '-', '/', ':' or two separators around a
    one- or two-digit group; a number has none of these), so an all-date column is "date".
    """
    stripped = list(map(str.strip, values))
    joined = "\x00".join(stripped)
    if _NUMBER_COLUMN_RE.fullmatch(joined):
        return {"number"}
    if _DATE_COLUMN_RE.fullmatch(joined):
        return {"date"}
    # Free text, the commonest column of all: every cell starts with a letter (which makes
    # it text or a boolean, see _kind) and none is a boolean. Tested with C-level passes.
    starts = "".join([value[:1] for value in stripped])
    text_only = len(starts) == len(stripped) and starts.isalpha()  # (blank: no first char)
    if text_only and _BOOLEANS.isdisjoint(map(str.lower, stripped)):
        return {"text"}
    return {_kind(value) for value in values}


def _plain_names(cells: list[str]) -> bool:
    """Cells that read like column names: all non-empty text, mostly distinct (a name or
    two may repeat, as in ``id,name,name``; a row of one word over and over is no header)."""
    names = [cell.strip() for cell in cells]
    distinct = 2 * len(set(names)) > len(names) or len(names) == 1
    return distinct and all(name and _kind(name) == "text" for name in names)


def _looks_like_header(first: list[str], rows: list[list[str]]) -> bool:
    """Whether the first record names the columns of the rows after it.

    Columns of numbers, dates or booleans decide first, as in csv.Sniffer.has_header: each
    votes for a header when the first cell is text (or a number over booleans) and against
    when it is of the same kind.
    Without such evidence (only free text, or no rows at all) the first record is a header
    when its cells read like names, as most CSV files start with one; only when they don't
    does csv.Sniffer's weaker hint count: a text column whose values all have one length
    votes for a header when the first cell's length differs, against when it is the same.
    """
    typed = 0
    by_length = 0
    width = len(first)
    # Rows as wide as the first, the usual case, are read column by column with zip.
    columns: Iterator[Sequence[str]] | None = None
    if rows and all(len(row) == width for row in rows):
        columns = zip(*rows, strict=True)
    for column, head in enumerate(first):
        if columns is not None:
            values = list(filter(str.strip, next(columns)))  # the non-blank cells
        else:
            values = [row[column] for row in rows if column < len(row) and row[column].strip()]
        if not values:
            continue
        kinds = _column_kinds(values)
        if len(kinds) == 1 and kinds != {"text"}:
            head_kind = _kind(head)
            if head_kind in kinds:
                typed -= 1
            elif head_kind == "text" or (head_kind == "number" and kinds == {"bool"}):
                typed += 1  # a name, or a number naming a column of booleans (wide.csv)
        elif kinds == {"text"} and len(values) > 1:
            lengths = set(map(len, values))
            if len(lengths) == 1:
                by_length += -1 if len(head) in lengths else 1
    if typed:
        return typed > 0
    if _plain_names(first):
        return True
    return by_length > 0


# --------------------------------------------------------------------------------------------
# The profiler
# --------------------------------------------------------------------------------------------


def _decoding_codec(encoding: str, little_endian: bool) -> str:
    """The codec for bytes past any BOM."""
    if encoding == "utf-16":
        return "utf-16-le" if little_endian else "utf-16-be"
    if encoding == "utf-8-sig":
        return "utf-8"
    return encoding


class CsvProfiler:
    """Profiles a CSV file from its stored bytes, fed in order in chunks of any size.

    The first `sample_size` bytes (up to 64 times more while the sample holds fewer than 8
    records of the table) are buffered to sniff the dialect and the header; from then on each
    chunk is counted as it arrives and nothing of it is kept.
    """

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
        # At least enough to see a BOM whole.
        self._threshold = max(sample_size * self._unit, 4)
        self._max_sample = self._threshold * _MAX_SAMPLE_FACTOR
        self._sample: bytearray | None = bytearray()
        self._bom_len = 0
        self._projector = _Projector(wide=self._unit == 2, little=True, encoding=encoding)
        self._scanner: _Counter | _DialectFilter | None = None  # what is fed
        self._counter: _Counter | None = None  # what counts (the same, or behind a filter)
        self._sniffed: _Sniffed | None = None
        self._has_header = False
        self._columns: list[str] = []
        self._profile: CsvProfile | None = None

    def feed(self, data: bytes) -> None:
        """Add the next bytes of the file."""
        if self._profile is not None:
            raise RuntimeError("feed() after finish()")
        if self._scanner is not None:
            self._scanner.feed(self._projector.project(data))
            return
        assert self._sample is not None
        self._sample += data
        while self._sample is not None and len(self._sample) >= self._threshold:
            if not self._try_sniff(at_eof=False):
                self._threshold *= 2

    def finish(self) -> CsvProfile:
        """Close the stream and return the profile (the same one if called again)."""
        if self._profile is None:
            if self._scanner is None:
                self._try_sniff(at_eof=True)
            assert self._scanner is not None
            assert self._counter is not None
            assert self._sniffed is not None
            self._scanner.finish()
            self._profile = self._build_profile(self._counter, self._sniffed)
        return self._profile

    # -- sniffing ------------------------------------------------------------------------

    def _try_sniff(self, *, at_eof: bool) -> bool:
        """Sniff the buffered sample and start counting; False if it needs more bytes."""
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
        # Always the same window for the same threshold, however the bytes were chunked.
        window = min(len(projected), (self._threshold - bom_len) // self._unit)
        # Decided by the window, not by how much is buffered, so that the outcome does not
        # depend on how the file was chunked.
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
        if sniffed.skip_space or sniffed.comment_char is not None:
            self._scanner = _DialectFilter(
                self._counter, delimiter=sniffed.delimiter, quotechar=sniffed.quotechar,
                skip_space=sniffed.skip_space, comment_char=sniffed.comment_char,
            )  # fmt: skip
        self._sample = None
        self._scanner.feed(projected[sniffed.table_start :] if sniffed.table_start else projected)
        return True

    def _start_scanner(self, sniffed: _Sniffed, body: bytes, codec: str) -> _Counter:
        records = sniffed.records
        expected: int | None = None
        if records:
            first = records[0]
            rows = [record.fields for record in records[1 : _MAX_HEADER_VOTE_ROWS + 1]]
            self._has_header = _looks_like_header(first.fields, rows)
            if self._has_header:
                raw_header = body[first.start * self._unit : first.end * self._unit]
                self._columns = _one_record(
                    raw_header.decode(codec, "replace"),
                    sniffed.delimiter,
                    sniffed.quotechar,
                    sniffed.skip_space,
                )
                expected = len(self._columns)
            else:
                widths = Counter(len(record.fields) for record in records)
                expected = widths.most_common(1)[0][0]
        if _NativeScanner is not None and _use_native:
            return _NativeScanner(
                delimiter=ord(sniffed.delimiter),
                quotechar=ord(sniffed.quotechar),
                expected_fields=expected,
                header_records=int(self._has_header),
                checkpoint_every=self._checkpoint_every,
            )
        return _RecordScanner(
            delimiter=ord(sniffed.delimiter),
            quotechar=ord(sniffed.quotechar),
            terminator=sniffed.terminator.encode("ascii"),
            expected_fields=expected,
            header_records=int(self._has_header),
            checkpoint_every=self._checkpoint_every,
        )

    def _build_profile(self, scanner: _Counter, sniffed: _Sniffed) -> CsvProfile:
        bom, unit = self._bom_len, self._unit
        table = sniffed.table_start
        seen: Counter[str] = Counter(self._columns)
        return CsvProfile(
            delimiter=sniffed.delimiter,
            quotechar=sniffed.quotechar,
            line_terminator=sniffed.terminator,
            has_header=self._has_header,
            columns=list(self._columns),
            column_count=scanner.expected_fields or 0,
            row_count=scanner.data_rows,
            ragged_rows=scanner.ragged,
            checkpoints=[
                (row, bom + unit * (table + offset)) for row, offset in scanner.checkpoints
            ],
            encoding=self._encoding,
            preamble_lines=sniffed.preamble_lines,
            table_offset=bom + unit * table,
            skip_initial_space=sniffed.skip_space,
            comment_char=sniffed.comment_char,
            duplicate_columns=[name for name, count in seen.items() if count > 1],
        )


# --------------------------------------------------------------------------------------------
# Reading rows back
# --------------------------------------------------------------------------------------------


def iter_rows_from(
    fp: BinaryIO, profile: RowSource, start_row: int, limit: int
) -> tuple[list[list[str]], int | None]:
    """Up to `limit` data rows from data-row index `start_row`, and the next index or None.

    Seeks `fp` (the stored file, opened in binary mode) to the last checkpoint at or before
    `start_row` and parses from there with csv.reader, so the work and memory depend on the
    checkpoint spacing and `limit`, not on the file size or the offset. Blank lines are
    skipped, as the profiler does not count them. `fp` is left open, at an unspecified
    position. csv.Error propagates (e.g. a field over csv.field_size_limit()).
    """
    if start_row < 0 or limit < 1:
        raise ValueError("start_row must be >= 0 and limit >= 1")
    checkpoints = profile.checkpoints
    at = bisect.bisect_right(checkpoints, start_row, key=lambda checkpoint: checkpoint[0]) - 1
    if at < 0:
        return [], None  # no data rows at all
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
        return _collect_rows(text, profile, row, start_row, limit)
    finally:
        text.detach()  # leave the caller's file open


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


# --------------------------------------------------------------------------------------------
# Reading a bounded page of rows back
# --------------------------------------------------------------------------------------------

# csv.reader refuses a field over csv.field_size_limit() (131,072 characters by default);
# read_page bounds the bytes it reads instead, so a field may be as long as that bound. Set
# once, at import, so that every csv.reader in the process (the sniffer's too) sees the same.
READ_FIELD_LIMIT: Final = 16 * 1024 * 1024
csv.field_size_limit(max(csv.field_size_limit(), READ_FIELD_LIMIT))

# The rows between a checkpoint and the first row asked for are counted in blocks this size:
# the counter keeps a checkpoint per row in a block, so this bounds what it holds.
_SKIP_BLOCK: Final = 64 * 1024


@dataclass(frozen=True, slots=True)
class RowsPage:
    rows: list[list[str]]
    next_row: int | None
    truncated: list[tuple[int, int]]  # (index in rows, column) of each cell cut short


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
    """Up to `limit` data rows from `start_row`, parsing at most `max_bytes` bytes of them.

    The rows between the nearest checkpoint and `start_row` are counted by the record
    counter, which holds none of them; csv.reader then parses from the first row asked for
    over at most `max_bytes` bytes. A row that the bound cuts is left for the next page,
    unless it is the first: then it is returned as far as it was read, its last cell listed
    as truncated. Cells over `cell_limit` characters are cut to it and listed too. Memory
    and work depend on `max_bytes`, not on the longest row or cell.
    """
    if start_row < 0 or limit < 1 or not 2 <= max_bytes <= READ_FIELD_LIMIT or cell_limit < 1:
        raise ValueError(
            f"start_row must be >= 0, max_bytes 2-{READ_FIELD_LIMIT}, limit and cell_limit > 0"
        )
    if row_count is not None and start_row >= row_count:
        return RowsPage([], None, [])
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
    capped = _CappedReader(fp, max_bytes - max_bytes % 2)  # whole UTF-16 code units
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
            rows.pop()  # possibly cut: read whole from the start of the next page
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
    """csv.reader in the profile's dialect; comment lines read as blank lines (not rows), as
    the profiler's counter sees them (`_DialectFilter`)."""
    mark = profile.comment_char
    lines: Iterator[str] = (
        text if mark is None else ("\n" if line.startswith(mark) else line for line in text)
    )
    return csv.reader(
        lines,
        delimiter=profile.delimiter,
        quotechar=profile.quotechar,
        skipinitialspace=profile.skip_initial_space,
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
    """Where data row `start_row` starts, or None if the file ends before it.

    From the last checkpoint at or before it, the record counter -- the profiler's own, so
    records are csv.reader's -- counts the rows between, holding none of them.
    """
    checkpoints = profile.checkpoints
    at = bisect.bisect_right(checkpoints, start_row, key=lambda checkpoint: checkpoint[0]) - 1
    if at < 0:
        return None  # no data rows at all
    row, offset = checkpoints[at]
    skip = start_row - row
    if not skip:
        return offset
    wide = profile.encoding == "utf-16"
    unit = 2 if wide else 1
    projector = _Projector(wide=wide, little=little, encoding=profile.encoding)
    scanner: _Counter
    if _NativeScanner is not None and _use_native:
        scanner = _NativeScanner(
            delimiter=ord(profile.delimiter),
            quotechar=ord(profile.quotechar),
            expected_fields=None,
            header_records=0,
            checkpoint_every=skip,
        )
    else:
        scanner = _RecordScanner(
            delimiter=ord(profile.delimiter),
            quotechar=ord(profile.quotechar),
            terminator=terminator.encode("ascii"),
            expected_fields=None,
            header_records=0,
            checkpoint_every=skip,
        )
    fed: _Counter | _DialectFilter = scanner
    if profile.skip_initial_space or profile.comment_char is not None:
        fed = _DialectFilter(
            scanner, delimiter=profile.delimiter, quotechar=profile.quotechar,
            skip_space=profile.skip_initial_space, comment_char=profile.comment_char,
        )  # fmt: skip
    fp.seek(offset)
    counted = 0  # projected bytes fed
    while True:
        data = fp.read(_SKIP_BLOCK)
        if data:
            projected = projector.project(data)
            fed.feed(projected)
            counted += len(projected)
        if not data or scanner.data_rows >= skip:
            # Rows 0..skip-1 are complete: row `skip` is in what was read (finish() closes
            # it if it has begun, recording its checkpoint), or begins after blank lines.
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
    """Where the first line from `position` (a line start) that is neither blank nor, with
    `comment`, a comment line begins; the end of the file if none does."""
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
