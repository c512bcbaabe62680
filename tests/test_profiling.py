"""Tests of the single-pass CSV profiler and of paged read-back (csvstore.analysis).

The reference throughout is csv.reader over the whole decoded text, with the dialect the
profiler detected, blank records ([]) left out: the profiler does not count blank lines.
"""

from __future__ import annotations

import codecs
import csv
import io
import itertools
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from csvstore.analysis import counter, header, pages, scanner, sniff
from csvstore.analysis.pages import iter_rows_from, read_page
from csvstore.analysis.profile import CsvProfile, CsvProfiler

CHUNKINGS = (None, 1, 7)  # whole, 1-byte and 7-byte chunks


@pytest.fixture(autouse=True, scope="module", params=["c", "python"])
def record_counter(request: pytest.FixtureRequest) -> Iterator[str]:
    """Every test here runs with the C record counter and with the pure-Python one."""
    saved = counter._use_native
    counter._use_native = request.param == "c"
    yield request.param
    counter._use_native = saved


def test_the_c_counter_is_built(record_counter: str) -> None:
    # make test builds csvstore/_scan.c; a missing build would silently test Python twice.
    assert counter._NativeScanner is not None
    assert counter.native_counter() == (record_counter == "c")


def chunks(data: bytes, size: int | None) -> Iterator[bytes]:
    if size is None:
        yield data
        return
    for at in range(0, len(data), size):
        yield data[at : at + size]


def profile_of(
    data: bytes | Iterable[bytes],
    encoding: str = "utf-8",
    *,
    checkpoint_every: int = 10_000,
    sample_size: int = 64 * 1024,
) -> CsvProfile:
    profiler = CsvProfiler(
        encoding=encoding, checkpoint_every=checkpoint_every, sample_size=sample_size
    )
    for chunk in [data] if isinstance(data, bytes) else data:
        profiler.feed(chunk)
    return profiler.finish()


def decode(data: bytes, encoding: str) -> str:
    if encoding == "utf-16":
        return data.decode("utf-16")  # consumes the BOM
    return data.decode("utf-8-sig" if encoding.startswith("utf-8") else encoding)


@dataclass(frozen=True)
class Reference:
    header: list[str] | None
    rows: list[list[str]]
    row_starts: list[int]  # stored-file offset of each data row


def reference(data: bytes, encoding: str, profile: CsvProfile) -> Reference:
    """What csv.reader says about `data` in the profile's dialect."""
    lines = io.StringIO(decode(data, encoding), newline="").readlines()
    lines = lines[profile.preamble_lines : len(lines) - profile.footer_lines]
    mark = profile.comment_char
    records = [
        record
        for record in csv.reader(
            ["\n" if mark and line.startswith(mark) else line for line in lines],
            delimiter=profile.delimiter,
            quotechar=profile.quotechar,
            skipinitialspace=profile.skip_initial_space,
            escapechar=profile.escape_char,
        )
        if record
    ]
    header = records[0] if profile.has_header and records else None
    rows = records[1:] if header is not None else records
    return Reference(header, rows, [])


def check_against_reference(data: bytes, encoding: str, profile: CsvProfile) -> Reference:
    ref = reference(data, encoding, profile)
    assert profile.row_count == len(ref.rows)
    if ref.header is not None:
        header = ref.header
        if len(profile.columns) == len(header) + 1:  # one name short: profile._unnamed_column
            at = 0 if profile.columns[0] == "" and profile.columns[1:] == header else len(header)
            assert profile.columns == [*header[:at], "", *header[at:]]
            assert all(name.strip() for name in header)
            assert len(set(header)) == len(header)
            assert sum(len(row) == len(header) + 1 for row in ref.rows) >= 2
        else:
            assert profile.columns == header
        assert profile.column_count == len(profile.columns)
    else:
        assert profile.columns == []
    width = profile.column_count
    assert profile.ragged_rows == sum(len(row) != width for row in ref.rows)
    return ref


def check_checkpoints(data: bytes, profile: CsvProfile, every: int) -> None:
    assert [row for row, _ in profile.checkpoints] == list(range(0, profile.row_count, every))
    offsets = [offset for _, offset in profile.checkpoints]
    assert offsets == sorted(set(offsets))
    # Each offset is where its row starts: reading one row from there gives that row.
    for row, offset in profile.checkpoints:
        rows, _ = iter_rows_from(io.BytesIO(data), _Single(profile, row, offset), row, 1)
        expected, _ = iter_rows_from(io.BytesIO(data), _FromTop(profile), row, 1)
        assert rows == expected


@dataclass(frozen=True)
class _Single:
    """A profile whose only checkpoint is the one under test."""

    inner: CsvProfile
    row: int
    offset: int

    @property
    def encoding(self) -> str:
        return self.inner.encoding

    @property
    def delimiter(self) -> str:
        return self.inner.delimiter

    @property
    def quotechar(self) -> str:
        return self.inner.quotechar

    @property
    def checkpoints(self) -> list[tuple[int, int]]:
        return [(self.row, self.offset)]

    @property
    def skip_initial_space(self) -> bool:
        return self.inner.skip_initial_space

    @property
    def comment_char(self) -> str | None:
        return self.inner.comment_char

    @property
    def escape_char(self) -> str | None:
        return self.inner.escape_char


@dataclass(frozen=True)
class _FromTop(_Single):
    """A profile with the first checkpoint only: read-back parses from the first row."""

    def __init__(self, inner: CsvProfile) -> None:
        object.__setattr__(self, "inner", inner)
        object.__setattr__(self, "row", 0)
        object.__setattr__(self, "offset", inner.checkpoints[0][1] if inner.checkpoints else 0)


# --------------------------------------------------------------------------------------------
# Real-world-shaped files
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    data: bytes
    encoding: str
    delimiter: str
    quotechar: str
    line_terminator: str
    has_header: bool
    columns: list[str]
    column_count: int
    row_count: int
    ragged_rows: int
    preamble_lines: int = 0
    skip_initial_space: bool = False
    comment_char: str | None = None
    duplicate_columns: list[str] = field(default_factory=list)


EXCEL_CP1252 = (
    "Référence;Désignation;Prix unitaire;Quantité\r\n"
    "A-001;Café moulu;4,50;12\r\n"
    "A-002;Thé vert « bio »;3,20;5\r\n"
    'A-003;"Crème; fraîche";2,10;40\r\n'
    "A-004;Pâtes;1,05;100\r\n"
).encode("cp1252")

