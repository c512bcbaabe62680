"""Sending stored files back, streamed through the service: conditional requests (the ETag
is the SHA-256: strong, the same on every server), byte ranges, names, ZIP archives."""

from __future__ import annotations

import re
import stat
import zlib
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import formatdate, parsedate_to_datetime
from typing import Any
from urllib.parse import quote

from aiohttp import web
from anyascii import anyascii
from stream_zip import ZIP_64, async_stream_zip

from csvstore.errors import PreconditionFailed, RangeNotSatisfiable, StoredFileUnavailable
from csvstore.model import Session, StoredFile
from csvstore.service import CsvStore
from csvstore.web.problems import start_response

# Python codec names (as stored) to the IANA charset names HTTP clients know.
_CHARSETS = {
    "utf-8-sig": "utf-8",
    "cp932": "ms932",  # a label browsers and Python both know (Python lacks windows-31j)
    "shift_jis": "shift_jis",
    "cp936": "gbk",
    "cp949": "euc-kr",
    "cp950": "big5",
    "mac-roman": "macintosh",
    "ascii": "us-ascii",
}
_WINDOWS_CODE_PAGE = re.compile(r"\Acp(125[0-8]|874)\Z")
_IBM_CODE_PAGE = re.compile(r"\Acp([0-9]{3,4})\Z")
_ISO_8859 = re.compile(r"\Aiso8859-([0-9]+)\Z")


def charset_of(encoding: str | None) -> str | None:
    """The charset parameter for a file recorded in `encoding` (None: not known)."""
    if not encoding:
        return None
    if encoding in _CHARSETS:
        return _CHARSETS[encoding]
    if match := _WINDOWS_CODE_PAGE.match(encoding):
        return f"windows-{match[1]}"
    if match := _IBM_CODE_PAGE.match(encoding):
        return f"ibm{match[1]}"
    if match := _ISO_8859.match(encoding):
        return f"iso-8859-{match[1]}"
    return encoding.replace("_", "-")


_RANGE = re.compile(r"\Abytes=([0-9]*)-([0-9]*)\Z")


@dataclass(frozen=True, slots=True)
class ByteRange:
    start: int
    end: int  # inclusive, as in Content-Range

    @property
    def length(self) -> int:
        return self.end - self.start + 1


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """The one range a ``Range`` header asks for, or None to send the whole file (also for
    several ranges or another unit, as RFC 9110 allows); a valid range outside it raises."""
    if not header or size == 0:
        return None
    match = _RANGE.match(header.strip())
    if match is None:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:
        suffix = int(last)
        if suffix == 0:
            raise _unsatisfiable(header, size)
        return ByteRange(max(0, size - suffix), size - 1)
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if last and int(last) < start:  # invalid (RFC 9110 14.1.1); refused as nginx does
        raise _unsatisfiable(header, size, f"ends before it starts (the file is {size} bytes long)")
    if start >= size:
        raise _unsatisfiable(header, size)
    return ByteRange(start, end)


def _unsatisfiable(header: str, size: int, why: str = "") -> RangeNotSatisfiable:
    return RangeNotSatisfiable(
        f"range {header!r} {why or f'is outside the file, which is {size} bytes long'}",
        headers={"Content-Range": f"bytes */{size}"},
    )


def etag_of(file: StoredFile) -> str | None:
    return f'"{file.sha256}"' if file.sha256 else None


def _etag_matches(header: str, etag: str, *, weak: bool = True) -> bool:
    candidates = [tag.strip() for tag in header.split(",")]
    if weak:
        candidates = [tag.removeprefix("W/") for tag in candidates]
    return "*" in candidates or etag in candidates


_NOT_IN_FALLBACK = re.compile(r'[^\x20-\x7e]|["\\%/<>:|?*]')


