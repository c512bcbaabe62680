"""Is this upload CSV text? Decided from its bytes as they stream past, not its declared
type (docs/profile.md, encodings)."""

from __future__ import annotations

import codecs
import re
import unicodedata
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from csvstore.analysis.projection import double_byte, profilable
from csvstore.errors import BadRequest, NotACsv

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
    *(
        (b"BZh%d%s" % (level, block), "a bzip2-compressed file")
        for level in range(1, 10)
        for block in (b"1AY&SY", b"\x17rE8P\x90")
    ),
    (b"\xfd7zXZ\x00", "an xz-compressed file"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (b"(\xb5/\xfd", "a zstd-compressed file"),
    (b"Rar!\x1a\x07", "a RAR archive"),
    (b"SQLite format 3\x00", "an SQLite database"),
    (b"\x7fELF", "an executable"),
    (b"PAR1\x15", "a Parquet file"),
)
_MAGIC_LENGTH = max(len(magic) for magic, _ in _MAGIC)

_BOMS: tuple[tuple[bytes, str], ...] = (
    (codecs.BOM_UTF8, "utf-8-sig"),
    # Before UTF-16's: FF FE 00 00 is UTF-32's mark, not UTF-16's followed by a NUL.
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
    (b"\x84\x31\x95\x33", "gb18030"),  # U+FEFF in GB18030, which some Chinese tools write
)

# Bytes with no character in cp1252: a file holding one cannot be an Excel export.
_CP1252_UNDEFINED = re.compile(rb"[\x81\x8d\x8f\x90\x9d]")

MAX_FILENAME_LENGTH = 255


def clean_filename(raw: str | None) -> str:
    """The original file name, safe to store and echo: as sent (a literal ``%2F`` is a name, not
    an escape: curl, requests and httpie send names raw), its last path component, no control
    characters, bounded."""
    if raw is None:
        raise NotACsv(
            "the file part has no filename: send it as a file, e.g. curl -F file=@data.csv"
        )
    name = raw.replace("\\", "/").rsplit("/", 1)[-1]
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


@dataclass(frozen=True, slots=True)
class EncodingVerdict:
    encoding: str  # a Python codec name
    source: str  # declared | bom | detected | fallback
    confidence: float | None = None
    invalid_bytes: int = 0  # read back as U+FFFD
    first_invalid_offset: int | None = None


def declared_encoding(name: str, what: str) -> str:
    """The codec `name` stands for (canonical name); BadRequest if Python has no such text codec."""
    try:
        info = codecs.lookup(name.strip())
    except (LookupError, ValueError):
        raise BadRequest(f"{what} names an unknown encoding: {name[:40]!r}") from None
    if not getattr(info, "_is_text_encoding", True):
        raise BadRequest(f"{what} names {info.name!r}, which is not a text encoding")
    if info.name in _LABEL_CODECS:  # they decode dot-separated labels, not lines of text
        raise BadRequest(f"{what} names {info.name!r}, an encoding of domain names, not of files")
    return info.name


_LABEL_CODECS = frozenset({"idna", "punycode"})