CASES = {
    "excel cp1252 semicolon": Case(
        EXCEL_CP1252,
        "cp1252",
        ";",
        '"',
        "\r\n",
        True,
        ["Référence", "Désignation", "Prix unitaire", "Quantité"],
        4,
        4,
        0,
    ),
    "utf-8 with BOM": Case(
        codecs.BOM_UTF8 + "ville,pays,habitants\nZürich,CH,421878\nKöln,DE,1084831\n".encode(),
        "utf-8-sig",
        ",",
        '"',
        "\n",
        True,
        ["ville", "pays", "habitants"],
        3,
        2,
        0,
    ),
    "utf-8 BOM declared as utf-8": Case(
        codecs.BOM_UTF8 + b"a,b\n1,2\n",
        "utf-8",
        ",",
        '"',
        "\n",
        True,
        ["a", "b"],
        2,
        1,
        0,
    ),
    "tab separated": Case(
        b"id\tname\tscore\n1\tAda Lovelace\t9.5\n2\tAlan, Turing\t8.25\n3\tGrace\t7\n",
        "utf-8",
        "\t",
        '"',
        "\n",
        True,
        ["id", "name", "score"],
        3,
        3,
        0,
    ),
    "pipe separated": Case(
        b"sku|label|qty\nX1|bolt, small|10\nX2|nut|20\n",
        "utf-8",
        "|",
        '"',
        "\n",
        True,
        ["sku", "label", "qty"],
        3,
        2,
        0,
    ),
    "quoted newlines and doubled quotes": Case(
        b'id,comment,score\n1,"line one\nline two",5\n2,"she said ""hi, there""",4\n'
        b'3,"crlf\r\ninside",3\n4,"",2\n',
        "utf-8",
        ",",
        '"',
        "\n",
        True,
        ["id", "comment", "score"],
        3,
        4,
        0,
    ),
    "quoted header": Case(
        b'"first name","last, name"\nAda,Lovelace\nAlan,Turing\n',
        "utf-8",
        ",",
        '"',
        "\n",
        True,
        ["first name", "last, name"],
        2,
        2,
        0,
    ),
    "ragged rows": Case(
        b"a,b,c\n1,2,3\n4,5\n6,7,8,9\n10,11,12\n,,\n",
        "utf-8",
        ",",
        '"',
        "\n",
        True,
        ["a", "b", "c"],
        3,
        5,
        2,
    ),
    "no trailing newline": Case(
        b"x,y\n1,2\n3,4",
        "utf-8",
        ",",
        '"',
        "\n",
        True,
        ["x", "y"],
        2,
        2,
        0,
    ),
    "empty file": Case(b"", "utf-8", ",", '"', "\n", False, [], 0, 0, 0),
    "only blank lines": Case(b"\n\r\n\n", "utf-8", ",", '"', "\n", False, [], 0, 0, 0),
    "header only": Case(
        b"date,amount,currency\n",
        "utf-8",
        ",",
        '"',
        "\n",
        True,
        ["date", "amount", "currency"],
        3,
        0,
        0,
    ),
    "header only without newline": Case(
        b"date;amount", "utf-8", ";", '"', "\n", True, ["date", "amount"], 2, 0, 0
    ),
    "crlf terminators": Case(
        b"k,v\r\na,1\r\nb,2\r\nc,3\r\n", "utf-8", ",", '"', "\r\n", True, ["k", "v"], 2, 3, 0
    ),
    "cr terminators": Case(
        b"k;v\ra;1\rb;2\rc;3", "utf-8", ";", '"', "\r", True, ["k", "v"], 2, 3, 0
    ),
    "single column": Case(
        b"email\nada@example.org\nalan@example.org\n\ngrace@example.org\n",
        "utf-8",
        ",",
        '"',
        "\n",
        True,
        ["email"],
        1,
        3,
        0,
    ),
    "single column of numbers, no header": Case(
        b"3\n1\n4\n1\n5\n", "utf-8", ",", '"', "\n", False, [], 1, 5, 0
    ),
    "no header": Case(
        b"1,2.5,2024-01-02\n2,3.5,2024-01-03\n3,4.5,2024-01-04\n",
        "utf-8",
        ",",
        '"',
        "\n",
        False,
        [],
        3,
        3,
        0,
    ),
    "blank lines": Case(
        b"\n\na,b\n\n1,2\r\n\r\n3,4\n\n\n", "utf-8", ",", '"', "\n", True, ["a", "b"], 2, 2, 0
    ),
    "single quotes": Case(
        b"'id','name'\n'1','O''Brien, Pat'\n'2','Smith'\n",
        "utf-8",
        ",",
        "'",
        "\n",
        True,
        ["id", "name"],
        2,
        2,
        0,
    ),
    "apostrophes are not quotes": Case(
        b"name,quote\nPat,'tis fine\nO'Brien,it's ok\n",
        "utf-8",
        ",",
        '"',
        "\n",
        True,
        ["name", "quote"],
        2,
        2,
        0,
    ),
    "quotes inside unquoted fields": Case(
        b'item,size\npipe,12"\n"x"y"z,5\nscreen,27" wide\n',
        "utf-8",
        ",",
        '"',
        "\n",
        True,
        ["item", "size"],
        2,
        3,
        0,
    ),
    "unterminated quote at the end": Case(
        b'a,b\n1,2\n3,"never closed\n4,5\n', "utf-8", ",", '"', "\n", True, ["a", "b"], 2, 2, 0
    ),
    "all fields quoted": Case(
        b'"id","city","note"\n"1","Paris","ok"\n"2","Lyon, FR","a ""b"""\n"3","Nice","x\ny"\n',
        "utf-8",
        ",",
        '"',
        "\n",
        True,
        ["id", "city", "note"],
        3,
        3,
        0,
    ),
    "utf-16 little endian": Case(
        "nom,émoji\nZoë,\U0001f600\nĬ,Ĭ\n".encode("utf-16-le").join([codecs.BOM_UTF16_LE, b""]),
        "utf-16",
        ",",
        '"',
        "\n",
        True,
        ["nom", "émoji"],
        2,
        2,
        0,
    ),
    "utf-16 big endian": Case(
        codecs.BOM_UTF16_BE
        + "emoji;label\r\n\U0001f600;ċ\r\n,;xy\r\n\r\n1;2;3\r\n".encode("utf-16-be"),
        "utf-16",
        ";",
        '"',
        "\r\n",
        True,
        ["emoji", "label"],
        2,
        3,
        1,
    ),
    # Issue 17's shapes, as they come from spreadsheets, government portals and old tools.
    "a title and a comment before the header": Case(
        b"# clean this data!\nReport generated 2024-01-01\n\nid,name,population\n"
        b"1,Britain,67\n2,France,67\n3,Germany,83\n",
        "utf-8", ",", '"', "\n", True, ["id", "name", "population"], 3, 3, 0,
        preamble_lines=3, comment_char="#",
    ),
    "key: value metadata and a spreadsheet title": Case(
        b"Source: statistics office\r\nUnit: thousands\r\nTable 4,,,\r\n"
        b"region,year,men,women\r\nNorth,2020,10,11\r\nSouth,2020,12,13\r\n"
        b"East,2021,9,8\r\n",
        "utf-8", ",", '"', "\r\n", True, ["region", "year", "men", "women"], 4, 3, 0,
        preamble_lines=3,
    ),
    "comment lines among the rows": Case(
        b"# exported\nid,name\n1,english\n# it's a comment!\n2,chinese\n#\n3,x\n",
        "utf-8", ",", '"', "\n", True, ["id", "name"], 2, 3, 0,
        preamble_lines=1, comment_char="#",
    ),
    "a space after the delimiter": Case(
        b'id, name, city\n1, "Smith, J", "Oslo"\n2, "Doe, A", Rome\n3, "X ""Y""", "Z"\n',
        "utf-8", ",", '"', "\n", True, ["id", "name", "city"], 3, 3, 0,
        skip_initial_space=True,
    ),
    "a short header over rows with trailing empty cells (no preamble)": Case(
        b"a,b\n1,2,,\n3,4,,\n5,6,,\n",
        "utf-8", ",", '"', "\n", True, ["a", "b"], 2, 3, 3,
    ),
    "a title with a comma, over a header": Case(
        b"Sales, Q1\nregion,year,total\nNorth,2020,3\nSouth,2021,4\n",
        "utf-8", ",", '"', "\n", True, ["region", "year", "total"], 3, 2, 0, preamble_lines=1,
    ),
    "Excel's sep= line": Case(
        b"sep=;\r\nname;amount\r\nann;3,5\r\nbob;4\r\n",
        "utf-8", ";", '"', "\r\n", True, ["name", "amount"], 2, 2, 0, preamble_lines=1,
    ),
    "colon-delimited": Case(
        b"id:name:qty\n1:apple:3\n2:pear:4\n3:fig:5\n",
        "utf-8", ":", '"', "\n", True, ["id", "name", "qty"], 3, 3, 0,
    ),
    "duplicate column names": Case(
        b"id,name,name,note\n1,ann,bob,x\n2,cy,dee,y\n",
        "utf-8", ",", '"', "\n", True, ["id", "name", "name", "note"], 4, 2, 0,
        duplicate_columns=["name"],
    ),
    "9,000 columns, named by numbers": Case(
        ("id," + ",".join(str(100000 + i) for i in range(9000)) + "\n" + "".join(
            f"id{r}," + ",".join("TRUE" if (r * i) % 3 else "FALSE" for i in range(9000)) + "\n"
            for r in range(12))).encode(),
        "utf-8", ",", '"', "\n", True,
        ["id", *(str(100000 + i) for i in range(9000))], 9001, 12, 0,
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("size", CHUNKINGS)
def test_real_world_shapes(name: str, size: int | None) -> None:
    case = CASES[name]
    profile = profile_of(chunks(case.data, size), case.encoding)
    assert profile == CsvProfile(
        delimiter=case.delimiter,
        quotechar=case.quotechar,
        line_terminator=case.line_terminator,
        has_header=case.has_header,
        columns=case.columns,
        column_count=case.column_count,
        row_count=case.row_count,
        ragged_rows=case.ragged_rows,
        checkpoints=profile.checkpoints,
        encoding=case.encoding,
        preamble_lines=case.preamble_lines,
        table_offset=profile.table_offset,
        skip_initial_space=case.skip_initial_space,
        comment_char=case.comment_char,
        duplicate_columns=case.duplicate_columns,
    )
    check_against_reference(case.data, case.encoding, profile)


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("sample_size", [1, 5, 64])
def test_streamed_after_a_small_sample(name: str, sample_size: int) -> None:
    """With a tiny sample the counting past it sees every chunk boundary (1-byte chunks)."""
    case = CASES[name]
    whole = profile_of(case.data, case.encoding, checkpoint_every=1, sample_size=sample_size)
    for size in (1, 2, 3, 7):
        chunked = chunks(case.data, size)
        profile = profile_of(chunked, case.encoding, checkpoint_every=1, sample_size=sample_size)
        assert profile == whole
    check_against_reference(case.data, case.encoding, whole)
    check_checkpoints(case.data, whole, 1)


TRICKY = [
    b'\r\n1;\r\n,,\r\n,11,"\r1\n"\r\n',  # a lone CR, then a lone LF: not one CRLF
    b"a,b\r\n1,2\r\n3\r4,5\n6,7\r\n8,9\r\n",
    b'11;,"11111""","11""\r',  # a line break inside a quoted field left open at the end
    b'h1,h2\r\n"a\r\nb","c""\r\n"\r\n\r\n"",x\r\ny,"z"\r\n',
    b'h1;h2\r"a\rb";"""q"""\r\r1;2\r',
    b'a,b\n"x""",y\n"""",z\n12",3\n"q"r"s,t\nu,v',
    b'h\n"\n"\n""\n\n"\r\n"\n',
]


@pytest.mark.parametrize("data", TRICKY)
def test_every_split_point(data: bytes) -> None:
    """A CRLF, a "" escape or a quote state split at any byte gives the same profile."""
    whole = profile_of(data, checkpoint_every=1, sample_size=1)
    check_against_reference(data, "utf-8", whole)
    check_checkpoints(data, whole, 1)
    for cut in range(len(data) + 1):
        for second in range(cut, len(data) + 1, 3):
            parts = [data[:cut], data[cut:second], data[second:]]
            assert profile_of(parts, checkpoint_every=1, sample_size=1) == whole


def test_checkpoint_offsets_count_bom_and_utf16_units() -> None:
    data = codecs.BOM_UTF16_LE + "a,b\n1,\U0001f600\n2,x\n".encode("utf-16-le")
    profile = profile_of(data, "utf-16", checkpoint_every=1)
    # BOM (2) + "a,b\n" (4 units) = 10; + "1,😀\n" (5 units, the emoji is a surrogate pair).
    assert profile.checkpoints == [(0, 10), (1, 20)]
    data8 = codecs.BOM_UTF8 + "é,b\n1,2\n".encode()
    assert profile_of(data8, "utf-8-sig").checkpoints == [(0, 3 + 5)]


def test_utf16_code_unit_looking_like_a_comma_is_not_a_delimiter() -> None:
    # U+012C has the low byte 0x2C (","), U+0A0A has 0x0A ("\n") in both bytes.
    data = codecs.BOM_UTF16_LE + "a,b\nĬĬ,\u0a0a\n".encode("utf-16-le")
    profile = profile_of(chunks(data, 1), "utf-16")
    assert (profile.row_count, profile.ragged_rows, profile.columns) == (1, 0, ["a", "b"])


def test_finish_is_idempotent_and_feed_after_it_fails() -> None:
    profiler = CsvProfiler(encoding="utf-8")
    profiler.feed(b"a,b\n1,2\n")
    assert profiler.finish() is profiler.finish()
    with pytest.raises(RuntimeError):
        profiler.feed(b"3,4\n")


@pytest.mark.parametrize(
    "kwargs", [{"encoding": "latin-9"}, {"encoding": "utf-8", "checkpoint_every": 0}]
)
def test_rejects_bad_arguments(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=r"encoding|positive"):
        CsvProfiler(**kwargs)  # type: ignore[arg-type]


def test_first_record_longer_than_the_largest_sample() -> None:
    """Past 64 x sample_size without a whole record, the first record sets the width."""
    wide = b",".join(b"c%d" % i for i in range(200)) + b"\n"
    data = wide + b"1,2\n" + wide
    profile = profile_of(chunks(data, 10), sample_size=8)
    assert (profile.has_header, profile.column_count) == (False, 200)
    assert (profile.row_count, profile.ragged_rows) == (3, 1)


def test_field_over_csv_size_limit_in_the_sample() -> None:
    """The sniffer's csv.reader gives up at csv.field_size_limit(); counting does not."""
    data = b'id,blob\n1,"' + b"x," * 100_000 + b'"\n2,y\n3,z\n'
    raised = csv.field_size_limit(131_072)  # csv's default: csvstore.analysis raises it
    try:
        profile = profile_of(chunks(data, 65_536))
    finally:
        csv.field_size_limit(raised)
    assert (profile.columns, profile.row_count, profile.ragged_rows) == (["id", "blob"], 3, 0)
    assert profile_of(chunks(data, 65_536)) == profile


def test_header_over_columns_of_booleans_dates_and_numbers() -> None:
    data = b"active,since,score\ntrue,2024-01-02,1.5\nfalse,03/04/2023,2\nyes,12:30,-3e2\n"
    assert profile_of(data).has_header
    assert not profile_of(data.split(b"\n", 1)[1]).has_header


@pytest.mark.parametrize(
    ("data", "header"),
    [
        # A headerless list: the first line has the shape of the rest, so it is a row.
        ("".join(f"https://example.com/page/{i}\n" for i in range(50)), False),
        ("".join(f"user{i}@example.org,SKU-{i:04}\n" for i in range(30)), False),
        # The same under names of another shape.
        ("url\n" + "".join(f"https://example.com/page/{i}\n" for i in range(50)), True),
        ("email,sku\n" + "".join(f"u{i}@example.org,SKU-{i}\n" for i in range(30)), True),
        # Names in snake_case over values in snake_case are words, as before.
        ("task_name,task_status\n" + "write_docs,in_progress\nfix_bug,not_started\n" * 5, True),
        ("name,city\nAda Lovelace,London\nAlan Turing,Wilmslow\n", True),
        # Names of the values' shape but not their words are names (a review found these).
        ("Period 1,Period 2\n" + "Room 101,Room 12\nRoom 7,Room 9\n" * 3, True),
        ("msg.key,msg.text\n" + "btn.save,Save it\nbtn.quit,Quit now\n" * 3, True),
        ("Q1,Q2,Q3\n" + "A2,B3,C4\nD5,E6,F7\n" * 3, True),
        ("item_1,item_2\n" + "red_1,blue_2\ngreen_3,gold_4\n" * 3, True),
        ("".join(f"10.0.0.{i},host-{i}\n" for i in range(1, 20)), False),  # no words: rows
        # From a 4,860-file regression run (DuckDB's quoted_values_delimited.csv among them).
        ('"header1;header2"\n' + '"value1;value2"\n' * 3, True),
        ("col1,col2,col3\nval1,val2,val3\nval4,val5,val6\nval7,val8,val9\n", True),
        ("gene,sample1,sample2\nBRCA1,ENSG12,ENSG34\nTP53,ENSG56,ENSG78\n", True),
        # Digits and punctuation in one shape: data, whatever the words (month names).
        ('"Dec 8, 2022"\n"Sep 26, 2022"\n"Aug 31, 2022"\n"Aug 14, 2022"\n"Jul 2, 2021"\n', False),
    ],
)
def test_header_vote_compares_the_shape_of_text(data: str, header: bool) -> None:
    profile = profile_of(data.encode())
    assert profile.has_header is header
    assert profile.row_count == data.count("\n") - header


def test_whole_numbers_in_order_over_fractions_name_columns() -> None:
    # A spectrum: wavelengths name the columns of absorbances (and one year alone is data).
    spectrum = "sample,400,410,420,430\n" + "".join(
        f"S{i},0.{i}1,0.{i}2,0.{i}3,0.{i}4\n" for i in range(1, 9)
    )
    profile = profile_of(spectrum.encode())
    assert (profile.has_header, profile.columns) == (True, ["sample", "400", "410", "420", "430"])
    assert profile.row_count == 8
    # Whole numbers among their column's values (quantiles written without ".0"), out of
    # order, or only two of them are a row like the others; so are digits past int's limit.
    quantiles = "".join(f"{i}.{k}1,{i + 3}.{k}1,{i + 8}.{k}1\n" for k in range(1, 9) for i in (12,))
    assert profile_of(("12,15,20\n" + quantiles).encode()).has_header is False
    long_digits = ",".join("7" * 5000 for _ in range(3)) + "\n0.1,0.2,0.3\n0.4,0.5,0.6\n"
    assert profile_of(long_digits.encode()).row_count in (2, 3)  # profiled: no ValueError
    fractions = "".join(f"0.{i}1,0.{i}2,0.{i}3\n" for i in range(1, 9))
    assert profile_of(("410,400,420\n" + fractions).encode()).has_header is False
    assert profile_of(("400,410,0.5\n" + fractions).encode()).has_header is False


# MySQL's SELECT ... INTO OUTFILE with FIELDS ENCLOSED BY '"': quotes and backslashes
# escaped with a backslash, never doubled. A quote at a field's end ("...\\"") made csv's
# default dialect run two records together.
_MYSQL_ROWS = [
    (1, "Ann", 'He said \\"hi\\", then left'),
    (2, "Bob", 'ends in a quote \\"'),
    (3, "C:\\\\temp\\\\", "an escaped backslash before the closing quote"),
    (4, "Dee", "plain"),
]
MYSQL_EXPORT = b"id,name,note\n" + b"".join(
    f'{i * 10 + n},"{name}","{note}"\n'.encode() for i in range(12) for n, name, note in _MYSQL_ROWS
)


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, None])
def test_backslash_escaped_quotes_are_read_as_escapes(size: int | None) -> None:
    profile = profile_of(chunks(MYSQL_EXPORT, size), checkpoint_every=5, sample_size=300)
    assert profile.escape_char == "\\"
    assert (profile.row_count, profile.ragged_rows, profile.column_count) == (48, 0, 3)
    ref = check_against_reference(MYSQL_EXPORT, "utf-8", profile)
    assert ref.rows[:3] == [
        ["1", "Ann", 'He said "hi", then left'],
        ["2", "Bob", 'ends in a quote "'],
        ["3", "C:\\temp\\", "an escaped backslash before the closing quote"],
    ]
    check_checkpoints(MYSQL_EXPORT, profile, 5)


