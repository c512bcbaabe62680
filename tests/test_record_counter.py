"""The C record counter's SIMD builds (csvstore/analysis/_scan.c) against the Python one.

Each build of the 64-byte window loop (AVX-512BW, AVX2, SSE2; "none" is the byte loop alone)
must count what scanner._RecordScanner counts, on files shaped to reach its window loop with
quotes, "" pairs, CRLFs and the shapes it must hand back to the byte loop. tests/
test_profiling.py runs everything else against the best build and the Python counter.
"""

from __future__ import annotations

import csv
import io
import itertools
import platform
from typing import Literal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from csvstore.analysis import _scan, scanner


@st.composite
def chunkings(draw: st.DrawFn, data: bytes) -> list[bytes]:
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=12)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


# x86-64 with GCC or Clang: MSVC defines no __SSE2__ (and lacks the builtins), so Windows
# builds count byte by byte.
@pytest.mark.skipif(platform.machine() != "x86_64", reason="the SIMD builds are x86-64's")
def test_the_c_counter_has_a_simd_build() -> None:
    # x86-64 always has SSE2; a build that lost its window loop would count byte by byte.
    levels = _scan.simd_levels()
    assert levels[0] == "none"
    assert "sse2" in levels


def _field_text(delimiter: bytes, quote: bytes) -> st.SearchStrategy[bytes]:
    # Unquoted: letters and spaces; now and then a stray quote inside (text to csv.reader)
    unquoted = st.lists(
        st.sampled_from([b"a", b"bc", b"hello", b" ", b"x" * 40, b"7" * 70, b"a" + quote]),
        max_size=5,
    ).map(b"".join)
    # Quoted: any of the specials inside, "" pairs, and at times text after the close.
    inside = st.lists(
        st.sampled_from(
            [b"a", b"word " * 9, delimiter, quote * 2, b"\n", b"\r\n", b"\r", b"y" * 64]
        ),
        max_size=6,
    ).map(b"".join)
    after = st.sampled_from([b"", b"", b"", b"", b"tail", quote])
    quoted = st.tuples(inside, after).map(lambda t: quote + t[0] + quote + t[1])
    return st.one_of(unquoted, unquoted, quoted)


@st.composite
def window_files(draw: st.DrawFn, delimiter: bytes, quote: bytes) -> bytes:
    """Mostly well-formed CSV, long enough for many 64-byte windows, with the shapes the
    C counter's window loop must read as csv.reader does or hand back to its byte loop."""
    field_text = _field_text(delimiter, quote)
    records = []
    for _ in range(draw(st.integers(0, 40))):
        fields = draw(st.lists(field_text, min_size=1, max_size=6))
        end = draw(st.sampled_from([b"\n", b"\n", b"\r\n", b"\r\n", b"\r", b""]))
        records.append(delimiter.join(fields) + end)
    return b"".join(records)


def _count_both(
    level: str, parts: list[bytes], **options: int | None
) -> tuple[_scan.Scanner, scanner._RecordScanner]:
    """The C counter at ``level`` and the Python one, each fed ``parts`` and finished."""
    before = _scan.use_simd(level)
    try:
        native = _scan.Scanner(**options)  # type: ignore[arg-type]
    finally:
        _scan.use_simd(before)
    python = scanner._RecordScanner(terminator=b"\n", **options)  # type: ignore[arg-type]
    for part in parts:
        native.feed(part)
        python.feed(part)
    native.finish()
    python.finish()
    return native, python


@pytest.mark.parametrize("level", _scan.simd_levels())
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), st.sampled_from([(b",", b'"'), (b";", b"'"), (b"\t", b'"')]))
def test_every_simd_build_counts_as_the_python_counter(
    level: str, data: st.DataObject, dialect: tuple[bytes, bytes]
) -> None:
    delimiter, quote = dialect
    stored = data.draw(window_files(delimiter, quote))
    native, python = _count_both(
        level,
        data.draw(chunkings(stored)),
        delimiter=delimiter[0],
        quotechar=quote[0],
        expected_fields=None,
        header_records=data.draw(st.integers(0, 1)),
        checkpoint_every=data.draw(st.integers(1, 5)),
    )
    assert (native.data_rows, native.ragged, native.expected_fields) == (
        python.data_rows,
        python.ragged,
        python.expected_fields,
    )
    assert native.checkpoints == python.checkpoints
    assert native.recent_starts == python.recent_starts


def test_use_simd_refuses_a_level_the_cpu_lacks() -> None:
    with pytest.raises(ValueError, match="not one of this CPU's SIMD levels"):
        _scan.use_simd("neon")
    best = _scan.simd_levels()[-1]
    assert _scan.use_simd(best) == best  # the best is the default


def _exports() -> dict[str, bytes]:
    """What spreadsheets, pandas and databases write: quoted fields (some with delimiters,
    "" and line breaks inside), CRLF, LF or an old Mac's CR."""
    rows = [
        [i, f"user {i}", f"Street {i}, Apt {i % 7}", 'said "hi"' if i % 5 == 0 else "ok", i * 1.5]
        for i in range(3000)
    ]
    rows[1234][3] = "two\r\nlines"  # quoted whatever the line ending
    files = {}
    shapes: list[tuple[str, Literal[0, 1, 2, 3], str]] = [
        ("minimal-crlf", csv.QUOTE_MINIMAL, "\r\n"),
        ("all-lf", csv.QUOTE_ALL, "\n"),
        ("nonnumeric-crlf", csv.QUOTE_NONNUMERIC, "\r\n"),
        ("old-mac-cr", csv.QUOTE_MINIMAL, "\r"),
    ]
    for name, quoting, terminator in shapes:
        out = io.StringIO()
        csv.writer(out, quoting=quoting, lineterminator=terminator).writerows(rows)
        files[name] = out.getvalue().encode()
    return files


@pytest.mark.parametrize("level", [level for level in _scan.simd_levels() if level != "none"])
@pytest.mark.parametrize("name", sorted(_exports()))
def test_quoted_exports_go_through_the_window_loop(level: str, name: str) -> None:
    # Counted alike, and nearly all of it 64 bytes at a time: a window the loop wrongly
    # refused would be counted right, only slowly (at a quarter of the speed or less).
    data = _exports()[name]
    parts = [data[at : at + 65536] for at in range(0, len(data), 65536)]
    native, python = _count_both(
        level,
        parts,
        delimiter=44,
        quotechar=34,
        expected_fields=None,
        header_records=0,
        checkpoint_every=97,
    )
    assert (native.data_rows, native.ragged, native.checkpoints) == (
        python.data_rows,
        python.ragged,
        python.checkpoints,
    )
    assert native.data_rows == 3000
    assert native.windows >= 0.99 * (len(data) // 64)
