"""Receiving an upload: the multipart form, streamed part by part, straight to storage.

The body is never held whole: the ``file`` part is read in large chunks, each checked
(size limit, CSV content) and written to a temporary object before the next is read. The
form fields may come in any order -- ``requests`` sends ``session_id`` first, ``curl -F
file=@x -F session_id=s`` sends it last -- so the session is checked as soon as its id is
known: before the file streams when it comes first, before publishing when it comes last.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
from aiohttp import BodyPartReader, MultipartReader, web
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong

from csvstore.analysis import FileFacts, UploadAnalysis
from csvstore.csvcheck import clean_filename
from csvstore.db import Row
from csvstore.errors import (
    BadRequest,
    ClientGone,
    InsufficientStorage,
    PayloadTooLarge,
    RequestTimeout,
    ValidationFailed,
)
from csvstore.schemas import SESSION_ID_PATTERN, SESSION_ID_RULE, UploadOptions, load
from csvstore.service import CsvStore
from csvstore.storage import Storage, StorageWriter

T = TypeVar("T")

# A form has two parts; a few more (options such as a digest) are fine. Thousands are abuse.
MAX_PARTS = 16
# Text fields are ids and options: anything longer is not a value we would accept.
MAX_FIELD_BYTES = 4096
# Multipart framing around the file: boundaries and part headers. Used only to refuse a
# Content-Length that could not possibly fit under the size limit before reading any of it.
FORM_OVERHEAD = 64 * 1024


@dataclass(frozen=True, slots=True)
class UploadLimits:
    max_upload_size: int
    chunk_size: int
    read_timeout: float
    analyse: bool = True  # hash and profile while streaming (off only to benchmark the cost)
    min_free_space: int = 0  # refuse (507) rather than leave less than this on the disk


@dataclass(frozen=True, slots=True)
class Uploaded:
    session_id: str  # the client's id of the session the file went into
    file: Row
    duplicate: bool  # dedupe=true found the same bytes already in the session: this is them


class _Form:
    """What has been read of the form so far."""

    def __init__(self) -> None:
        self.session_id: str | None = None
        self.session_checked = False
        self.check_session_early = True
        self.file_id: str | None = None
        self.original_filename: str | None = None
        self.writer: StorageWriter | None = None
        self.facts: FileFacts | None = None
        self.part_digest: str | None = None  # from the file part's Content-Digest header
        self.options: dict[str, Any] = {}  # sha256, strict, dedupe form fields


async def receive_upload(request: web.Request, store: CsvStore, limits: UploadLimits) -> Uploaded:
    # The media type from the raw header: aiohttp's request.content_type parses it with the
    # email package, which cost a fifth of a small upload's CPU on the event loop.
    media_type = request.headers.get("Content-Type", "").partition(";")[0].strip().lower()
    if media_type != "multipart/form-data":
        raise BadRequest(
            f"expected a multipart/form-data body with 'file' and 'session_id' fields, "
            f"got {media_type or 'no content type'}"
        )
    length = request.content_length
    if length is not None and length > limits.max_upload_size + FORM_OVERHEAD:
        raise _too_large(limits)
    try:
        reader = await request.multipart()
    except (ValueError, AssertionError, KeyError) as exc:
        raise BadRequest("malformed multipart body: the boundary is missing or invalid") from exc

    _ensure_room(store.storage, length or 0, limits)
    form = _Form()
    # For a body that fits in one chunk, looking the session up first costs more than it
    # saves: the insert checks it anyway, and a refused small file is cheap to remove.
    form.check_session_early = length is None or length > limits.chunk_size
    try:
        await _read_form(reader, store, limits, form)
        writer = form.writer
        if writer is None:
            raise _missing("file")
        if form.session_id is None:
            raise _missing("session_id")
        if form.check_session_early and not form.session_checked:
            await store.require_session(form.session_id)
        assert form.file_id is not None
        assert form.original_filename is not None
        assert form.facts is not None
        _check_expectations(form, form.facts)
        form.writer = None  # publish_upload owns it now, and removes it on failure
        published = await store.publish_upload(
            writer,
            file_id=form.file_id,
            session_id=form.session_id,
            original_filename=form.original_filename,
            facts=form.facts,
            dedupe=bool(form.options.get("dedupe")),
        )
        return Uploaded(form.session_id, published.file, published.duplicate)
    finally:
        if form.writer is not None:
            await form.writer.abort()


async def _read_form(
    reader: MultipartReader, store: CsvStore, limits: UploadLimits, form: _Form
) -> None:
    for _ in range(MAX_PARTS):
        part = await _guarded(reader.next(), limits)
        if part is None:
            return
        if not isinstance(part, BodyPartReader):
            raise BadRequest("nested multipart bodies are not supported")
        if part.name == "file":
            if form.writer is not None:
                raise BadRequest("the form has more than one 'file' part: send one file per upload")
            form.original_filename = clean_filename(part.filename)
            if form.session_id is not None and form.check_session_early:
                await store.require_session(form.session_id)
                form.session_checked = True
            form.part_digest = parse_content_digest(part.headers.get("Content-Digest"))
            form.file_id, key = store.new_file_key()
            form.writer = await store.storage.begin(key)
            form.facts = await _stream_file(part, form.writer, store.storage, limits)
        elif part.name == "session_id":
            if form.session_id is not None:
                raise BadRequest("the form has more than one 'session_id' field")
            form.session_id = _validated_session_id(await _read_field(part, limits))
            if form.writer is None and form.check_session_early:  # before a large file streams
                await store.require_session(form.session_id)
                form.session_checked = True
        elif part.name in _OPTION_FIELDS:
            if part.name in form.options:
                raise BadRequest(f"the form has more than one {part.name!r} field")
            value = await _read_field(part, limits)
            form.options.update(
                load(_upload_options, {part.name: value}, what=f"form field {part.name!r}")
            )
        else:
            await _read_field(part, limits)  # unknown fields are read and ignored
    raise BadRequest(f"the form has more than {MAX_PARTS} parts")


async def _stream_file(
    part: BodyPartReader, writer: StorageWriter, storage: Storage, limits: UploadLimits
) -> FileFacts:
    analysis = UploadAnalysis(enabled=limits.analyse)
    received = 0
    pending: list[bytes] = []
    pending_size = 0
    while True:
        chunk = await _guarded(part.read_chunk(limits.chunk_size), limits)
        if chunk:
            received += len(chunk)
            if received > limits.max_upload_size:
                raise _too_large(limits)
            pending.append(chunk)
            pending_size += len(chunk)
        # The network hands over whatever has arrived (often 64 KiB); gather a full chunk
        # before writing so each thread hop to the disk moves a large block.
        if pending and (pending_size >= limits.chunk_size or not chunk):
            block = pending[0] if len(pending) == 1 else b"".join(pending)
            _ensure_room(storage, len(block), limits)
            await _take_block(block, analysis, writer)
            pending.clear()
            pending_size = 0
        if not chunk:
            break
    return analysis.finish()


# Below this a block is checked, hashed and written one after the other: thread hops would
# cost more than the overlap saves.
_OVERLAP_MIN = 256 * 1024


async def _take_block(block: bytes, analysis: UploadAnalysis, writer: StorageWriter) -> None:
    """Check, profile, hash and write one block.

    For large blocks the three overlap: the write and the hash run in worker threads (both
    release the GIL) while the check and the profile run here. A block that fails the check
    may then reach the temp file; the caller aborts the writer, so it never stays.
    """
    if len(block) < _OVERLAP_MIN:
        analysis.feed(block)  # refuses a non-CSV block before any of it is written
        await writer.write(block)
        return
    write = asyncio.ensure_future(writer.write(block))
    digest = asyncio.ensure_future(asyncio.to_thread(analysis.digest, block))
    try:
        analysis.inspect(block)
    finally:
        outcomes = await asyncio.gather(write, digest, return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome


_SESSION_ID = re.compile(SESSION_ID_PATTERN)
_OPTION_FIELDS = frozenset(UploadOptions().fields)
_upload_options = UploadOptions()


def parse_content_digest(header: str | None) -> str | None:
    """The SHA-256 (hex) in an RFC 9530 ``Content-Digest`` header, if it carries one.

    Other algorithms are ignored, as the RFC allows; a malformed sha-256 value is a 400.
    """
    if header is None:
        return None
    for member in header.split(","):
        name, _, value = member.strip().partition("=")
        if name.strip().lower() != "sha-256":
            continue
        value = value.strip()
        try:
            if not (value.startswith(":") and value.endswith(":") and len(value) > 2):
                raise ValueError
            digest = base64.b64decode(value[1:-1], validate=True)
        except (ValueError, binascii.Error):
            raise BadRequest(
                "malformed Content-Digest header: expected sha-256=:<base64 of 32 bytes>:"
            ) from None
        if len(digest) != 32:
            raise BadRequest(
                f"malformed Content-Digest header: a SHA-256 digest is 32 bytes, got {len(digest)}"
            )
        return digest.hex()
    return None


def _ensure_room(storage: Storage, incoming: int, limits: UploadLimits) -> None:
    """507 before the disk is full: keep ``min_free_space`` free after ``incoming`` more bytes.

    statvfs is a single cheap system call, so it runs inline rather than in a thread.
    """
    if not limits.min_free_space:
        return
    free = storage.free_bytes()
    if free is not None and free - incoming < limits.min_free_space:
        raise InsufficientStorage(
            f"not enough free disk space on the server: {free} bytes free, "
            f"{limits.min_free_space} must stay free; try again later or upload less"
        )


def _check_expectations(form: _Form, facts: FileFacts) -> None:
    """The client's digests and strictness, checked before anything is published."""
    expected = {
        "the sha256 form field": form.options.get("sha256"),
        "the Content-Digest header": form.part_digest,
    }
    for source, digest in expected.items():
        if digest is None:
            continue
        if facts.sha256 is None:
            raise BadRequest("digest checks need the server's hashing, which is switched off")
        if digest != facts.sha256:
            raise BadRequest(
                f"sha256 mismatch: {source} says {digest} but the received file has "
                f"{facts.sha256}; nothing was stored"
            )
    if form.options.get("strict") and facts.ragged_rows:
        raise BadRequest(
            f"strict=true: {facts.ragged_rows} row(s) have a different number of fields than "
            f"the header's {facts.column_count}; nothing was stored"
        )