def test_a_backslash_before_a_closing_quote_in_rfc_csv_is_no_escape() -> None:
    # RFC 4180: a Windows path ending in a backslash, a doubled quote: no escape character.
    data = b'id,path,note\n1,"C:\\temp\\","say ""hi"""\n2,"D:\\",x\n3,"E:\\data\\",y\n'
    profile = profile_of(data)
    assert profile.escape_char is None
    ref = check_against_reference(data, "utf-8", profile)
    assert ref.rows[0] == ["1", "C:\\temp\\", 'say "hi"']


def test_many_rows_fast_path_and_deep_checkpoints() -> None:
    lines = [b"id,name,value"] + [b"%d,n%d,%d.5" % (i, i % 7, i) for i in range(30_000)]
    lines[12_345] = b"12344,ragged"
    data = b"\r\n".join(lines) + b"\r\n"
    profile = profile_of(chunks(data, 65_536), checkpoint_every=1_000)
    assert (profile.row_count, profile.ragged_rows) == (30_000, 1)
    assert [row for row, _ in profile.checkpoints] == list(range(0, 30_000, 1_000))
    for row, offset in profile.checkpoints:
        assert data[offset:].startswith(b"%d," % row)


@pytest.mark.parametrize("long_first", [True, False])
def test_checkpoints_when_row_lengths_are_uneven(long_first: bool) -> None:
    """The checkpoint search starts from the average row length; it must not rely on it."""
    long_rows = [b"%d,%s" % (i, b"x" * 900) for i in range(150)]
    short_rows = [b"%d,y" % i for i in range(150, 3_000)]
    body = long_rows + short_rows if long_first else short_rows + long_rows
    data = b"\n".join([b"n,text", *body]) + b"\n"
    profile = profile_of(data, checkpoint_every=97)
    assert profile.row_count == 3_000
    check_checkpoints(data, profile, 97)