class CsvContentCheck:
    """Feed the upload's bytes in order; :meth:`finish` names the encoding or raises NotACsv.
    Declared, else BOM, else UTF-8 (a few bad bytes counted), else detection on a sample."""

    def __init__(self, declared: str | None = None) -> None:
        self._head = b""  # until there are enough to judge signatures and BOMs
        self._started = False
        self._declared = declared
        self._encoding: str | None = None  # fixed by a declaration or a BOM
        self._decoder: codecs.IncrementalDecoder | None = None
        self._offset = 0
        self._utf8_ok = True
        self._utf8_pending = b""
        self._utf8_bad = 0  # bytes in invalid sequences
        self._utf8_good = 0  # continuation bytes of valid multi-byte sequences
        self._first_bad: int | None = None
        self._sample: list[bytes] = []  # non-ASCII lines, collected once UTF-8 failed
        self._sample_size = 0
        self._partial_line = b""
        self._cp1252_ok = True
        self._detector_says_utf8 = False

    @property
    def encoding(self) -> str | None:
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

    def finish(self) -> EncodingVerdict:
        """How the file is encoded; raises NotACsv if the bytes are not text."""
        if not self._started:
            head, self._head = self._head, b""
            self._start(head)
            self._check(head)
        if self._decoder is not None:
            self._decode_checked(b"", final=True)
            assert self._encoding is not None
            source = "declared" if self._declared else "bom"
            return EncodingVerdict(self._encoding, source, 1.0)
        if self._utf8_pending and self._utf8_ok:
            self._count_bad(self._offset - len(self._utf8_pending), len(self._utf8_pending))
        if self._encoding == "utf-8-sig":
            if self._utf8_bad:
                raise NotACsv(_BAD_UTF8_AFTER_BOM)
            return EncodingVerdict(self._encoding, "bom", 1.0)
        if self._utf8_ok and self._mostly_utf8():
            return self._utf8_verdict()
        if self._partial_line:
            self._collect_sample(b"", final=True)
        detected = self._detect()
        # A mixed export if chardet reads UTF-8 too or enough characters are; not double-byte.
        double = detected is not None and double_byte(detected.encoding)
        evidence = self._detector_says_utf8 or self._utf8_good >= _UTF8_EVIDENCE
        if self._utf8_ok and self._plausibly_utf8() and evidence and not double:
            return self._utf8_verdict()
        if detected is None:
            # DOS or old Mac: any fitting one if cp1252 cannot be right, else a clear one.
            dos = self._detect(dos_and_mac=True)
            if dos is not None and (not self._cp1252_ok or (dos.confidence or 0) >= _CLEAR_DOS):
                detected = dos
        if detected is not None:
            return detected
        if self._cp1252_ok:
            return EncodingVerdict("cp1252", "fallback", None)
        raise NotACsv(_NOT_TEXT)

    def _mostly_utf8(self) -> bool:
        return self._utf8_bad * _MAX_BAD_SHARE <= self._utf8_good + self._utf8_bad or not (
            self._utf8_bad
        )

    def _plausibly_utf8(self) -> bool:
        # cp1252 text has no valid sequences; GBK, Big5, EUC and Shift-JIS ~1 per 3 bad bytes.
        return self._utf8_bad <= self._utf8_good

    def _utf8_verdict(self) -> EncodingVerdict:
        share = self._utf8_bad / (self._utf8_bad + self._utf8_good) if self._utf8_bad else 0.0
        return EncodingVerdict(
            "utf-8", "detected", round(1.0 - share, 4), self._utf8_bad, self._first_bad
        )

    def _detect(self, *, dos_and_mac: bool = False) -> EncodingVerdict | None:
        import chardet  # imported on first use: UTF-8 uploads never need it

        sample = b"".join(self._sample)
        # "ascii": none. DOS and Mac pages (cp862 for a short "café") are asked alone, after.
        eras = chardet.EncodingEra.MODERN_WEB | chardet.EncodingEra.LEGACY_ISO
        if dos_and_mac:
            eras = chardet.EncodingEra.DOS | chardet.EncodingEra.LEGACY_MAC
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            found = chardet.detect(sample, encoding_era=eras, no_match_encoding="ascii")
        name = found.get("encoding")
        if not name:
            return None
        self._detector_says_utf8 = name.lower().replace("_", "-") in ("utf-8", "utf-8-sig")
        try:
            encoding = codecs.lookup(name).name
            text = sample.decode(encoding, "replace")
        except LookupError:
            return None
        # C1 controls are no text's letters: ISO-8859 "decodes" a DOS file's ü (0x81) as one.
        unfit = len(_UNFIT.findall(text))
        if unfit > 2 + len(sample) // 1000:
            return None
        confidence = found.get("confidence") or 0.0
        if encoding.startswith("utf") or encoding == "ascii" or not profilable(encoding):
            return None
        # A double-byte code page that decodes every sampled byte is kept however unsure
        # chardet is (a short Shift-JIS file: 0.03): chance rarely pairs 8-bit text so, given
        # a few characters' worth (two stray bytes of broken UTF-8 are no evidence).
        paired = unfit == 0 and double_byte(encoding) and len(sample) >= _PAIRED_EVIDENCE
        dos_mac = dos_and_mac and unfit == 0 and len(sample) >= _PAIRED_EVIDENCE
        if (
            confidence < _MIN_CONFIDENCE
            and not paired
            and not (dos_mac and _DOS_OR_MAC.match(encoding))
        ):
            return None
        return EncodingVerdict(encoding, "detected", round(confidence, 4))

    def _start(self, head: bytes) -> None:
        self._started = True
        for magic, what in _MAGIC:
            if head.startswith(magic):
                raise NotACsv(f"the file is {what}, not a CSV text file")
        if self._declared is not None:
            encoding = self._declared
            if encoding == "utf-8" and head.startswith(codecs.BOM_UTF8):
                encoding = "utf-8-sig"
            self._encoding = encoding
            self._decoder = codecs.getincrementaldecoder(encoding)()
            return
        for bom, encoding in _BOMS:
            if head.startswith(bom):
                self._encoding = encoding
                if encoding != "utf-8-sig":  # checked as it comes, in that codec
                    self._decoder = codecs.getincrementaldecoder(encoding)()
                return

    def _check(self, chunk: bytes) -> None:
        if self._decoder is not None:
            self._decode_checked(chunk, final=False)
            self._offset += len(chunk)
            return
        if b"\x00" in chunk:
            raise NotACsv("the file contains NUL bytes: it is binary data, not CSV text")
        offset, self._offset = self._offset, self._offset + len(chunk)
        if chunk.isascii() and not self._utf8_pending:
            if self._partial_line:
                self._collect_sample(chunk)
            return  # ASCII is valid in every candidate encoding
        if self._utf8_ok:
            self._check_utf8(chunk, offset)
        if not self._utf8_ok or self._utf8_bad:
            self._collect_sample(chunk)
        if self._cp1252_ok and _CP1252_UNDEFINED.search(chunk):
            self._cp1252_ok = False

    def _check_utf8(self, chunk: bytes, offset: int) -> None:
        data = self._utf8_pending + chunk if self._utf8_pending else chunk
        base = offset - len(self._utf8_pending)
        view = memoryview(data)
        at = 0
        while True:
            try:
                text, used = codecs.utf_8_decode(view[at:], "strict", False)
            except UnicodeDecodeError as exc:
                good = view[at : at + exc.start]
                self._utf8_good += len(good) - len(codecs.utf_8_decode(good)[0])
                self._count_bad(base + at + exc.start, exc.end - exc.start)
                if self._encoding == "utf-8-sig":
                    raise NotACsv(_BAD_UTF8_AFTER_BOM) from None
                if self._utf8_bad >= _BAD_TO_GIVE_UP and not self._plausibly_utf8():
                    self._give_up_utf8()
                    return
                at += exc.end
                continue
            self._utf8_good += used - len(text)
            self._utf8_pending = bytes(view[at + used :])
            if self._utf8_bad >= _BAD_TO_JUDGE and not self._plausibly_utf8():
                self._give_up_utf8()
            return

    def _give_up_utf8(self) -> None:
        self._utf8_ok = False
        self._utf8_pending = b""

    def _count_bad(self, offset: int, count: int) -> None:
        if self._first_bad is None:
            self._first_bad = offset
        self._utf8_bad += count

    def _collect_sample(self, chunk: bytes, *, final: bool = False) -> None:
        if self._sample_size >= _SAMPLE_BYTES:
            self._partial_line = b""
            return
        # Whole lines, however the chunks split them, so that a character is never cut.
        data = self._partial_line + chunk if self._partial_line else chunk
        # Lines end at CR too: an old Mac export has no LF at all, and sampling must not wait
        # for the file's end (where only its last 64 KiB would be left to see).
        end = len(data) if final else max(data.rfind(b"\n"), data.rfind(b"\r")) + 1
        self._partial_line = data[end:][-_SAMPLE_BYTES:]
        for line in _non_ascii_lines(data, end):
            self._sample.append(line)
            self._sample_size += len(line)
            if self._sample_size >= _SAMPLE_BYTES:
                return

    def _decode_checked(self, chunk: bytes, *, final: bool) -> None:
        assert self._decoder is not None
        pending = len(self._decoder.getstate()[0])
        try:
            text = self._decoder.decode(chunk, final)
        except UnicodeDecodeError as exc:
            where = self._offset - pending + exc.start
            if self._declared is None:
                raise NotACsv(
                    "the file starts with a UTF-16 byte order mark but is not UTF-16: "
                    f"{exc.reason} at byte offset {where}"
                ) from None
            raise NotACsv(
                f"the file is not valid {self._declared} as declared: {exc.reason} "
                f"at byte offset {where}"
            ) from None
        except UnicodeError:  # utf-16/utf-32 without a BOM (the only such decoder errors)
            raise NotACsv(
                f"the file is not valid {self._declared} as declared: it does not start with "
                "the byte order mark that encoding needs (declare its -le or -be form instead)"
            ) from None
        if "\x00" in text:
            raise NotACsv("the file contains NUL characters: it is binary data, not CSV text")


