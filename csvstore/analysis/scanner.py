"""The pure-Python record counter: the reference for csvstore/analysis/_scan.c."""

from __future__ import annotations

import functools
import re
from collections import deque
from typing import Final

_CR: Final = 0x0D
_LF: Final = 0x0A
_TERMINATOR_RE: Final = re.compile(rb"\r\n|\r|\n")
_LONE_CR_RE: Final = re.compile(rb"\r(?!\n)")
_BLOCK: Final = 256 * 1024
RECENT: Final = 32  # record starts kept for the footer check, as _scan.c's RECENT


@functools.lru_cache(maxsize=64)  # a handful of dialects; built once, not per upload
def _deletion_table(keep: bytes) -> bytes:
    return bytes(b for b in range(256) if b not in keep)


def _index_after_nth(data: bytes, needle: bytes, n: int, lo: int, hi: int) -> int:
    """Index just past the n-th `needle` in data[lo:hi]: bisecting with bytes.count, not a
    Python step per occurrence."""
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
    """Where row `ordinal` of data[first:stop] starts (row `passed` starts at `cursor`): the
    average row length's guess, corrected by bytes.count from the nearer known start."""
    guess = min(max(first + (stop - first) * ordinal // rows, cursor), stop)
    if guess - cursor <= stop - guess:
        seen = passed + data.count(needle, cursor, guess)
    else:
        seen = rows - data.count(needle, guess, stop)
    if seen >= ordinal:
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


class _RecordScanner:
    """Counts records of projected bytes in a known dialect; offsets are projected (code
    units after any BOM). How: docs/design/profiler.md."""

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
        "_recent",
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
        self._pos = 0
        self._in_quote = False
        self._quote_pending = False  # in a quoted field and the last byte was a quote
        self._cr_pending = False  # last byte was a CR ending a record; an LF next belongs to it
        self._field_start = True  # the next byte starts a field (a quote there opens one)
        self._rec_delims = 0
        self._rec_nonempty = False
        self._rec_start = 0
        self._records = 0  # non-blank records completed, header included
        self._ragged = 0
        self._recent: deque[int] = deque(maxlen=RECENT)

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

    @property
    def recent_starts(self) -> list[int]:
        return list(self._recent)

    def feed(self, data: bytes) -> None:
        # Splitting on quotes makes an object per quote: blocks bound how many at once.
        for first in range(0, len(data), _BLOCK):
            self._feed_block(data[first : first + _BLOCK] if len(data) > _BLOCK else data)

    def _feed_block(self, data: bytes) -> None:
        start = self._resume(data)
        if start < len(data):
            self._scan_outside(data, start)
        self._pos += len(data)

    def finish(self) -> None:
        # An unterminated quoted field at the end still makes a record, as in csv.reader.
        self._quote_pending = False
        if self._rec_nonempty or self._in_quote:
            self._end_record(True, self._pos)
        self._in_quote = False

    def _resume(self, data: bytes) -> int:
        start = 0
        if self._quote_pending:
            self._quote_pending = False
            if data[0] == self._quote:
                start = 1  # an escaped quote: still inside the field
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
        """Index after the closing quote of the field open at `start`; len(data) if none."""
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

    def _scan_outside(self, data: bytes, start: int) -> None:
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
            # Even quote runs up to the last line break: no quoted field there holds a
            # special (it would open with an odd run), so the quotes do not matter.
            cut = max(data.rfind(b"\n", start), data.rfind(b"\r", start)) + 1
            self._count_unquoted(data, start, cut, reduced[: last + 1].translate(None, quote))
            self._field_start = True
            if cut < len(data):
                self._scan_quoted(data, cut)
            return
        if not self._scan_by_parity(data, start, reduced):
            self._scan_quoted(data, start)

    def _scan_by_parity(self, data: bytes, start: int, reduced: bytes) -> bool:
        """Count data[start:] taking every other quote as opening a field; False if unsound
        (a quote after an ordinary byte is a plain character to csv.reader)."""
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
            # Few quotes: cheaper from `reduced` than translating the masked bytes again.
            outside_reduced = b"".join(reduced.split(quote)[0::2])
        self._count_unquoted(masked, start, len(data), outside_reduced)
        if len(pieces) % 2 == 0:
            self._in_quote = True  # the last quote opened a field that goes on
        elif data[-1] == self._quote:
            self._in_quote = self._quote_pending = True
        else:
            self._field_start = data[-1] in self._specials
        return True

    def _openers_at_field_start(self, followed: list[bytes]) -> bool:
        if followed and not followed[0] and not self._field_start:
            return False
        if len(followed) <= 4096:
            last_bytes = b"".join([piece[-1:] for piece in followed])
            return not last_bytes.translate(None, self._specials)
        # Many short pieces: classify them joined, in time by length, not by number.
        classes = (self._quote_bytes.join(followed) + self._quote_bytes).translate(self._classes)
        return b"cq" not in classes

    def _scan_quoted(self, data: bytes, start: int) -> None:
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
                position = found + 1  # inside an unquoted field: a plain character
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

    def _count_unquoted(self, data: bytes, start: int, end: int, reduced: bytes | None) -> None:
        """Count data[start:end], where quotes no longer matter; `reduced`: its specials."""
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
        if first < 0:
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
        """Count whole lines at once if the terminators are uniform, else return False."""
        assert self._expected is not None
        term, width = self._term, self._expected
        last = max(reduced.rfind(b"\n"), reduced.rfind(b"\r"))
        body_len = last + 1 - first
        rows, rest = divmod(body_len - len(term), len(self._row_pattern))
        expected_body = term + self._row_pattern * rows if rows >= 0 and not rest else b""
        if len(expected_body) == body_len and reduced.startswith(expected_body, first):
            # Every line has the expected width and terminator: the common case, one compare.
            widths: list[bytes] | None = None
            blank_possible = width == 0
        elif self._uniform_terminators(reduced):
            widths = reduced[first + len(term) : last + 1].split(term)
            widths.pop()
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
        # Two terminators in a row in `reduced` may be a blank line or a one-field line:
        # only then search the stored bytes.
        double = term + term
        if (
            blank_possible
            and reduced.find(double, first, last + 1) >= 0
            and data.find(double, head_end, tail_start) >= 0
        ):
            return False
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
        """Record `rows` whole records in data[first:stop]; `widths` None: none ragged."""
        index = self._records - self._header_records
        if widths is not None:
            # The header may be among them (after blank lines): it is never ragged.
            headers = min(max(-index, 0), rows)
            data_widths = widths[headers:] if headers else widths
            self._ragged += len(data_widths) - data_widths.count(
                self._row_pattern[: -len(self._term)]
            )
        self._records += rows
        self._remember_starts(data, first, stop, rows)
        every = self._checkpoint_every
        wanted = max(index, 0)
        wanted += -wanted % every
        cursor, passed = first, 0
        while wanted < index + rows:
            ordinal = wanted - index
            if ordinal > passed:
                cursor = _row_start(
                    data, self._term_last, first, stop, rows, ordinal, cursor, passed
                )
                passed = ordinal
            self._checkpoints.append((wanted, self._pos + cursor))
            wanted += every

    def _remember_starts(self, data: bytes, first: int, stop: int, rows: int) -> None:
        starts: list[int] = []
        end = stop - 1  # the last byte of the last record's terminator
        for _ in range(min(rows, RECENT)):
            start = data.rfind(self._term_last, first, end) + 1 or first
            starts.append(self._pos + start)
            end = start - 1
        self._recent.extend(reversed(starts))

    def _count_line_by_line(self, data: bytes, start: int, end: int) -> None:
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
        if nonempty:
            index = self._records - self._header_records
            if index >= 0:
                if self._expected is None:
                    self._set_expected(self._rec_delims)
                elif self._rec_delims != self._expected:
                    self._ragged += 1
                if index % self._checkpoint_every == 0:
                    self._checkpoints.append((index, self._rec_start))
            self._recent.append(self._rec_start)
            self._records += 1
        self._rec_delims = 0
        self._rec_nonempty = False
        self._rec_start = next_start

    def _set_expected(self, delims: int) -> None:
        self._expected = delims
        self._row_pattern = self._delim_bytes * delims + self._term