def test_pandas_export_with_an_unnamed_index_column() -> None:
    data = b",city,population\n0,Paris,2102650\n1,Lyon,522250\n"
    profile = profile_of(data)
    assert (profile.has_header, profile.columns) == (True, ["", "city", "population"])


def test_quote_heavy_chunks_take_every_path() -> None:
    """Chunks with no quotes, with quoted fields that need no care, and ones that do."""
    writer_out = io.StringIO()
    writer = csv.writer(writer_out, quoting=csv.QUOTE_ALL, lineterminator="\n")
    writer.writerow(["id", "text"])
    for i in range(6_000):
        writer.writerow([i, "a, b" if i % 97 == 0 else ("multi\nline" if i % 101 == 0 else "x")])
    plain = "\n".join(f"{i},x" for i in range(6_000, 9_000)) + "\n"
    data = (writer_out.getvalue() + plain).encode()
    profile = profile_of(chunks(data, 4_096), checkpoint_every=500)
    check_against_reference(data, "utf-8", profile)
    check_checkpoints(data, profile, 500)


# --------------------------------------------------------------------------------------------
# Reading back
# --------------------------------------------------------------------------------------------


def test_iter_rows_from_deep_offsets() -> None:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(["n", "text"])
    for i in range(2_000):
        writer.writerow([i, f"row {i}\nwith, a break" if i % 3 == 0 else f"plain {i}"])
        if i % 250 == 0:
            out.write("\r\n")  # a blank line: not a row
    data = out.getvalue().encode()
    profile = profile_of(chunks(data, 1_000), checkpoint_every=64)
    assert len(profile.checkpoints) == 32
    expected = reference(data, "utf-8", profile).rows
    fp = io.BytesIO(data)
    for start in (0, 1, 63, 64, 65, 700, 1_279, 1_999, 2_000, 5_000):
        for limit in (1, 7, 100):
            rows, next_row = iter_rows_from(fp, profile, start, limit)
            assert rows == expected[start : start + limit]
            assert next_row == (start + limit if start + limit < 2_000 else None)
    assert not fp.closed


@pytest.mark.parametrize("name", ["excel cp1252 semicolon", "utf-8 with BOM", "utf-16 big endian"])
def test_iter_rows_from_decodes_the_stored_encoding(name: str) -> None:
    case = CASES[name]
    profile = profile_of(case.data, case.encoding, checkpoint_every=1)
    expected = reference(case.data, case.encoding, profile).rows
    for start in range(len(expected) + 1):
        rows, _ = iter_rows_from(io.BytesIO(case.data), profile, start, 2)
        assert rows == expected[start : start + 2]


def test_iter_rows_from_edges() -> None:
    empty = profile_of(b"")
    assert iter_rows_from(io.BytesIO(b""), empty, 0, 10) == ([], None)
    header_only = profile_of(b"a,b\n")
    assert iter_rows_from(io.BytesIO(b"a,b\n"), header_only, 0, 10) == ([], None)
    with pytest.raises(ValueError, match="limit"):
        iter_rows_from(io.BytesIO(b""), empty, 0, 0)
    with pytest.raises(ValueError, match="start_row"):
        iter_rows_from(io.BytesIO(b""), empty, -1, 1)


def _all_pages(
    data: bytes, profile: CsvProfile, start: int, limit: int, max_bytes: int
) -> list[list[str]]:
    """Every row from `start`, page by page as a client follows next_row."""
    rows: list[list[str]] = []
    at: int | None = start
    while at is not None:
        page = read_page(
            io.BytesIO(data), profile, at, limit, max_bytes=max_bytes, cell_limit=10**9,
            row_count=profile.row_count, line_terminator=profile.line_terminator,
        )  # fmt: skip
        assert page.rows or page.next_row is None
        assert page.truncated == []
        rows += page.rows
        at = page.next_row
    return rows


def test_read_page_counts_its_way_from_a_checkpoint() -> None:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(["n", "text"])
    for i in range(2_000):
        writer.writerow([i, f"row {i}\nwith, a break" if i % 3 == 0 else f"plain {i}"])
        if i % 250 == 0:
            out.write("\r\n" * (i % 3))  # blank lines: not rows
    data = out.getvalue().encode()
    profile = profile_of(chunks(data, 1_000), checkpoint_every=64)
    expected = reference(data, "utf-8", profile).rows
    for start in (0, 1, 63, 64, 65, 251, 700, 1_279, 1_999, 2_000, 5_000):
        for limit in (1, 7, 100):
            page = read_page(
                io.BytesIO(data), profile, start, limit, max_bytes=1 << 20, cell_limit=1_000
            )
            assert page.rows == expected[start : start + limit]
            assert page.next_row == (start + limit if start + limit < 2_000 else None)
    # A small byte bound: fewer rows a page, and following next_row reads every row once.
    for max_bytes in (40, 64, 1_000):  # the longest row is 26 bytes
        assert _all_pages(data, profile, 0, 100, max_bytes) == expected
        assert _all_pages(data, profile, 1_500, 7, max_bytes) == expected[1_500:]


@pytest.mark.parametrize("name", ["excel cp1252 semicolon", "utf-8 with BOM", "utf-16 big endian"])
def test_read_page_decodes_the_stored_encoding(name: str) -> None:
    case = CASES[name]
    profile = profile_of(case.data, case.encoding, checkpoint_every=3)
    expected = reference(case.data, case.encoding, profile).rows
    for start in range(len(expected) + 1):
        page = read_page(io.BytesIO(case.data), profile, start, 2, max_bytes=4096, cell_limit=99)
        assert page.rows == expected[start : start + 2]
        assert _all_pages(case.data, profile, start, 2, 80) == expected[start:]


def test_read_page_cuts_long_cells_and_rows() -> None:
    data = b"a,b,c\n" + b"1,%s,3\n" % (b"x" * 300) + b'"%s",y,z\n' % (b"q\n" * 200) + b"4,5,6\n"
    profile = profile_of(data, checkpoint_every=1)
    page = read_page(io.BytesIO(data), profile, 0, 10, max_bytes=1 << 20, cell_limit=100)
    assert page.rows == [["1", "x" * 100, "3"], ["q\n" * 50, "y", "z"], ["4", "5", "6"]]
    assert page.truncated == [(0, 1), (1, 0)]
    assert page.next_row is None
    # A first row longer than the bound: returned as far as read, its last cell listed.
    page = read_page(io.BytesIO(data), profile, 0, 10, max_bytes=50, cell_limit=100)
    assert page.rows == [["1", "x" * 48]]
    assert page.truncated == [(0, 1)]
    assert page.next_row == 1
    # ... and the next page starts at the next row, whatever the first one's length.
    page = read_page(io.BytesIO(data), profile, 1, 10, max_bytes=50, cell_limit=100)
    assert page.rows == [[("q\n" * 25)[:49]]]
    assert (page.truncated, page.next_row) == ([(0, 0)], 2)
    page = read_page(io.BytesIO(data), profile, 2, 10, max_bytes=50, cell_limit=100)
    assert (page.rows, page.truncated, page.next_row) == ([["4", "5", "6"]], [], None)
    # A row count that says the file ends there stops before any reading.
    assert read_page(io.BytesIO(b""), profile, 3, 1, max_bytes=50, cell_limit=9).rows == []