# UTF-8 without asking the detector while <= 1 in _MAX_BAD_SHARE non-ASCII bytes is bad; given
# up once bad outnumber valid (from _BAD_TO_JUDGE at a chunk's end, _BAD_TO_GIVE_UP within).
_MAX_BAD_SHARE = 100
_BAD_TO_JUDGE = 64
_BAD_TO_GIVE_UP = 1024
# Below this the detector is guessing (bench/RESULTS.md): cp1252 is then the fallback.
_MIN_CONFIDENCE = 0.05
_PAIRED_EVIDENCE = 64  # bytes of sampled non-ASCII lines
_CLEAR_DOS = 0.2
_UTF8_EVIDENCE = 16  # continuation bytes: 8 two-byte characters or more
_DOS_OR_MAC = re.compile(r"cp(?:437|737|775|85\d|86\d)$|mac-")
# Enough non-ASCII lines for the detector to be as sure as it gets (bench/RESULTS.md).
_SAMPLE_BYTES = 64 * 1024
_UNFIT = re.compile("[\ufffd\x80-\x9f]")
_NON_ASCII = re.compile(rb"[\x80-\xff]")
_LINE_END = re.compile(rb"\r\n?|\n")


def _non_ascii_lines(data: bytes, end: int) -> Iterator[bytes]:
    """The lines of ``data[:end]`` holding a non-ASCII byte, with their line ends."""
    at = 0
    while found := _NON_ASCII.search(data, at, end):
        before = found.start()
        start = max(at - 1, data.rfind(b"\n", at, before), data.rfind(b"\r", at, before))
        stop = _LINE_END.search(data, found.end(), end)
        at = stop.end() if stop is not None else end
        yield data[start + 1 : at]


def invalid_bytes_message(facts: _HasInvalidBytes) -> str:
    return (
        f"strict=true: {facts.invalid_bytes} byte(s) are not valid {facts.encoding}, the first "
        f"at byte offset {facts.first_invalid_offset}; nothing was stored"
    )


class _HasInvalidBytes(Protocol):
    @property
    def encoding(self) -> str | None: ...
    @property
    def invalid_bytes(self) -> int | None: ...
    @property
    def first_invalid_offset(self) -> int | None: ...


_BAD_UTF8_AFTER_BOM = "the file starts with a UTF-8 byte order mark but is not valid UTF-8"
_NOT_TEXT = (
    "the file is not UTF-8 and no encoding was recognised in it: if it is text, declare its "
    "encoding (the file part's charset, an encoding field before the file, or tus metadata)"
)
