"""Footer lines after the table (csvstore/analysis/footer.py): notes and sources are not rows,
ragged data at the end stays rows; with the C and the Python record counter."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from csvstore.analysis import counter, scanner
from csvstore.analysis.footer import TAIL
from csvstore.analysis.stream import FileFacts, UploadAnalysis
from tests.test_profiling import (
    WORD,
    check_against_reference,
    check_checkpoints,
    check_read_page,
    chunkings,
    chunks,
    profile_of,
    tables,
)


@pytest.fixture(autouse=True, scope="module", params=["c", "python"])
def record_counter(request: pytest.FixtureRequest) -> Iterator[str]:
    saved = counter._use_native
    counter._use_native = request.param == "c"
    yield request.param
    counter._use_native = saved


TABLE = "region,year,men,women\n" + "".join(
    f"Region {i},{2000 + i},{100 + i},{200 + i}\n" for i in range(30)
)

# name, text after TABLE, footer_lines; the table's 30 rows stay, none ragged
FOOTERS = [
    ("source after a blank line", "\nSource: statistics office, 2024\n", 2),
    ("note without a gap", "Note: figures for 2024 are provisional\n", 1),
    ("footnotes", "* estimated\n(1) revised in May\n", 2),
    ("blank lines around", "\n\nSources:\nstatistics office\n\n", 5),
    (
        "spreadsheet padding (csvkit's Datagov file)",
        '"Note: State statistics may include individuals who used their benefits in more '
        'than one state, therefore ",,, \n the total within this table should not be used '
        "to reflect the total number of beneficiaries.,,,\n",
        2,
    ),
    ("a quoted note over two lines", '"Note: first line\nsecond line",,,\n', 2),
    ("CRLF, no newline at the end", "\nSource: office", 2),
    ("a label cell and its value", "Source:,statistics office,,\n", 1),
    ("numbered footnotes", "1/ Includes estimates.\n2. Revised in May\n", 2),
    ("spreadsheet blank rows before the notes", ",,,\n , ,,\nSource: office,,,\n", 3),
    ("a rule before the notes", "----------\nTotal records: 30\n", 2),
    ("a long footer", "\n" + "".join(f"({i}) footnote {i}\n" for i in range(20)), 21),
    ("lines of spaces and tabs, no note", "   \n\t\n \t \n", 3),
    ("DOS's end-of-file mark (Ctrl-Z)", "\x1a", 1),
    ("CRLF, then DOS's end-of-file mark", "\x1a", 1),
    ("spaces, then a source", "  \nSource: office\n", 2),
]


@pytest.mark.parametrize(("name", "footer", "lines"), FOOTERS, ids=[f[0] for f in FOOTERS])
@pytest.mark.parametrize("size", [None, 1, 7])
def test_footer_lines_are_not_rows(name: str, footer: str, lines: int, size: int | None) -> None:
    text = TABLE + footer
    if name.startswith("CRLF"):
        text = text.replace("\n", "\r\n")
    profile = profile_of(chunks(text.encode(), size), checkpoint_every=7)
    assert profile.footer_lines == lines
    assert (profile.row_count, profile.ragged_rows) == (30, 0)
    assert [row for row, _ in profile.checkpoints] == [0, 7, 14, 21, 28]
    assert profile.columns == ["region", "year", "men", "women"]


# name, text after TABLE, row_count, ragged_rows: all of it is data
KEPT = [
    ("rows cut short", "Region 30,2030\nRegion 31\n", 32, 2),
    ("a row with an extra cell", "Region 30,2030,1,2,late entry\n", 31, 1),
    ("a sparse last row of the table's width", "Row with blanks,,,\n", 31, 0),
    ("a last row of a few words", "Region thirty one\n", 31, 1),
    ("numbers after a blank line", "\n31,2031\n", 31, 1),
    ("a long name in a narrow row", "Region thirty two of the north,2032\n", 31, 1),
    ("rows of empty cells and no note", ",,,\n,,,\n", 32, 0),
    ("placeholders and no note", "-,-,-,-\n", 31, 0),
    ("a totals row", "Total,,,6435\n", 31, 0),
    ("spaces in every cell", "  ,  ,  ,  \n", 31, 0),
    ("more lines of spaces than a footer holds", "  \n" * 30, 60, 30),
]


def test_a_line_of_spaces_inside_the_table_stays_a_ragged_row() -> None:
    text = TABLE.replace("Region 29,", "   \nRegion 29,") + "  \n"
    profile = profile_of(text.encode())
    assert (profile.row_count, profile.ragged_rows, profile.footer_lines) == (31, 1, 1)


@pytest.mark.parametrize(("name", "tail", "rows", "ragged"), KEPT, ids=[k[0] for k in KEPT])
def test_ragged_data_at_the_end_stays_rows(name: str, tail: str, rows: int, ragged: int) -> None:
    profile = profile_of((TABLE + tail).encode())
    assert profile.footer_lines == 0
    assert (profile.row_count, profile.ragged_rows) == (rows, ragged)


def test_a_two_column_table_keeps_a_last_name_but_drops_a_source() -> None:
    table = "name,age\nAnn,31\nBob,42\nCy,27\n"
    assert profile_of((table + "Carl Jones\n").encode()).row_count == 4
    profile = profile_of((table + "Source: club register\n").encode())
    assert (profile.row_count, profile.ragged_rows, profile.footer_lines) == (3, 0, 1)


def test_a_footer_after_the_sample_and_far_from_the_start() -> None:
    rows = 25_000
    text = "id,value,label\n" + "".join(f"{i},{i * 7},x{i}\n" for i in range(rows))
    data = (text + "\nSource: generated for the test\n").encode()
    assert len(data) > 4 * TAIL
    profile = profile_of(chunks(data, 64 * 1024))
    assert (profile.row_count, profile.ragged_rows, profile.footer_lines) == (rows, 0, 2)
    assert [row for row, _ in profile.checkpoints] == [0, 10_000, 20_000]


def test_a_footer_longer_than_the_window_is_left_alone() -> None:
    # Judged on the last records only: a note bigger than the tail kept is not looked at.
    note = "Note: " + "long words " * (TAIL // 10)
    profile = profile_of((TABLE + note + "\n").encode())
    assert (profile.row_count, profile.footer_lines) == (31, 0)


@settings(max_examples=400, deadline=None)
@given(
    st.lists(
        st.sampled_from([b"a", b",", b"\n", b"\r", b"\r\n", b'"', b"x" * 70, b"1,2\n" * 9]),
        max_size=80,
    ),
    st.data(),
    st.integers(0, 1),
    st.one_of(st.none(), st.integers(1, 3)),
    st.sampled_from([b"\n", b"\r\n"]),
)
def test_both_counters_remember_the_same_record_starts(
    pieces: list[bytes], data: st.DataObject, header: int, width: int | None, term: bytes
) -> None:
    stored = b"".join(pieces)
    options = dict(delimiter=44, quotechar=34, header_records=header, checkpoint_every=3)
    assert counter._NativeScanner is not None
    native = counter._NativeScanner(expected_fields=width, **options)
    python = scanner._RecordScanner(terminator=term, expected_fields=width, **options)
    for part in data.draw(chunkings(stored)):
        native.feed(part)
        python.feed(part)
    native.finish()
    python.finish()
    assert native.recent_starts == python.recent_starts
    # Where csv.reader's last records start (the header too), at most RECENT of them.
    reader = csv.reader(io.StringIO(stored.decode(), newline=""))
    starts, consumed = [], 0
    lines = io.StringIO(stored.decode(), newline="").readlines()
    for record in reader:
        if record:
            starts.append(sum(map(len, lines[:consumed])))
        consumed = reader.line_num
    assert native.recent_starts == starts[-scanner.RECENT :]


FOOTER_LINE = st.one_of(
    st.tuples(WORD, WORD).map(lambda kv: f"Source: {kv[0].strip()} {kv[1].strip()}"),
    WORD.map(lambda w: f"* {w.strip()}"),
    st.just("Note: figures are provisional and may be revised"),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.data(),
    tables().filter(lambda table: table[4] >= 10),
    st.lists(FOOTER_LINE, min_size=1, max_size=2),
    st.booleans(),
    st.sampled_from([256, 64 * 1024]),
)
def test_a_footer_leaves_the_table_as_it_was(
    data: st.DataObject,
    table: tuple[str, str, str, str, int],
    notes: list[str],
    gap: bool,
    sample_size: int,
) -> None:
    text, _, _, terminator, _ = table
    bare = profile_of(text.encode())
    footer = [""] * gap + notes
    stored = (text + terminator.join(footer) + terminator).encode()
    profile = profile_of(data.draw(chunkings(stored)), checkpoint_every=2, sample_size=sample_size)
    assert profile.footer_lines == len(footer)
    assert (profile.delimiter, profile.has_header, profile.columns) == (
        bare.delimiter,
        bare.has_header,
        bare.columns,
    )
    assert (profile.row_count, profile.ragged_rows) == (bare.row_count, bare.ragged_rows)
    ref = check_against_reference(stored, "utf-8", profile)
    check_checkpoints(stored, profile, 2)
    start = data.draw(st.integers(0, len(ref.rows)))
    check_read_page(data, stored, profile, ref, start, data.draw(st.integers(1, 4)))


_CYRILLIC = "город;год;население\n" + "".join(
    f"Город {i};{2000 + i};{1000 + i}\n" for i in range(20)
)


@pytest.mark.parametrize("encoding", ["utf-8", "cp1251", "utf-16"])
def test_footers_in_other_encodings(encoding: str) -> None:
    # The check reads projected bytes: Cyrillic letters are bytes over 0x7f there.
    def facts(text: str) -> FileFacts:
        analysis = UploadAnalysis(encoding=encoding)
        analysis.feed(text.encode(encoding))
        return analysis.finish()

    noted = facts(_CYRILLIC + "Примечание: данные предварительные\n")
    assert (noted.row_count, noted.ragged_rows, noted.footer_lines) == (20, 0, 1)
    # UTF-8's 0x85 byte (in the letter kha, 0xD1 0x85) is no space: three words stay a row.
    kept = facts(_CYRILLIC + "хорошо хорошо хорошо\n")
    assert (kept.row_count, kept.ragged_rows, kept.footer_lines) == (21, 1, 0)
