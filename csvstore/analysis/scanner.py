"""The pure-Python record counter: the reference for csvstore/analysis/_scan.c."""

from __future__ import annotations

import functools
import re
from typing import Final

_CR: Final = 0x0D
_LF: Final = 0x0A
_TERMINATOR_RE: Final = re.compile(rb"\r\n|\r|\n")
_LONE_CR_RE: Final = re.compile(rb"\r(?!\n)")
# The scanner takes chunks in blocks of at most this many bytes (see _RecordScanner.feed).
_BLOCK: Final = 256 * 1024


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
