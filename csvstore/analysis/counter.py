"""Choosing the record counter (C or Python), and the filter for comment lines and spaces."""

from __future__ import annotations

import functools
import re
from typing import TYPE_CHECKING, Final, Protocol

from csvstore.analysis.scanner import _RecordScanner

if TYPE_CHECKING:
    from csvstore.analysis._scan import Scanner


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

    @property
    def recent_starts(self) -> list[int]: ...


# The C counter (_scan.c) lets go of the GIL; `_RecordScanner` is the reference and fallback.
def _native_scanner() -> type[Scanner] | None:
    try:
        from csvstore.analysis._scan import Scanner
    except ImportError:  # no C compiler at install time
        return None
    return Scanner


_NativeScanner = _native_scanner()
_use_native = True  # the tests switch it off to run the Python counter


def native_counter() -> bool:
    """Whether profiles are counted by the C counter (else by the pure-Python one)."""
    return _NativeScanner is not None and _use_native


def _new_counter(
    *,
    delimiter: str,
    quotechar: str,
    terminator: str,
    expected_fields: int | None,
    header_records: int,
    checkpoint_every: int,
) -> _Counter:
    if _NativeScanner is not None and _use_native:
        return _NativeScanner(
            delimiter=ord(delimiter),
            quotechar=ord(quotechar),
            expected_fields=expected_fields,
            header_records=header_records,
            checkpoint_every=checkpoint_every,
        )
    return _RecordScanner(
        delimiter=ord(delimiter),
        quotechar=ord(quotechar),
        terminator=terminator.encode("ascii"),
        expected_fields=expected_fields,
        header_records=header_records,
        checkpoint_every=checkpoint_every,
    )


class _DialectFilter:
    """Feeds a counter bytes rewritten length for length: escapes, comments, spaced quotes."""

    __slots__ = ("_at_line_start", "_carry", "_comment", "_counter", "_escape", "_escape_carry",
                 "_in_comment", "_space_re", "_tail_re")  # fmt: skip

    def __init__(
        self, counter: _Counter, *, delimiter: str, quotechar: str, skip_space: bool,
        comment_char: str | None, escape_char: str | None = None,
    ) -> None:  # fmt: skip
        self._counter = counter
        self._escape = escape_char is not None
        self._escape_carry = b""
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
        if self._escape:
            data = self._hide_escaped(data)
        if self._comment is not None and data:
            data = self._blank_comments(data)
        if self._space_re is not None:
            data = self._carry + data
            # A trailing delimiter and spaces wait for the next byte.
            tail = self._tail_re.search(data)
            cut = tail.start() if tail is not None else len(data)
            data, self._carry = data[:cut], data[cut:]
            data = self._space_re.sub(_move_spaces, data)
        if data:
            self._counter.feed(data)

    def finish(self) -> None:
        if self._escape_carry:
            self._escape, carry = False, self._escape_carry
            self.feed(carry)
        if self._carry:
            self._counter.feed(self._carry)
            self._carry = b""
        self._counter.finish()

    def _hide_escaped(self, data: bytes) -> bytes:
        # A backslash (the only escape, sniff.py) and its byte as two neutral bytes.
        data = self._escape_carry + data
        run = len(data) - len(data.rstrip(b"\\"))
        data, self._escape_carry = (data[:-1], data[-1:]) if run % 2 else (data, b"")
        return _ESCAPED_RE.sub(b"__", data)

    def _blank_comments(self, data: bytes) -> bytes:
        assert self._comment is not None
        mark = self._comment
        original = data
        line_start = self._at_line_start
        if self._in_comment:
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
        self._in_comment = original.startswith(mark, start)
        self._at_line_start = original[-1] in (0x0A, 0x0D)
        return data


_ESCAPED_RE: Final = re.compile(rb"\\[\s\S]")
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