# --------------------------------------------------------------------------------------------
# Property-based: generated files against csv.reader
# --------------------------------------------------------------------------------------------

ALPHABET = ",;\t|\"' \n\r\r\nab1.é€ß\u00a0漢\U0001f600"
CP1252_ALPHABET = ",;\t|\"' \n\r\r\nab1.é€ßÆ"
ENCODINGS = ("utf-8", "utf-8-sig", "utf-16-le", "utf-16-be", "cp1252")


def encode(text: str, encoding: str) -> tuple[bytes, str]:
    """Stored bytes and the encoding the caller would declare."""
    if encoding == "utf-16-le":
        return codecs.BOM_UTF16_LE + text.encode("utf-16-le"), "utf-16"
    if encoding == "utf-16-be":
        return codecs.BOM_UTF16_BE + text.encode("utf-16-be"), "utf-16"
    if encoding == "utf-8-sig":
        return codecs.BOM_UTF8 + text.encode(), "utf-8-sig"
    return text.encode(encoding), encoding


@st.composite
def csv_files(draw: st.DrawFn) -> tuple[str, str]:
    encoding = draw(st.sampled_from(ENCODINGS))
    alphabet = CP1252_ALPHABET if encoding == "cp1252" else ALPHABET
    width = draw(st.integers(1, 5))
    field = st.text(alphabet=alphabet, max_size=6)
    row = st.one_of(
        st.lists(field, min_size=width, max_size=width),
        st.lists(field, max_size=width + 2),  # ragged, or [] (a blank line)
    )
    rows = draw(st.lists(row, max_size=25))
    out = io.StringIO()
    writer = csv.writer(
        out,
        delimiter=draw(st.sampled_from([",", ";", "\t", "|"])),
        quotechar=draw(st.sampled_from(['"', "'"])),
        lineterminator=draw(st.sampled_from(["\r\n", "\n", "\r"])),
        quoting=draw(st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL])),
    )
    writer.writerows(rows)
    text = out.getvalue()
    if draw(st.booleans()) and text:
        text = text[: draw(st.integers(0, len(text)))]  # cut anywhere: open quotes, no newline
    return text, encoding


@st.composite
def chunkings(draw: st.DrawFn, data: bytes) -> list[bytes]:
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=12)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), csv_files(), st.sampled_from([1, 3, 16, 64 * 1024]), st.integers(1, 4))
def test_matches_csv_reader(
    data: st.DataObject, file: tuple[str, str], sample_size: int, every: int
) -> None:
    text, encoding = file
    stored, declared = encode(text, encoding)
    parts = data.draw(chunkings(stored))
    profile = profile_of(parts, declared, checkpoint_every=every, sample_size=sample_size)
    assert profile == profile_of(stored, declared, checkpoint_every=every, sample_size=sample_size)
    ref = check_against_reference(stored, declared, profile)
    check_checkpoints(stored, profile, every)
    start = data.draw(st.integers(0, len(ref.rows) + 1))
    limit = data.draw(st.integers(1, 5))
    rows, next_row = iter_rows_from(io.BytesIO(stored), profile, start, limit, profile.row_count)
    assert rows == ref.rows[start : start + limit]
    assert next_row == (start + limit if start + limit < len(ref.rows) else None)
    check_read_page(data, stored, profile, ref, start, limit)


def check_read_page(
    data: st.DataObject, stored: bytes, profile: CsvProfile, ref: Reference, start: int, limit: int
) -> None:
    """read_page: as iter_rows_from under a bound the file fits in; under a small bound,
    pages that visit every row once, each whole or cut where `truncated` says."""

    def page_at(row: int, bound: int) -> pages.RowsPage:
        return read_page(
            io.BytesIO(stored), profile, row, limit, max_bytes=bound, cell_limit=1 << 20,
            row_count=profile.row_count, line_terminator=profile.line_terminator,
        )  # fmt: skip

    # The counter's blocks end anywhere: mid-record, between CR and LF, before blank lines.
    saved = pages._SKIP_BLOCK
    setattr(pages, "_SKIP_BLOCK", data.draw(st.sampled_from([1, 2, 5, saved])))  # noqa: B010
    try:
        check_pages(data, ref, page_at, start, limit, len(stored))
    finally:
        setattr(pages, "_SKIP_BLOCK", saved)  # noqa: B010


def check_pages(
    data: st.DataObject,
    ref: Reference,
    page_at: Callable[[int, int], pages.RowsPage],
    start: int,
    limit: int,
    size: int,
) -> None:
    page = page_at(start, size + 2)
    assert page.rows == ref.rows[start : start + limit]
    assert page.truncated == []
    assert page.next_row == (start + limit if start + limit < len(ref.rows) else None)
    bound = data.draw(st.integers(2, 40))
    at: int | None = data.draw(st.integers(0, len(ref.rows)))
    reached = at
    while at is not None:
        page = page_at(at, bound)
        reached = at + len(page.rows)
        for index, row in enumerate(page.rows):
            whole = ref.rows[at + index]
            if (index, len(row) - 1) in page.truncated:
                assert index == 0
                assert row[:-1] == whole[: len(row) - 1]
                assert whole[len(row) - 1].startswith(row[-1].rstrip("\ufffd"))
            else:
                assert row == whole
        at = page.next_row
        assert at is None or reached == at < len(ref.rows)
    assert reached == len(ref.rows)  # every row to the last, from wherever it began


WORD = st.text(alphabet="abcdefghij klmnop", min_size=1, max_size=8).filter(str.strip)


@st.composite
def tables(draw: st.DrawFn) -> tuple[str, str, str, str, int]:
    """Well-shaped tables: a header of names, then rows of words and numbers."""
    delimiter = draw(st.sampled_from([",", ";", "\t", "|"]))
    quotechar = draw(st.sampled_from(['"', "'"]))
    terminator = draw(st.sampled_from(["\r\n", "\n", "\r"]))
    width = draw(st.integers(2, 6))
    header = draw(st.lists(WORD, min_size=width, max_size=width, unique_by=str.strip))
    kinds = draw(st.lists(st.booleans(), min_size=width, max_size=width))
    cell = {
        True: st.integers(-10_000, 10_000).map(str),
        # Text may hold the delimiter or a line break: it is then quoted. (Python 3.11's
        # writer quotes a line break only if it is part of the writer's own lineterminator.)
        False: st.one_of(
            WORD, WORD.map(lambda w: w + delimiter + w), st.just(f"two{terminator}lines")
        ),
    }
    rows = draw(st.lists(st.tuples(*(cell[k] for k in kinds)).map(list), min_size=2, max_size=30))
    out = io.StringIO()
    writer = csv.writer(
        out,
        delimiter=delimiter,
        quotechar=quotechar,
        lineterminator=terminator,
        quoting=csv.QUOTE_ALL if quotechar == "'" else csv.QUOTE_MINIMAL,
    )
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue(), delimiter, quotechar, terminator, len(rows)


@settings(max_examples=150, deadline=None)
@given(tables(), st.integers(1, 9))
def test_sniffs_the_dialect_of_well_shaped_tables(
    table: tuple[str, str, str, str, int], size: int
) -> None:
    text, delimiter, quotechar, terminator, row_count = table
    data = text.encode()
    profile = profile_of(chunks(data, size))
    assert (profile.delimiter, profile.quotechar) == (delimiter, quotechar)
    assert profile.line_terminator == terminator
    assert profile.row_count + profile.has_header == row_count + 1
    assert profile.ragged_rows == 0


PREAMBLE_LINE = st.one_of(
    WORD,  # a title
    WORD.map(lambda w: "# " + w),  # a comment
    st.tuples(WORD, WORD).map(lambda kv: f"{kv[0].strip()}: {kv[1]}"),  # key: value
    st.just(""),  # a blank line
)


