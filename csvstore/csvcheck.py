"""Is this upload a CSV file? Decided from its name and its bytes, as they stream past.

The declared part type is only a hint (curl sends ``application/octet-stream`` for a
``.csv``), so the test is the content: not a known binary format, decodable in one of the
encodings CSV files come in, with no NUL character in the text. The checks run on each
chunk as it is written, so a bad file is refused as soon as its first bad chunk arrives.
"""

from __future__ import annotations

import codecs
import re
import unicodedata
from urllib.parse import unquote

from csvstore.errors import NotACsv

# Signatures of binary formats most often renamed or mistaken for CSV files.
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"PK\x03\x04", "a ZIP archive (an .xlsx workbook is one)"),
    (b"PK\x05\x06", "a ZIP archive"),
    (b"%PDF-", "a PDF document"),
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\x1f\x8b", "a gzip-compressed file"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "an old Office document (.xls)"),
    (b"GIF87a", "a GIF image"),
    (b"GIF89a", "a GIF image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"BZh", "a bzip2-compressed file"),
    (b"\xfd7zXZ\x00", "an xz-compressed file"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (b"(\xb5/\xfd", "a zstd-compressed file"),
    (b"Rar!\x1a\x07", "a RAR archive"),
    (b"SQLite format 3\x00", "an SQLite database"),
    (b"\x7fELF", "an executable"),
    (b"PAR1", "a Parquet file"),
)
_MAGIC_LENGTH = max(len(magic) for magic, _ in _MAGIC)

_BOMS: tuple[tuple[bytes, str], ...] = (
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)

# Bytes with no character in cp1252: a file holding one cannot be an Excel export.
_CP1252_UNDEFINED = re.compile(rb"[\x81\x8d\x8f\x90\x9d]")

MAX_FILENAME_LENGTH = 255


def clean_filename(raw: str | None) -> str:
    """The original file name, safe to store and to echo in headers.

    Percent-escapes are decoded first: aiohttp's client and browsers escape characters
    such as ``/``, ``"`` and CR/LF in the header (``..%2Fx.csv``). Then only the last path
    component is kept (``../``, absolute paths and Windows paths lose
    their folders), control characters go, and the length is bounded. The stored file
    never uses this name: it only describes the upload.
    """
    if raw is None:
        raise NotACsv(
            "the file part has no filename: send it as a file, e.g. curl -F file=@data.csv"
        )
    name = unquote(raw).replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C").strip()
    if name in {"", ".", ".."}:
        raise NotACsv("the file name is empty once its folders are removed")
    if len(name) > MAX_FILENAME_LENGTH:
        stem, dot, ext = name.rpartition(".")
        keep = MAX_FILENAME_LENGTH - len(dot + ext)
        name = (stem[:keep] + dot + ext) if dot and keep > 0 else name[:MAX_FILENAME_LENGTH]
    if not name.lower().endswith(".csv"):
        raise NotACsv(f"only .csv files are accepted, got {name!r}")
    return name


class CsvContentCheck:
    """Feed the upload's bytes in order; :meth:`finish` names the encoding or raises NotACsv."""

    def __init__(self) -> None:
        self._head = b""  # the first bytes, until there are enough to judge signatures and BOMs
        self._started = False
        self._encoding: str | None = None  # fixed by a BOM, else decided at the end
        self._decoder: codecs.IncrementalDecoder | None = None
        self._utf8 = codecs.getincrementaldecoder("utf-8")()
        self._utf8_ok = True
        self._utf8_pending = False
        self._cp1252_ok = True

    @property
    def encoding(self) -> str | None:
        """The encoding a byte order mark fixed, once :attr:`started`; None without a BOM."""
        return self._encoding

    @property
    def started(self) -> bool:
        """True once enough bytes have arrived to judge signatures and byte order marks."""
        return self._started

    def feed(self, chunk: bytes) -> None:
        if not self._started:
            self._head += chunk
            if len(self._head) < _MAGIC_LENGTH:
                return
            chunk, self._head = self._head, b""
            self._start(chunk)
        self._check(chunk)

    def finish(self) -> str:
        """The file's encoding (a Python codec name); raises NotACsv if the bytes are not text."""
        if not self._started:
            head, self._head = self._head, b""
            self._start(head)
            self._check(head)
        if self._decoder is not None:
            self._decode_checked(b"", final=True)
            assert self._encoding is not None
            return self._encoding
        if self._utf8_ok:
            try:
                self._utf8.decode(b"", final=True)
            except UnicodeDecodeError:
                self._utf8_ok = False
        if self._encoding == "utf-8-sig":
            if not self._utf8_ok:
                raise NotACsv(_BAD_UTF8_AFTER_BOM)
            return self._encoding
        if self._utf8_ok:
            return "utf-8"
        if self._cp1252_ok:
            return "cp1252"
        raise NotACsv(_NOT_TEXT)

    def _start(self, head: bytes) -> None:
        self._started = True
        for magic, what in _MAGIC:
            if head.startswith(magic):
                raise NotACsv(f"the file is {what}, not a CSV text file")
        for bom, encoding in _BOMS:
            if head.startswith(bom):
                self._encoding = encoding
                if encoding == "utf-16":
                    self._decoder = codecs.getincrementaldecoder("utf-16")()
                return

    def _check(self, chunk: bytes) -> None:
        if self._decoder is not None:
            self._decode_checked(chunk, final=False)
            return
        if b"\x00" in chunk:
            raise NotACsv("the file contains NUL bytes: it is binary data, not CSV text")
        if chunk.isascii() and not self._utf8_pending:
            return  # ASCII is valid in every candidate encoding
        if self._utf8_ok:
            try:
                self._utf8.decode(chunk)
                self._utf8_pending = bool(self._utf8.getstate()[0])
            except UnicodeDecodeError:
                self._utf8_ok = False
                if self._encoding == "utf-8-sig":
                    raise NotACsv(_BAD_UTF8_AFTER_BOM) from None
        if self._cp1252_ok and _CP1252_UNDEFINED.search(chunk):
            self._cp1252_ok = False
        if not (self._utf8_ok or self._cp1252_ok):
            raise NotACsv(_NOT_TEXT)

    def _decode_checked(self, chunk: bytes, *, final: bool) -> None:
        assert self._decoder is not None
        try:
            text = self._decoder.decode(chunk, final)
        except UnicodeDecodeError as exc:
            raise NotACsv(
                f"the file starts with a UTF-16 byte order mark but is not UTF-16: {exc.reason}"
            ) from None
        if "\x00" in text:
            raise NotACsv("the file contains NUL characters: it is binary data, not CSV text")


_BAD_UTF8_AFTER_BOM = "the file starts with a UTF-8 byte order mark but is not valid UTF-8"
_NOT_TEXT = (
    "the file is not text in a supported encoding "
    "(UTF-8 with or without BOM, UTF-16 with BOM, or cp1252)"
)