async def _read_field(part: BodyPartReader, limits: UploadLimits) -> str:
    data = bytearray()
    while chunk := await _guarded(part.read_chunk(MAX_FIELD_BYTES), limits):
        data += chunk
        if len(data) > MAX_FIELD_BYTES:
            raise BadRequest(f"form field {part.name!r} is longer than {MAX_FIELD_BYTES} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest(f"form field {part.name!r} is not UTF-8 text") from None


def _validated_session_id(value: str) -> str:
    # The schema's own rule, as a compiled pattern: building a schema per upload cost ~8 %
    # of a small upload's CPU.
    if _SESSION_ID.fullmatch(value) is None:
        raise ValidationFailed(
            f"invalid session_id: {SESSION_ID_RULE}", errors={"session_id": [SESSION_ID_RULE]}
        )
    return value


async def _guarded(awaitable: Awaitable[T], limits: UploadLimits) -> T:
    """Await one read of the body, bounded in time; map transport failures to our errors."""
    try:
        async with asyncio.timeout(limits.read_timeout):
            return await awaitable
    except TimeoutError:
        raise RequestTimeout(
            f"the request body stalled: nothing arrived for {limits.read_timeout:g} seconds"
        ) from None
    except LineTooLong as exc:
        raise BadRequest(
            f"a multipart part header is longer than {exc.args[-1] if exc.args else 8190} bytes"
        ) from None
    except HttpProcessingError as exc:
        raise BadRequest(f"malformed multipart body: {exc.message}") from None
    except (aiohttp.ClientError, ConnectionError, asyncio.IncompleteReadError) as exc:
        raise ClientGone() from exc
    except ValueError as exc:
        raise BadRequest("malformed multipart body: a part is truncated or badly framed") from exc


def _missing(field: str) -> ValidationFailed:
    return ValidationFailed(
        f"missing form field {field!r}: send the CSV as 'file' and the session as 'session_id'",
        errors={field: ["Missing data for required field."]},
    )


def _too_large(limits: UploadLimits) -> PayloadTooLarge:
    return PayloadTooLarge(f"the file is larger than the limit of {limits.max_upload_size} bytes")