@settings(max_examples=150, deadline=None)
@given(
    st.data(),
    tables(),
    st.lists(PREAMBLE_LINE, min_size=1, max_size=3).filter(lambda ls: any(ls)),
    st.booleans(),
    # Samples that hold the preamble and more of the table (the counter's chunk boundaries
    # are walked by read_page's small blocks, and by the small-sample test of CASES).
    st.sampled_from([256, 64 * 1024]),
)
def test_a_preamble_and_comment_lines_leave_the_table_as_it_was(
    data: st.DataObject,
    table: tuple[str, str, str, str, int],
    preamble: list[str],
    comments: bool,
    sample_size: int,
) -> None:
    """Lines before the header, and comment lines between rows, change no count, name or
    row of the table: the profile equals the bare table's, offsets moved past them."""
    text, delimiter, quotechar, terminator, _ = table
    bare = profile_of(text.encode())
    if comments:  # after the header and after every other record of the table
        lines = list(io.StringIO(text, newline=""))  # comment lines go between records only
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quotechar=quotechar)
        ends = []
        for _record in reader:
            ends.append(reader.line_num)
        out = []
        for number, line in enumerate(lines, start=1):
            out.append(line)
            if number in ends[::2]:
                out.append("# note" + terminator)
        text = "".join(out)
    full = terminator.join(preamble) + terminator + text
    stored = full.encode()
    parts = data.draw(chunkings(stored))
    profile = profile_of(parts, "utf-8", checkpoint_every=2, sample_size=sample_size)
    assert profile.preamble_lines == len(preamble)
    if comments or any(line.startswith("#") for line in preamble):
        assert profile.comment_char == "#"
    assert (profile.delimiter, profile.quotechar) == (bare.delimiter, bare.quotechar)
    assert (profile.has_header, profile.columns) == (bare.has_header, bare.columns)
    assert (profile.row_count, profile.ragged_rows) == (bare.row_count, bare.ragged_rows)
    ref = check_against_reference(stored, "utf-8", profile)
    check_checkpoints(stored, profile, 2)
    start = data.draw(st.integers(0, len(ref.rows)))
    check_read_page(data, stored, profile, ref, start, data.draw(st.integers(1, 4)))


_CELLS = st.one_of(
    st.from_regex(r"[-+]?\d{1,6}([.,]\d{0,3})?([eE][-+]?\d{1,2})?%?", fullmatch=True),
    st.from_regex(r"\d{1,3}([,. ']\d{3}){1,2}([.,]\d{1,2})?", fullmatch=True),
    st.from_regex(r"\d{1,4}[-./:]\d{1,2}([-./:]\d{2,4})?( \d{1,2}:\d{2})?", fullmatch=True),
    st.sampled_from(["true", "No", "", "  ", "x1", "1x", "2026-01-01T10:00Z", "12:30", "n/a"]),
    st.text(alphabet="0123456789.,-:/ eE+%aT", max_size=12),
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_CELLS, min_size=1, max_size=12))
def test_column_kinds_match_the_kind_of_each_cell(cells: list[str]) -> None:
    """The whole-column shortcuts of the header vote answer as classifying cell by cell."""
    values = [cell for cell in cells if cell.strip()]
    if values:
        assert header._column_kinds(values) == {header._kind(v) for v in values}


def _header_vote_cell_by_cell(first: list[str], rows: list[list[str]]) -> bool:
    """The header vote as its docstring states it, one cell at a time: the reference."""
    typed = by_length = by_shape = 0
    whole: list[int] = []
    for column, head in enumerate(first):
        values = [row[column] for row in rows if column < len(row) and row[column].strip()]
        if not values:
            continue
        kinds = {header._kind(value) for value in values}
        if len(kinds) == 1 and kinds != {"text"}:
            head_kind = header._kind(head)
            names = (
                head_kind == "text"
                or (head_kind == "number" and kinds == {"bool"})
                or (head_kind in ("date", "bool") and kinds == {"number"})
            )
            typed += -1 if head_kind in kinds else 1 if names else 0
            digits = head.strip()
            year = len(digits) == 4 and digits[:2] in ("18", "19", "20")
            whole_head = head_kind in kinds and digits.isascii() and 0 < len(digits) <= 9
            if whole_head and digits.isdigit() and not year and all("." in v for v in values):
                try:
                    numbers = [abs(float(value.replace(",", ""))) for value in values]
                except ValueError:
                    numbers = []
                if numbers and not min(numbers) / 2 <= int(digits) <= 2 * max(numbers):
                    whole.append(int(digits))
        elif kinds == {"text"} and len(values) > 1:
            lengths = {len(value) for value in values}
            if len(lengths) == 1:
                by_length += -1 if len(head) in lengths else 1
            shapes = [_shape_by_hand(value) for value in values]
            common = max(shapes, key=shapes.count)
            if 5 * shapes.count(common) >= 4 * len(values) and set(common) - set("a "):
                if _shape_by_hand(head) != common:
                    by_shape += 1
                elif not _words_by_hand(head) or ("9" in common and set(common) & set(",.:/@")):
                    by_shape -= 1
                else:
                    shared = [v for v in values if _words_by_hand(head) & _words_by_hand(v)]
                    by_shape -= 2 * len(shared) >= len(values)
    if len(whole) >= 3 and whole in (sorted(set(whole)), sorted(set(whole), reverse=True)):
        typed += 2 * len(whole)

    def counts_up(cells: list[str]) -> bool:
        digits = [c.strip() for c in cells]
        if not digits or not all(d.isascii() and d.isdigit() for d in digits):
            return False
        return [int(d) for d in digits] == list(
            range(int(digits[0]), int(digits[0]) + len(digits))
        ) and int(digits[0]) in (0, 1)

    corner = len(first) >= 2 and not first[0].strip() and len(rows) >= 2
    if corner and (
        (len(first) > 2 and counts_up(first[1:])) or counts_up([r[0] for r in rows if r])
    ):
        return True  # pandas' index: an empty corner over 0, 1, 2, ...
    if typed:
        return typed > 0
    if by_shape:
        return by_shape > 0
    return header._plain_names(first) or by_length > 0


def _words_by_hand(value: str) -> set[str]:
    words, word = set(), ""
    for ch in value + " ":
        if ch.isalnum() and not ch.isdecimal() and ch != "_":
            word += ch
        elif word:
            words.add(word)
            word = ""
    return words


def _shape_by_hand(value: str) -> str:
    out: list[str] = []
    for ch in value.strip():
        letter = ch.isalnum() and not ch.isdecimal() and ch != "_"  # what re's [^\W\d_] is
        c = "a" if letter else "9" if ch.isdecimal() else ch
        if c == "a" and out[-2:] in (["a", "_"], ["a", "-"]):
            del out[-1]  # snake_case and kebab-case: one word
        elif not (out and out[-1] == c and c in "a9"):
            out.append(c)
    return "".join(out)


_VOTE_CELLS = st.one_of(_CELLS, st.sampled_from(["id", "Name", "yes", "Oslo", " x ", "é", "²"]))


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.integers(1, 5).flatmap(
        lambda width: st.tuples(
            st.lists(_VOTE_CELLS, min_size=width, max_size=width),
            st.lists(
                st.lists(_VOTE_CELLS, min_size=width, max_size=width)
                | st.lists(_VOTE_CELLS, max_size=width + 1),
                max_size=8,
            ),
        )
    )
)
def test_header_vote_matches_the_cell_by_cell_vote(
    sample: tuple[list[str], list[list[str]]],
) -> None:
    """The vote reads rectangular samples column by column and recognises free-text columns
    with C-level passes (the vote runs on every upload); it decides as cell by cell."""
    first, rows = sample
    assert header._looks_like_header(first, rows) == _header_vote_cell_by_cell(first, rows)


# Plain samples: no quote character. Spaces, digits, empty fields, blank lines, every line
# ending, each candidate delimiter, and a NUL (which must take the csv.reader path).
_PLAIN_TEXT = st.one_of(
    st.text(alphabet="ab1 ,;\t|\r\n\x00", max_size=300),
    # LF only (split without StringIO), with runs of blank lines past what is split off.
    st.lists(st.sampled_from(["a,b", "1;2", "", "", "\t|", " "]), max_size=150).map("\n".join),
    # More records than are sampled (20), and what follows them.
    st.lists(st.sampled_from(["a,b", "1;2", "", "c|d"]), min_size=18, max_size=40).map("\n".join),
    # CRLF and LF mixed, as many of each (csv.reader's order of first sight breaks the tie).
    st.lists(st.tuples(st.sampled_from(["a,b", "", "1;2"]), st.sampled_from(["\n", "\r\n"]))).map(
        lambda lines: "".join(line + end for line, end in lines)
    ),
)


@settings(max_examples=500)
@given(_PLAIN_TEXT, st.sampled_from(sniff._DELIMITERS), st.booleans())
def test_plain_samples_split_as_csv_reader_reads_them(
    text: str, delimiter: str, whole: bool
) -> None:
    """The sniffer splits quote-free samples itself instead of running csv.reader over them
    (that was a quarter of a small upload's CPU); the records, offsets and line endings are
    csv.reader's, wherever the sample ends."""
    expected = sniff._read_sample(text, delimiter, '"', whole=whole)
    assert sniff._parse_sample(text, delimiter, '"', whole=whole) == expected
    if sniff._is_plain(text, '"'):
        assert sniff._split_sample(text, delimiter, whole=whole) == expected