def content_disposition(original_filename: str, disposition: str = "attachment") -> str:
    """RFC 6266: an ASCII fallback and the exact name in ``filename*`` (RFC 8187)."""
    # Transliterated (Λεωνίδας.csv -> Leonidas.csv) for clients that ignore filename*, curl -OJ;
    # no '/' (½ -> 1/2), nor what Windows refuses in a name (😀 -> :grinning:).
    fallback = _windows_safe(anyascii(original_filename), _NOT_IN_FALLBACK)
    return f"{disposition}; filename=\"{fallback}\"; filename*=UTF-8''{quote(original_filename)}"


def _modified_at(file: StoredFile) -> datetime:
    created = datetime.strptime(file.created_at, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    return created.replace(microsecond=0)  # HTTP dates have whole seconds


def _http_date(header: str | None) -> datetime | None:
    """An HTTP-date header's value, or None when absent or not a date (then ignored, as
    RFC 9110 says of an invalid one)."""
    if not header:
        return None
    try:
        parsed = parsedate_to_datetime(header)
    except (TypeError, ValueError, IndexError):
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _check_preconditions(request: web.Request, etag: str | None, modified: datetime) -> bool:
    """RFC 9110 section 13.2.2, for a stored file (which never changes): False for a 304;
    a failed If-Match or If-Unmodified-Since is a 412."""
    if_match = request.headers.get("If-Match")
    if if_match is not None:
        if not (etag and _etag_matches(if_match, etag, weak=False)) and if_match.strip() != "*":
            raise PreconditionFailed(f"If-Match: the file's ETag is {etag}")
    else:
        unmodified_since = _http_date(request.headers.get("If-Unmodified-Since"))
        if unmodified_since is not None and modified > unmodified_since:
            raise PreconditionFailed("If-Unmodified-Since: the file was stored after that date")
    if_none_match = request.headers.get("If-None-Match")
    if if_none_match is not None:
        return not (etag and _etag_matches(if_none_match, etag))
    modified_since = _http_date(request.headers.get("If-Modified-Since"))
    return modified_since is None or modified > modified_since


async def send_file(request: web.Request, store: CsvStore, file: StoredFile) -> web.StreamResponse:
    size = file.file_size
    etag = etag_of(file)
    modified = _modified_at(file)
    charset = charset_of(file.encoding)
    headers = {
        "Content-Type": f"text/csv; charset={charset}" if charset else "text/csv",
        "Content-Disposition": content_disposition(file.original_filename),
        "Accept-Ranges": "bytes",
        "Last-Modified": formatdate(modified.timestamp(), usegmt=True),
    }
    if etag:
        headers["ETag"] = etag
    if not _check_preconditions(request, etag, modified):
        kept: dict[str, str] = {k: headers[k] for k in ("ETag", "Last-Modified") if k in headers}
        return web.Response(status=304, headers=kept)
    requested = request.headers.get("Range")
    if_range = request.headers.get("If-Range")
    if if_range is not None and not (if_range.strip() == etag or _http_date(if_range) == modified):
        requested = None  # the client's copy is stale: send the whole current file
    byte_range = parse_range(requested, size)

    response = web.StreamResponse(headers=headers)
    if byte_range is None:
        start, length = 0, size
    else:
        response.set_status(206)
        response.headers["Content-Range"] = f"bytes {byte_range.start}-{byte_range.end}/{size}"
        start, length = byte_range.start, byte_range.length
    response.content_length = length
    # What can fail before the first byte fails here, while a problem can still be sent.
    stored = await store.stored_size(file)
    if stored != size:
        raise _unavailable(file, stored)
    if request.method == "HEAD":
        await start_response(request, response)
        await response.write_eof()
        return response
    chunks = store.open_file_bytes(file, start, length)
    try:
        try:
            chunk = await anext(chunks, b"")
        except FileNotFoundError:
            raise _unavailable(file, None) from None
        await start_response(request, response)
        sent = 0
        while chunk:
            sent += len(chunk)
            await response.write(chunk)
            chunk = await anext(chunks, b"")
        if sent != length:  # shrunk since the stat: the connection must not wait for more
            raise OSError(f"stored file {file.id} ended {length - sent} bytes early")
    finally:
        closer = getattr(chunks, "aclose", None)
        if closer is not None:
            await closer()
    await response.write_eof()
    return response


def _unavailable(file: StoredFile, stored: int | None) -> StoredFileUnavailable:
    found = "are missing" if stored is None else f"are {stored} bytes long"
    return StoredFileUnavailable(
        f"the stored bytes of file {file.id} {found}, not the {file.file_size} bytes "
        "recorded: the file cannot be sent"
    )


def _deflate() -> Any:
    # zlib's default level: CSV shrinks several times at a fraction of level 9's CPU.
    return zlib.compressobj(wbits=-zlib.MAX_WBITS, level=6)


_WINDOWS_REFUSES = re.compile(r'[<>:"|?*\\\x00-\x1f]')


# Device names Windows refuses as a file name, whatever the extension (CON.csv).
_WINDOWS_DEVICES = frozenset(
    ["CON", "PRN", "AUX", "NUL"] + [f"{d}{i}" for d in ("COM", "LPT") for i in range(1, 10)]
)


def _windows_safe(name: str, refused: re.Pattern[str]) -> str:
    name = refused.sub("_", name)
    if name.partition(".")[0].strip().upper() in _WINDOWS_DEVICES:
        name = "_" + name
    return name


def _entry_name(original_filename: str) -> str:
    """An entry name every unzip can write: what Windows refuses in a name becomes ``_``
    (``10:30.csv`` -> ``10_30.csv``), a device name gets one in front (``_CON.csv``); other
    characters, non-ASCII ones too, stay."""
    return _windows_safe(original_filename, _WINDOWS_REFUSES)


def unique_names(names: Iterable[str]) -> list[str]:
    """Archive entry names: the original names, with `` (1)``, `` (2)`` before the extension
    where two files share one (``x.csv``, ``x (1).csv``; ``.csv``, ``(1).csv``)."""
    seen: set[str] = set()
    result = []
    for name in names:
        candidate, n = name, 0
        folder, slash, base = name.rpartition("/")
        stem, dot, extension = base.rpartition(".")
        if not dot:
            stem, extension = base, ""
        while candidate.lower() in seen:
            n += 1
            numbered = f"{stem} ({n})".lstrip()
            candidate = f"{folder}{slash}{numbered}{dot}{extension}"
        seen.add(candidate.lower())
        result.append(candidate)
    return result


async def send_archive(
    request: web.Request, store: CsvStore, session: Session
) -> web.StreamResponse:
    """The session's files as one ZIP, built while it is sent (nothing assembled first)."""
    files = session.csv_files or ()
    names = unique_names(_entry_name(f.original_filename) for f in files)

    async def members() -> AsyncIterator[Any]:
        for file, name in zip(files, names, strict=True):
            modified = datetime.strptime(file.created_at, "%Y-%m-%dT%H:%M:%S.%fZ")
            yield (
                name,
                modified,
                stat.S_IFREG | 0o644,
                ZIP_64,
                _exactly(store.open_file_bytes(file), file),
            )

    response = web.StreamResponse(
        headers={
            "Content-Type": "application/zip",
            "Content-Disposition": content_disposition(f"{session.session_id}.zip"),
        }
    )
    await start_response(request, response)  # from here an error leaves the ZIP unfinished
    if request.method != "HEAD":
        async for chunk in async_stream_zip(members(), get_compressobj=_deflate):
            await response.write(chunk)
    await response.write_eof()
    return response


async def _exactly(chunks: AsyncIterator[bytes], file: StoredFile) -> AsyncIterator[bytes]:
    """A member's bytes, raising if they are not the recorded size (a file gone or cut)."""
    sent = 0
    try:
        async for chunk in chunks:
            sent += len(chunk)
            yield chunk
    except FileNotFoundError:
        raise _unavailable(file, None) from None
    finally:
        closer = getattr(chunks, "aclose", None)
        if closer is not None:
            await closer()
    if sent != file.file_size:
        raise _unavailable(file, sent)
