"""The multipart upload form, streamed part by part to storage; the checks are uploads.py's.
Fields come in any order, so the session is checked as soon as its id is known."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import re
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from aiohttp import StreamReader, web
from multipart import (
    MultipartError,
    MultipartSegment,
    ParserLimitReached,
    PushMultipartParser,
    parse_options_header,
)

from csvstore.analysis.content import clean_filename, declared_encoding
from csvstore.analysis.stream import FileFacts, UploadAnalysis
from csvstore.errors import BadRequest, UploadTooLarge, ValidationFailed
from csvstore.model import StoredFile
from csvstore.service import CsvStore, UploadWriter
from csvstore.uploads import (
    BlockPipeline,
    FreeSpace,
    UploadLimits,
    bounded,
    check_expectations,
    ensure_room,
)
from csvstore.web.body import body_chunks, refuse_unknown_coding
from csvstore.web.schemas import SESSION_ID_PATTERN, SESSION_ID_RULE, UploadOptions, load

# A form has two parts and a few options; thousands are abuse.
MAX_PARTS = 16
MAX_FIELD_BYTES = 4096
# Multipart framing around the file: a body longer than the size limit plus this is a 413.
FORM_OVERHEAD = 64 * 1024
MAX_PART_HEADERS = 8
MAX_HEADER_BYTES = 8190  # one part header line, as aiohttp allowed


@dataclass(frozen=True, slots=True)
class Uploaded:
    session_id: str  # the client's id of the session the file went into
    file: StoredFile
    duplicate: bool  # dedupe=true found the same bytes already in the session: this is them


async def receive_upload(request: web.Request, store: CsvStore, limits: UploadLimits) -> Uploaded:
    # From the raw header: request.content_type is costly (bench/RESULTS.md, issue 16).
    content_type = request.headers.get("Content-Type", "")
    media_type = content_type.partition(";")[0].strip().lower()
    if media_type != "multipart/form-data":
        raise BadRequest(
            f"expected a multipart/form-data body with 'file' and 'session_id' fields, "
            f"got {media_type or 'no content type'}"
        )
    boundary = parse_options_header(content_type)[1].get("boundary")
    if not boundary:
        raise BadRequest("malformed multipart body: the Content-Type header has no boundary")
    refuse_unknown_coding(request)
    length = request.content_length
    if length is not None and length > limits.max_upload_size + FORM_OVERHEAD:
        raise _too_large(limits)
    ensure_room(store, length or 0, limits)
    form = _Form(store, limits)
    # A body in one chunk: the insert checks the session anyway, and a refused one is cheap.
    form.check_session_early = length is None or length > limits.chunk_size
    try:
        await _read_form(request.content, boundary, limits, form)
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
        check_expectations(
            form.facts,
            digests={
                "the sha256 form field": form.options.get("sha256"),
                "the Content-Digest header": form.part_digest,
            },
            strict=bool(form.options.get("strict")),
        )
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
            await _discard(form.discard())


# Discards outliving their cancelled request: the loop holds tasks only weakly.
_DISCARDS: set[asyncio.Task[None]] = set()


async def _discard(discard: Coroutine[Any, Any, None]) -> None:
    """Run the removal of a failed upload's bytes to its end, even if cancelled meanwhile
    (halfway, it could leave a temp file, or remove it under a writing thread)."""
    task = asyncio.ensure_future(discard)
    _DISCARDS.add(task)
    task.add_done_callback(_DISCARDS.discard)
    await asyncio.shield(task)


async def _read_form(body: StreamReader, boundary: str, limits: UploadLimits, form: _Form) -> None:
    """Feed the body to the (sans-IO) multipart parser and its events to the form; it hands
    the file's bytes over uncopied (aiohttp's reader: bench/RESULTS.md, issue 16)."""
    try:
        parser = PushMultipartParser(
            boundary,
            max_header_size=MAX_HEADER_BYTES,
            max_header_count=MAX_PART_HEADERS,
            max_segment_count=MAX_PARTS,
        )
    except MultipartError as exc:
        raise BadRequest(f"malformed multipart body: {exc}") from None
    budget = limits.max_upload_size + FORM_OVERHEAD
    chunks = bounded(body_chunks(body, limits), budget, lambda: _too_large(limits))
    try:
        async with contextlib.aclosing(chunks):
            async for chunk in chunks:
                await _parse(parser, chunk, form)
                if parser.closed:
                    break
        if not parser.closed:
            await _parse(parser, b"", form)  # the body ended: the parser says what is missing
    except ParserLimitReached as exc:
        raise BadRequest(_limit_message(exc)) from None
    except MultipartError as exc:
        raise BadRequest(_malformed_message(exc)) from None


async def _parse(parser: PushMultipartParser, chunk: bytes, form: _Form) -> None:
    for event in parser.parse(chunk):
        if isinstance(event, MultipartSegment):
            await form.begin_part(event)
        elif event is None:
            await form.end_part()
        else:
            await form.part_data(event)


class _Form:
    def __init__(self, store: CsvStore, limits: UploadLimits) -> None:
        self.store = store
        self.limits = limits
        self.session_id: str | None = None
        self.session_checked = False
        self.check_session_early = True
        self.file_id: str | None = None
        self.original_filename: str | None = None
        self.writer: UploadWriter | None = None
        self.facts: FileFacts | None = None
        self.part_digest: str | None = None
        self.options: dict[str, Any] = {}
        self._part_name = ""
        self._file: _FileStream | None = None
        self._field = bytearray()

    async def begin_part(self, part: MultipartSegment) -> None:
        if part.content_type is not None and part.content_type.startswith("multipart/"):
            raise BadRequest("nested multipart bodies are not supported")
        name = self._part_name = part.name
        self._field.clear()
        if name == "file":
            if self.writer is not None:
                raise BadRequest("the form has more than one 'file' part: send one file per upload")
            self.original_filename = clean_filename(_filename_of(part))
            if self.session_id is not None and self.check_session_early:
                await self.store.require_session(self.session_id)
                self.session_checked = True
            self.part_digest = parse_content_digest(part.header("Content-Digest"))
            encoding = self._declared_encoding(part)
            self.file_id, self.writer = await self.store.begin_upload()
            self._file = _FileStream(self.writer, self.store, self.limits, encoding)
        elif name == "session_id" and self.session_id is not None:
            raise BadRequest("the form has more than one 'session_id' field")
        elif name in _OPTION_FIELDS and name in self.options:
            raise BadRequest(f"the form has more than one {name!r} field")

    async def part_data(self, data: bytes) -> None:
        if self._file is not None:
            await self._file.feed(data)
            return
        self._field += data  # unknown fields are read (bounded) and ignored
        if len(self._field) > MAX_FIELD_BYTES:
            raise BadRequest(
                f"form field {self._part_name!r} is longer than {MAX_FIELD_BYTES} bytes"
            )

    async def end_part(self) -> None:
        name = self._part_name
        if self._file is not None:
            self.facts = await self._file.finish()
            self._file = None
        elif name == "session_id":
            self.session_id = _validated_session_id(self._field_text())
            if self.writer is None and self.check_session_early:  # before a large file streams
                await self.store.require_session(self.session_id)
                self.session_checked = True
        elif name == "encoding" and self.writer is not None:
            # The bytes were checked as they streamed: a declaration after them is too late.
            raise BadRequest("the 'encoding' form field must come before the file part")
        elif name in _OPTION_FIELDS:
            self.options.update(
                load(_upload_options, {name: self._field_text()}, what=f"form field {name!r}")
            )

    async def discard(self) -> None:
        assert self.writer is not None
        try:
            if self._file is not None:  # the upload failed already: that error is the one
                with contextlib.suppress(Exception):
                    await self._file.settle()
        finally:
            await self.writer.abort()

    def _declared_encoding(self, part: MultipartSegment) -> str | None:
        charset = part.charset
        if charset is not None:
            charset = declared_encoding(charset, "the file part's Content-Type charset")
        field = self.options.get("encoding")
        if charset is not None and field is not None and charset != field:
            raise BadRequest(
                f"the file part's charset ({charset}) and the 'encoding' field ({field}) differ"
            )
        result: str | None = charset or field
        return result

    def _field_text(self) -> str:
        try:
            return self._field.decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest(f"form field {self._part_name!r} is not UTF-8 text") from None


class _FileStream:
    """The file part on its way to storage, checked, analysed and written block by block
    (uploads.BlockPipeline)."""

    def __init__(
        self,
        writer: UploadWriter,
        space: FreeSpace,
        limits: UploadLimits,
        encoding: str | None = None,
    ) -> None:
        self.writer = writer
        self.space = space
        self.limits = limits
        self.analysis = UploadAnalysis(enabled=limits.analyse, encoding=encoding)
        self.blocks = BlockPipeline(writer.write, self.analysis, lag=not writer.holds_parts)
        self.received = 0
        # Gathered to a full chunk, so each thread hop to the disk moves a large block.
        self.pending: list[bytes] = []
        self.pending_size = 0

    async def feed(self, data: bytes) -> None:
        self.received += len(data)
        if self.received > self.limits.max_upload_size:
            raise _too_large(self.limits)
        self.pending.append(data)
        self.pending_size += len(data)
        if self.pending_size >= self.limits.chunk_size:
            await self._flush()

    async def finish(self) -> FileFacts:
        if self.pending:
            await self._flush()
        await self.settle()
        return self.analysis.finish()

    async def settle(self) -> None:
        """Wait for the block in flight (also before an abort); raise what it raised."""
        await self.blocks.settle()

    async def _flush(self) -> None:
        block = self.pending[0] if len(self.pending) == 1 else b"".join(self.pending)
        self.pending = []
        self.pending_size = 0
        ensure_room(self.space, len(block), self.limits)
        await self.blocks.push(block)


_SESSION_ID = re.compile(SESSION_ID_PATTERN)
_FILENAME_STAR = re.compile(r";\s*filename\*\s*=\s*([^;\s]+)", re.IGNORECASE)
_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"')
_OPTION_FIELDS = frozenset(UploadOptions().fields)
# One member of RFC 9530's dictionary: an algorithm token and a byte sequence (RFC 8941).
_DIGEST_MEMBER = re.compile(r"(?P<name>[A-Za-z*][A-Za-z0-9_.*-]*)\s*=\s*:(?P<value>[^:]*):")
_upload_options = UploadOptions()


def parse_content_digest(header: str | None) -> str | None:
    """The SHA-256 (hex) in an RFC 9530 ``Content-Digest`` header. Other algorithms are
    ignored, as RFC 9530 allows; a member that is not ``algorithm=:base64:`` at all is a 400,
    since a client that sent a digest expects it to be checked."""
    if header is None:
        return None
    found: str | None = None
    for member in header.split(","):
        parsed = _DIGEST_MEMBER.fullmatch(member.strip())
        if parsed is None:
            raise BadRequest(
                f"malformed Content-Digest header: {member.strip()[:60]!r} is not"
                " <algorithm>=:<base64>: (e.g. sha-256=:<base64 of 32 bytes>:)"
            )
        if parsed["name"].lower() != "sha-256" or found is not None:
            continue
        try:
            digest = base64.b64decode(parsed["value"], validate=True)
        except (ValueError, binascii.Error):
            raise BadRequest(
                "malformed Content-Digest header: expected sha-256=:<base64 of 32 bytes>:"
            ) from None
        if len(digest) != 32:
            raise BadRequest(
                f"malformed Content-Digest header: a SHA-256 digest is 32 bytes, got {len(digest)}"
            )
        found = digest.hex()
    return found


def _validated_session_id(value: str) -> str:
    # The schema's rule, compiled: a schema per upload is costly (bench/RESULTS.md, issue 16).
    if _SESSION_ID.fullmatch(value) is None:
        raise ValidationFailed(
            f"invalid session_id: {SESSION_ID_RULE}", errors={"session_id": [SESSION_ID_RULE]}
        )
    return value


def _filename_of(part: MultipartSegment) -> str | None:
    # filename* (RFC 8187) when sent is the exact name; filename is taken as sent, unescaped.
    # multipart's option parser skips names with '*': filename* is read here.
    unquoted = _QUOTED.sub('""', part.header("Content-Disposition") or "")
    extended = _FILENAME_STAR.search(unquoted)
    if extended is None:
        return None if part.filename is None else str(part.filename)
    charset, _, rest = extended.group(1).partition("'")
    _language, _, encoded = rest.partition("'")
    try:
        return unquote(encoded, encoding=charset or "utf-8", errors="strict")
    except (LookupError, UnicodeDecodeError):
        raise BadRequest("the file part's filename* is not in a known encoding") from None


def _limit_message(exc: MultipartError) -> str:
    text = str(exc)
    if "segment count" in text:
        return f"the form has more than {MAX_PARTS} parts"
    if "header count" in text:
        return f"a multipart part has more than {MAX_PART_HEADERS} headers"
    if "header" in text:
        return f"a multipart part header is longer than {MAX_HEADER_BYTES} bytes"
    return f"malformed multipart body: {text}"


def _malformed_message(exc: MultipartError) -> str:
    text = str(exc)
    if "Unexpected end" in text:
        return "malformed multipart body: it ended before the closing boundary"
    if "failed to decode" in text:
        return "malformed multipart body: a part header is not UTF-8 text"
    return f"malformed multipart body: {text}"


def _missing(field: str) -> ValidationFailed:
    return ValidationFailed(
        f"missing form field {field!r}: send the CSV as 'file' and the session as 'session_id'",
        errors={field: ["Missing data for required field."]},
    )


def _too_large(limits: UploadLimits) -> UploadTooLarge:
    return UploadTooLarge(f"the file is larger than the limit of {limits.max_upload_size} bytes")