@pytest.mark.parametrize("text", ["a,b\nc,d\r\n", "a,b\r\nc,d\n", "\r\n\na,b\n\r\n"])
def test_a_tie_of_line_endings_goes_to_the_one_seen_first(text: str) -> None:
    """As many CRLF as LF lines: the sniffed terminator is csv.reader's pick, the first seen
    (Counter equality, in the property test above, does not look at the order)."""
    _, expected = sniff._read_sample(text, ",", '"', whole=True)
    _, split = sniff._split_sample(text, ",", whole=True)
    assert split.most_common() == expected.most_common()


# --------------------------------------------------------------------------------------------
# The C counter against the Python one, byte for byte
# --------------------------------------------------------------------------------------------

# Long runs of ordinary bytes reach the C counter's 64-byte fast path; the specials, quotes
# and CRs send it back to its byte-by-byte path, at any position in a 64-byte window.
_PIECES = st.sampled_from(
    [b",", b";", b"\n", b"\r", b"\r\n", b'"', b'""', b"'", b"a", b"xyz", b" ", b"\xe9"]
    + [b"a" * n for n in (15, 31, 63, 64, 65, 127, 200)]
    + [b"b,c,d\n" * 11, b'"q,\n"' + b"x" * 70]
)


@settings(max_examples=400, deadline=None)
@given(
    st.lists(_PIECES, max_size=60).map(b"".join),
    st.data(),
    st.sampled_from([(44, 34), (59, 39), (9, 34), (124, 34)]),
    st.one_of(st.none(), st.integers(1, 6)),
    st.integers(0, 1),
    st.integers(1, 5),
)
def test_c_counter_equals_python_counter(
    stored: bytes,
    data: st.DataObject,
    dialect: tuple[int, int],
    expected: int | None,
    header: int,
    every: int,
) -> None:
    assert counter._NativeScanner is not None
    delimiter, quotechar = dialect
    options = dict(
        delimiter=delimiter,
        quotechar=quotechar,
        expected_fields=expected,
        header_records=header,
        checkpoint_every=every,
    )
    native = counter._NativeScanner(**options)  # type: ignore[arg-type]
    python = scanner._RecordScanner(terminator=b"\n", **options)  # type: ignore[arg-type]
    for part in data.draw(chunkings(stored)):
        native.feed(part)
        python.feed(part)
    native.finish()
    python.finish()
    assert (native.data_rows, native.ragged, native.expected_fields, native.checkpoints) == (
        python.data_rows,
        python.ragged,
        python.expected_fields,
        python.checkpoints,
    )


def test_c_counter_refuses_bad_arguments() -> None:
    assert counter._NativeScanner is not None
    good = dict(
        delimiter=44, quotechar=34, expected_fields=None, header_records=0, checkpoint_every=1
    )
    for bad in (
        {"delimiter": 34},  # the same byte as the quote
        {"delimiter": 10},
        {"quotechar": 300},
        {"checkpoint_every": 0},
        {"expected_fields": 0},
    ):
        with pytest.raises(ValueError, match=r"must be positive|two distinct bytes"):
            counter._NativeScanner(**(good | bad))  # type: ignore[arg-type]
    scanner = counter._NativeScanner(**good)  # type: ignore[arg-type]
    scanner.feed(memoryview(b"a,b\n1,2\n"))  # any bytes-like object
    scanner.finish()
    assert (scanner.data_rows, scanner.expected_fields, scanner.checkpoints) == (
        2,
        2,
        [(0, 0), (1, 4)],
    )


