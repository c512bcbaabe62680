"""The CSV content check, fed in every chunking: the verdict never depends on where bytes split."""

from __future__ import annotations

import bz2
import codecs

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from csvstore.analysis.content import CsvContentCheck, clean_filename
from csvstore.errors import NotACsv


def run(data: bytes, size: int) -> str:
    check = CsvContentCheck()
    for start in range(0, len(data), size):
        check.feed(data[start : start + size])
    return check.finish().encoding


CHUNKINGS = [1, 2, 3, 7, 64, 1 << 20]


@pytest.mark.parametrize("size", CHUNKINGS)
@pytest.mark.parametrize(
    ("data", "encoding"),
    [
        (b"", "utf-8"),
        (b"a,b\n1,2\n", "utf-8"),
        ("naïve,€\n".encode(), "utf-8"),
        (codecs.BOM_UTF8 + "x,ü\n".encode(), "utf-8-sig"),
        ("a;b\ncafé;5 €\n".encode("cp1252"), "cp1252"),
        (b"a,b\n" + "é".encode()[:1], "cp1252"),  # truncated UTF-8 at the very end
        ("a,b\n1,ü\n".encode("utf-16"), "utf-16"),
        (codecs.BOM_UTF16_BE + "a,b\n".encode("utf-16-be"), "utf-16"),
        # Text that begins as a binary format's signature does: were refused as bzip2, Parquet
        (b"BZh,name\n1,2\n", "utf-8"),
        (b"PAR1,PAR2,PAR3\n0.5,1,2\n", "utf-8"),
    ],
)
def test_text_in_supported_encodings(data: bytes, encoding: str, size: int) -> None:
    assert run(data, size) == encoding


@pytest.mark.parametrize("size", CHUNKINGS)
@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00", "PNG"),
        (b"PK\x03\x04rest", "ZIP"),
        (b"%PDF-1.4\n", "PDF"),
        (bz2.compress(b"a,b\n1,2\n"), "bzip2"),
        (bz2.compress(b""), "bzip2"),
        (b"PAR1\x15\x00\x15\x08\x15\x0c,\x15", "Parquet"),  # as DuckDB writes one
        (b"a,b\n\x00", "NUL"),
        (b"\x81\xff", "encoding"),
        (codecs.BOM_UTF8 + b"\xff", "UTF-8"),
        (codecs.BOM_UTF16_LE + b"\x00\xd8", "UTF-16"),  # a lone surrogate, then the end
    ],
)
def test_binary_and_undecodable_bytes_are_refused(data: bytes, reason: str, size: int) -> None:
    with pytest.raises(NotACsv, match=reason):
        run(data, size)


@settings(max_examples=200, deadline=None)
@given(
    text=st.text(
        alphabet=st.characters(exclude_characters="\x00", exclude_categories=["Cs"]), max_size=200
    ),
    size=st.integers(min_value=1, max_value=50),
)
def test_any_utf8_text_is_accepted_in_any_chunking(text: str, size: int) -> None:
    data = text.encode()
    if data.startswith(codecs.BOM_UTF8):
        assert run(data, size) == "utf-8-sig"
    elif any(data.startswith(magic) for magic in (b"PK\x03\x04", b"%PDF-", b"GIF8")):
        return
    else:
        assert run(data, size) == "utf-8"


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("data.csv", "data.csv"),
        ("a/b/c.CSV", "c.CSV"),
        ("..\\x.csv", "x.csv"),
        ("%2E%2E%2Fy.csv", "%2E%2E%2Fy.csv"),  # as sent: no percent-decoding
    ],
)
def test_clean_filename(raw: str, clean: str) -> None:
    assert clean_filename(raw) == clean


@pytest.mark.parametrize("raw", [None, "", "../", "x.txt", "csv", "a.csv/"])
def test_clean_filename_refuses(raw: str | None) -> None:
    with pytest.raises(NotACsv):
        clean_filename(raw)