def test_c_counter_refuses_to_be_used_while_another_thread_feeds_it() -> None:
    """feed() counts without the GIL: meanwhile everything else on the same scanner raises
    instead of reading (or freeing) what the count is changing."""
    assert counter._NativeScanner is not None
    options = dict(
        delimiter=44, quotechar=34, expected_fields=2, header_records=0, checkpoint_every=10**6
    )
    scanner = counter._NativeScanner(**options)
    rows = 16 * 1024 * 1024
    big = b"a,b\n" * rows  # 64 MiB: tens of milliseconds of counting
    feeding = threading.Thread(target=scanner.feed, args=(big,))
    refused: set[str] = set()
    messages: set[str] = set()
    feeding.start()
    while feeding.is_alive():
        # Calls that change nothing when they do run (before or after the feed).
        for name, call in {
            "data_rows": lambda: scanner.data_rows,
            "checkpoints": lambda: scanner.checkpoints,
            "ragged": lambda: scanner.ragged,
            "feed": lambda: scanner.feed(b""),
            "finish": scanner.finish,
        }.items():
            try:
                call()
            except RuntimeError as exc:
                messages.add(str(exc))
                refused.add(name)
    feeding.join()
    assert messages == {"the scanner is in use by a feed() in another thread"}
    assert refused  # at least one call landed during the feed, and was refused
    scanner.finish()
    assert scanner.data_rows == rows  # the feed itself was not disturbed
    assert len(scanner.checkpoints) == -(-rows // 10**6)


@pytest.mark.parametrize(
    ("data", "columns", "ragged"),
    [
        # R's write.table(sep=","): no name over the row names.
        (b'"x","y"\n"1",2,3\n"2",4,5\n', ["", "x", "y"], 0),
        # rows ending in a delimiter the header lacks
        (b"a,b,c\n1,2,3,\n4,5,6,\n", ["a", "b", "c", ""], 0),
        # not that shape: one row only, repeated names, rows of the header's width too
        (b"x,y\n1,2,3\n", ["x", "y"], 1),
        (b"x,x\n1,2,3\n4,5,6\n", ["x", "x"], 2),
        (b"x,y\n1,2,3\n4,5\n6,7,8\n", ["x", "y"], 2),
        # a short first row of data, not names: still a row (no header, one ragged)
        (b"1,2\n3,4,5\n6,7,8\n9,10,11\n", [], 1),
    ],
)
def test_a_header_one_name_short_gets_an_unnamed_column(
    data: bytes, columns: list[str], ragged: int
) -> None:
    profile = profile_of(data, "utf-8")
    assert profile.columns == columns
    assert profile.column_count == (len(columns) or 3)
    assert profile.ragged_rows == ragged


@pytest.mark.parametrize(
    ("data", "has_header", "rows"),
    [
        # R's write.csv of a table with numeric dimnames (datasets::crimtab)
        (b'"","142.24","144.78","147.32"\n"9.4",0,0,1\n"9.5",0,1,0\n"9.6",2,0,0\n', True, 3),
        # Python's csv.QUOTE_NONNUMERIC with numbers for names, no text column at all
        (b'"10","20","30"\n1.5,2.5,3.5\n4.5,5.5,6.5\n', True, 2),
        # the same after a space (skip_initial_space): spaces before the quote pass
        (b'"", "1.5", "2.5"\n"a", 1, 2\n"b", 3, 4\n', True, 2),
        (b'"r", "1", "2"\n"a", "3", "4"\n"b", "5", "6"\n', False, 3),
        # numbers quoted everywhere, or nowhere: the quotes say nothing
        (b'"1","2","3"\n"4","5","6"\n"7","8","9"\n', False, 3),
        (b"1.5,2.5,3.5\n4.5,5.5,6.5\n7.5,8.5,9.5\n", False, 3),
    ],
)
def test_quoted_numbers_over_bare_numbers_are_names(
    data: bytes, has_header: bool, rows: int
) -> None:
    profile = profile_of(data, "utf-8")
    assert (profile.has_header, profile.row_count) == (has_header, rows)


def _lines(template: bytes, n: int = 30) -> bytes:
    return b"".join(template.replace(b"{i}", str(i).encode()) for i in range(n))


@pytest.mark.parametrize(
    ("data", "delimiter", "columns", "rows", "preamble", "footer"),
    [
        # one column whose values hold a rarer delimiter: part of the values
        (b"url\n" + _lines(b"https://example.com/page/{i}\n"), ",", ["url"], 30, 0, 0),
        (b"path\r\n" + _lines(b"C:\\Users\\me\\f{i}.txt\r\n"), ",", ["path"], 30, 0, 0),
        (b"mac\n" + _lines(b"00:1A:2B:3C:{i}:EF\n"), ",", ["mac"], 30, 0, 0),
        (b"address\n" + _lines(b"2001:db8::{i}\n"), ",", ["address"], 30, 0, 0),
        (b"message\n" + _lines(b"Hello world {i}! Welcome\n"), ",", ["message"], 30, 0, 0),
        # `Key: value` lines over a table holding times: a preamble, not a ':' table
        (
            b"Device: TH-01\nFirmware: 1.2\nExported: 2024-01-01\nStart: 00:00\nEnd: 23:00\n"
            b"time,temp\n" + _lines(b"2024-01-01 00:{i},20.5\n", 60),
            ",",
            ["time", "temp"],
            60,
            5,
            0,
        ),
        # a ':' table is still one
        (
            b"name:age:city\nalice:30:paris\nbob:25:rome\ncarol:41:oslo\n",
            ":",
            ["name", "age", "city"],
            3,
            0,
            0,
        ),
        # decimal commas: a tie with ';' goes to ';'
        (_lines(b"Artikel {i};1,5;2,75\r\n"), ";", [], 30, 0, 0),
        # pandas' default index: an empty corner over 0, 1, 2 (a Series; a frame)
        (b",0\n" + _lines(b"{i},0.5\n"), ",", ["", "0"], 30, 0, 0),
        (b",0,1,2\n" + _lines(b"{i},0.5,0.25,0.125\n"), ",", ["", "0", "1", "2"], 30, 0, 0),
        # dates and words such as Yes naming columns of numbers
        (
            b"Item,2024-01-01,2024-01-02\n" + _lines(b"Widget {i},{i},7\n"),
            ",",
            ["Item", "2024-01-01", "2024-01-02"],
            30,
            0,
            0,
        ),
        (b"Yes,No\n" + _lines(b"{i},1\n"), ",", ["Yes", "No"], 30, 0, 0),
        # QuickBooks' Profit and Loss: a title block, an empty corner over "Total", dollar
        # totals among plain amounts, a footer after blank lines
        (
            b'"Profit and Loss"\r\n"Example Co"\r\n"January - December 2023"\r\n\r\n'
            b'"","Total"\r\n"Income",""\r\n"   Sales","1000.00"\r\n"   Services","500.00"\r\n'
            b'"Total Income","$1,500.00"\r\n"Expenses",""\r\n"   Rent","800.00"\r\n'
            b'"Total Expenses","$800.00"\r\n"Net Income","$700.00"\r\n\r\n\r\n\r\n'
            b'"Accrual Basis Tuesday, January 2, 2024 10:00 AM GMT-05:00"\r\n',
            ",",
            ["", "Total"],
            8,
            4,
            4,
        ),
        # a bank's export: title, label and value lines padded to the table's width
        (
            b"Umsaetze Girokonto;;;;\r\nZeitraum:;01.01.2024 - 31.01.2024;;;\r\n"
            b"Kontostand vom 31.01.2024:;1.234,56 EUR;;;\r\n;;;;\r\n"
            b"Buchungstag;Wert;Umsatzart;Empfaenger;Betrag\r\n"
            + _lines(b"0{i}.01.2024;0{i}.01.2024;Lastschrift;Firma {i};-1{i},50\r\n", 9)
            + b"Kontostand;31.01.2024;;;1.234,56\r\n",
            ";",
            ["Buchungstag", "Wert", "Umsatzart", "Empfaenger", "Betrag"],
            10,
            4,
            0,
        ),
        # a bank's headerless export with dollar amounts stays headerless
        (_lines(b"01/0{i}/2024,Card payment {i},-$1{i}.50\n", 9), ",", [], 9, 0, 0),
        # psql's row count after the result
        (
            b"id|name\n" + _lines(b"{i}|user {i}\n", 25) + b"(25 rows)\n",
            "|",
            ["id", "name"],
            25,
            0,
            1,
        ),
    ],
)
def test_shapes_real_tools_write(
    data: bytes, delimiter: str, columns: list[str], rows: int, preamble: int, footer: int
) -> None:
    profile = profile_of(data, "utf-8")
    assert profile.delimiter == delimiter
    assert profile.columns == columns
    assert (profile.row_count, profile.preamble_lines, profile.footer_lines) == (
        rows,
        preamble,
        footer,
    )
    assert profile.ragged_rows == 0


def test_blank_names_are_no_duplicate_columns() -> None:
    # Excel pads the header with the empty columns it kept formatted; blank names are
    # column<i> to queries and Unnamed: <i> to pandas: no clash.
    profile = profile_of(b"name,qty,,,\r\nApple,3,,,\r\nPear,5,,,\r\nPlum,2,,,\r\n")
    assert (profile.columns, profile.duplicate_columns) == (["name", "qty", "", "", ""], [])
    assert profile_of(b"a,a, , \n1,2,3,4\n5,6,7,8\n").duplicate_columns == ["a"]


_SQLCMD = b"id,name,amount\r\n--,----,------\r\n"


@pytest.mark.parametrize(
    ("data", "columns", "rule", "rows"),
    [
        # sqlcmd -s"," -W: dashes as long as the names, a row count after a blank line
        (
            _SQLCMD + _lines(b"{i},user {i},{i}.5\r\n") + b"\r\n(30 rows affected)\r\n",
            ["id", "name", "amount"],
            True,
            30,
        ),
        # sqlcmd without -W and SQL*Plus (colsep ,): names and values padded to the rule
        (
            b"ID   ,NAME      \n-----,----------\n" + _lines(b"   {i},user {i}    \n"),
            ["ID   ", "NAME      "],
            True,
            30,
        ),
        # one column; a rule of "="; DuckDB's big_header.csv (tab, a blank line after it)
        (b"name\n----\n" + _lines(b"user {i}\n"), ["name"], True, 30),
        (b"a;b\n===;===\n" + _lines(b"{i};x\n"), ["a", "b"], True, 30),
        (b"foo\tbar\n----\t---\n\n" + _lines(b"{i}\t.\n"), ["foo", "bar"], True, 30),
        # psql's aligned output saved as a file, and a Markdown table
        (
            b" id | name \n----+------\n" + _lines(b"  {i} | u{i}\n") + b"(30 rows)\n\n",
            ["id ", "name "],
            True,
            30,
        ),
        (
            b"| id | name |\n|---:|:-----|\n" + _lines(b"| {i} | u{i} |\n"),
            ["", "id ", "name ", ""],
            True,
            30,
        ),
        # one-letter names over single dashes (sqlcmd -W) are ruled too
        (b"a,b\n-,-\n" + _lines(b"{i},{i}\n"), ["a", "b"], True, 30),
        # placeholders are rows: one dash under longer names, dashes in some cells only
        (b"city,people\n-,-\n" + _lines(b"town {i},{i}\n"), ["city", "people"], False, 31),
        (b"city,note\nOslo,--\n" + _lines(b"town {i},--\n"), ["city", "note"], False, 31),
        (b"city,note\n--,\n" + _lines(b"town {i},x\n"), ["city", "note"], False, 31),
    ],
)
@pytest.mark.parametrize("size", [None, 7])
def test_a_rule_line_under_the_header_is_not_a_row(
    data: bytes, columns: list[str], rule: bool, rows: int, size: int | None
) -> None:
    profile = profile_of(chunks(data, size), checkpoint_every=10)
    assert (profile.header_rule, profile.columns, profile.row_count) == (rule, columns, rows)
    assert profile.ragged_rows == 0
    text = io.StringIO(data.decode(), newline="")
    expected = list(
        csv.reader(text, delimiter=profile.delimiter, skipinitialspace=profile.skip_initial_space)
    )
    expected = [r for r in expected if r][1 + rule :][:rows]
    for start in (0, 9, 10, 25):
        page = read_page(
            io.BytesIO(data), profile, start, 3, max_bytes=1 << 20, cell_limit=100,
            row_count=profile.row_count, line_terminator=profile.line_terminator,
        )  # fmt: skip
        assert page.rows == expected[start : start + 3]


_STATEMENT = (
    "Bank of Example\r\nAccount: 12345678\r\nSort code: 12-34-56\r\n"
    "Statement period: March 2024\r\nOpening balance: 100.00\r\n\r\n"
    "Date,Description,Amount,Balance\r\n01/03/2024,Coffee,-3.50,96.50\r\n"
    "02/03/2024,Salary,2000.00,2096.50\r\n03/03/2024,Rent,-900.00,1196.50\r\n"
)


@pytest.mark.parametrize("delimiter", [",", ";", "\t", "|"])
def test_a_title_block_longer_than_its_table_is_a_preamble(delimiter: str) -> None:
    """Six title and account lines over three transactions: more one-cell lines than rows,
    so the table's width is the one its rows share to the end, not the most common."""
    profile = profile_of(_STATEMENT.replace(",", delimiter).encode(), "utf-8")
    assert profile.delimiter == delimiter
    assert profile.columns == ["Date", "Description", "Amount", "Balance"]
    assert (profile.row_count, profile.preamble_lines, profile.ragged_rows) == (3, 6, 0)


def test_a_preamble_of_twenty_lines_is_set_aside() -> None:
    meta = b"".join(b"Meta%d: value %d\n" % (i, i) for i in range(20))
    rows = b"".join(b"%d,%d.5,%d.25\n" % (i, i, i) for i in range(20))
    profile = profile_of(meta + b"t,v1,v2\n" + rows, "utf-8")
    assert (profile.columns, profile.row_count, profile.preamble_lines) == (
        ["t", "v1", "v2"],
        20,
        20,
    )
