"""``upload SESSION FILE_OR_DIR...``: stream files into a session, several at a time; how
one file's bytes travel is an ``UploadStrategy`` (multipart POST, or tus in cli/resumable)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

import aiohttp
from aiohttp.payload import AsyncIterablePayload, StringPayload
from rich.progress import Progress, TaskID
from rich.table import Table
from rich.text import Text

from csvstore.cli.http import BUSY_RETRIES, Api, CliFailure, ExitCode, busy_wait, path
from csvstore.cli.output import Output, size_text

# Per-chunk overhead vanishes; memory stays at one chunk per file and the bars move smoothly.
CHUNK_SIZE = 1024 * 1024

Advance = Callable[[int], None]


@dataclass(frozen=True, slots=True)
class Source:
    """A local file to upload, sized when it was chosen."""

    path: Path
    size: int

    @property
    def name(self) -> str:
        return self.path.name


@dataclass(frozen=True, slots=True)
class UploadOptions:
    sha256: bool = False  # send the digest so the server refuses bytes that differ
    dedupe: bool = False  # answer with the stored file if the session already has these bytes
    encoding: str | None = None  # declared to the server, which then checks instead of detecting


@dataclass(frozen=True, slots=True)
class Stored:
    """The server's answer: its FILE object, and whether it was an existing duplicate."""

    file: dict[str, Any]
    duplicate: bool


class UploadStrategy(Protocol):
    async def upload(
        self,
        api: Api,
        session_id: str,
        source: Source,
        options: UploadOptions,
        advance: Advance,
    ) -> Stored:
        """Send ``source``, calling ``advance(n)`` as bytes go out; ``CliFailure`` if refused."""
        ...


class _SizedStream(AsyncIterablePayload):
    """A streamed part whose length is known, so the whole form has a Content-Length (the
    server can refuse a too-large upload before reading it) and nothing is buffered."""

    def __init__(self, chunks: AsyncIterator[bytes], size: int, content_type: str) -> None:
        super().__init__(chunks, content_type=content_type)
        self._size = size


class _FileReader:
    """Reads an open file a chunk at a time off the event loop, hashing as it goes."""

    def __init__(self, source: Source, handle: IO[bytes], advance: Advance) -> None:
        self.source = source
        self.handle = handle
        self.advance = advance
        self.digest = hashlib.sha256()
        self.local_error: str | None = None  # why reading failed, if it did

    def _read(self, n: int) -> bytes:
        chunk = self.handle.read(n)
        self.digest.update(chunk)  # hashlib releases the GIL on large chunks
        return chunk

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        remaining = self.source.size
        while remaining > 0:
            try:
                chunk = await asyncio.to_thread(self._read, min(CHUNK_SIZE, remaining))
            except OSError as exc:
                self.local_error = f"cannot read {self.source.path}: {exc.strerror or exc}"
                raise
            if not chunk:  # shorter than when it was chosen: the Content-Length is wrong
                self.local_error = f"{self.source.path} shrank while it was being uploaded"
                raise OSError(self.local_error)
            remaining -= len(chunk)
            self.advance(len(chunk))
            yield chunk

    async def hex_digest(self) -> AsyncIterator[bytes]:
        # The form sends this part after the file, so by now every byte has been hashed.
        yield self.digest.hexdigest().encode("ascii")


def _field(name: str, value: str) -> StringPayload:
    payload = StringPayload(value, content_type="text/plain")
    payload.set_content_disposition("form-data", name=name)
    return payload


class MultipartUpload:
    """One POST of a multipart form: ``session_id`` first (so the server can refuse an
    unknown session before the file streams), then ``file``, then ``sha256`` if asked -- the
    server accepts the digest after the file, so the file is read only once."""

    async def upload(
        self,
        api: Api,
        session_id: str,
        source: Source,
        options: UploadOptions,
        advance: Advance,
    ) -> Stored:
        handle = await asyncio.to_thread(source.path.open, "rb")
        reader = _FileReader(source, handle, advance)
        chunks = reader.chunks()
        form = aiohttp.MultipartWriter("form-data")
        form.append_payload(_field("session_id", session_id))
        if options.dedupe:
            form.append_payload(_field("dedupe", "true"))
        if options.encoding:  # before the file: the server checks the bytes as they stream
            form.append_payload(_field("encoding", options.encoding))
        file_part = _SizedStream(chunks, source.size, "text/csv")
        # quote_fields=False: the name raw, as curl sends it (the server does not percent-decode)
        file_part.set_content_disposition(
            "form-data", quote_fields=False, name="file", filename=source.name
        )
        form.append_payload(file_part)
        if options.sha256:
            digest_part = _SizedStream(reader.hex_digest(), 64, "text/plain")
            digest_part.set_content_disposition("form-data", name="sha256")
            form.append_payload(digest_part)
        try:
            async with api.request("POST", api.url(path("upload")), data=form) as response:
                body = await response.json()
                status = response.status
        except CliFailure:
            if reader.local_error is not None:  # not the server's fault nor the network's
                raise CliFailure(ExitCode.USAGE, reader.local_error) from None
            raise
        finally:
            # After a dropped connection aiohttp's body writer may still be inside the
            # generator; it is then closed when that writer is collected.
            with contextlib.suppress(RuntimeError):
                await chunks.aclose()
            await asyncio.to_thread(handle.close)
        return Stored(file=body["file"], duplicate=status == 200)


@dataclass(slots=True)
class Outcome:
    source: Source
    stored: Stored | None = None
    failure: CliFailure | None = None
    skipped: bool = False  # the session held these bytes already: not sent

    @property
    def status(self) -> str:
        if self.failure is not None:
            return "refused" if self.failure.exit_code == ExitCode.REFUSED else "failed"
        if self.skipped:
            return "skipped"
        assert self.stored is not None
        return "duplicate" if self.stored.duplicate else "stored"

    def as_json(self) -> dict[str, Any]:
        return {
            "path": str(self.source.path),
            "size": self.source.size,
            "status": self.status,
            "file": self.stored.file if self.stored else None,
            "error": self.failure.as_json() if self.failure else None,
        }


def _sha256_of(file_path: Path) -> str:
    digest = hashlib.sha256()
    with file_path.open("rb") as handle:
        while chunk := handle.read(CHUNK_SIZE):
            digest.update(chunk)
    return digest.hexdigest()


async def already_held(
    sources: Sequence[Source], session_files: Sequence[dict[str, Any]], parallel: int
) -> dict[Path, dict[str, Any]]:
    """The sources whose SHA-256 a file of the session already has, with that file."""
    by_digest = {str(f["sha256"]): f for f in session_files if f.get("sha256")}
    if not by_digest:
        return {}
    sizes = {int(f["file_size"]) for f in by_digest.values()}
    limit = asyncio.Semaphore(parallel)
    held: dict[Path, dict[str, Any]] = {}

    async def check(source: Source) -> None:
        if source.size not in sizes:  # no need to read it: no file of that size is held
            return
        async with limit:
            try:
                digest = await asyncio.to_thread(_sha256_of, source.path)
            except OSError:
                return
        if digest in by_digest:
            held[source.path] = by_digest[digest]

    await asyncio.gather(*(check(source) for source in sources))
    return held


def collect_sources(arguments: Sequence[str]) -> list[Source]:
    """Files as given, and every ``*.csv`` (any case) directly inside each folder given, sorted;
    each file once. A path that is neither is a usage error."""
    chosen: dict[Path, Source] = {}
    for argument in arguments:
        given = Path(argument)
        if given.is_dir():
            paths = sorted(p for p in given.iterdir() if p.suffix.lower() == ".csv" and p.is_file())
            if not paths:
                raise CliFailure(ExitCode.USAGE, f"no *.csv files in the folder {argument}")
        elif given.is_file():
            paths = [given]
        else:
            raise CliFailure(ExitCode.USAGE, f"no such file or folder: {argument}")
        for p in paths:
            try:
                chosen.setdefault(p.resolve(), Source(p, p.stat().st_size))
            except OSError as exc:
                raise CliFailure(ExitCode.USAGE, f"cannot read {p}: {exc.strerror}") from None
    return list(chosen.values())


@dataclass(slots=True)
class _Bars:
    progress: Progress
    overall: TaskID
    total_files: int
    done_files: int = 0
    per_file: dict[Path, TaskID] = field(default_factory=dict)

    def describe_overall(self) -> str:
        return f"total ({self.done_files}/{self.total_files} files)"


async def upload_all(
    api: Api,
    session_id: str,
    sources: Sequence[Source],
    *,
    options: UploadOptions,
    parallel: int,
    out: Output,
    strategy: UploadStrategy | None = None,
    held: dict[Path, dict[str, Any]] | None = None,
) -> list[Outcome]:
    """Upload every source not ``held``, ``parallel`` at a time; one outcome each, in order."""
    strategy = strategy or MultipartUpload()
    held = held or {}
    outcomes = [
        Outcome(source, Stored(held[source.path], duplicate=True), skipped=True)
        if source.path in held
        else Outcome(source)
        for source in sources
    ]
    queue: asyncio.Queue[Outcome] = asyncio.Queue()
    for outcome in outcomes:
        if not outcome.skipped:
            queue.put_nowait(outcome)
    sources = [outcome.source for outcome in outcomes if not outcome.skipped]

    with out.progress() as progress:
        bars = _Bars(
            progress,
            progress.add_task("", total=sum(s.size for s in sources)),
            total_files=len(sources),
        )
        progress.update(bars.overall, description=bars.describe_overall())

        async def one(outcome: Outcome) -> None:
            source = outcome.source
            task = progress.add_task(source.name, total=source.size)
            sent = 0

            def advance(n: int) -> None:
                nonlocal sent
                sent += n
                progress.advance(task, n)
                progress.advance(bars.overall, n)

            try:
                for attempt in range(BUSY_RETRIES + 1):
                    try:
                        outcome.stored = await strategy.upload(
                            api, session_id, source, options, advance
                        )
                        break
                    except CliFailure as failure:
                        # The server's rate or concurrency limit: wait, then the file again.
                        if failure.status != 429 or attempt == BUSY_RETRIES:
                            raise
                        progress.advance(bars.overall, -sent)
                        progress.reset(task, total=source.size)
                        sent = 0
                        await asyncio.sleep(busy_wait(failure.headers, attempt))
            except CliFailure as failure:
                outcome.failure = failure
            except OSError as exc:
                outcome.failure = CliFailure(
                    ExitCode.USAGE, f"cannot read {source.path}: {exc.strerror or exc}"
                )
            # a file that failed part way still counts as done for the overall bar
            progress.advance(bars.overall, source.size - sent)
            progress.remove_task(task)
            bars.done_files += 1
            progress.update(bars.overall, description=bars.describe_overall())

        async def worker() -> None:
            while not queue.empty():
                await one(queue.get_nowait())

        await asyncio.gather(*(worker() for _ in range(min(parallel, len(sources)))))
    return outcomes


def summary_table(outcomes: Sequence[Outcome]) -> Table:
    table = Table("file", "size", "rows", "status", box=None)
    table.columns[1].justify = "right"
    table.columns[2].justify = "right"
    for outcome in outcomes:
        rows = outcome.stored.file.get("row_count") if outcome.stored else None
        if outcome.failure is not None:
            status = Text(f"{outcome.status}: {outcome.failure.detail}", style="red")
        elif outcome.skipped:
            assert outcome.stored is not None
            status = Text(f"skipped: already in the session as {outcome.stored.file['id']}")
        elif outcome.stored is not None and outcome.stored.duplicate:
            duplicate_of = outcome.stored.file.get("duplicate_of") or outcome.stored.file["id"]
            status = Text(f"duplicate of {duplicate_of}", style="yellow")
        else:
            assert outcome.stored is not None
            status = Text(f"stored {outcome.stored.file['id']}", style="green")
        table.add_row(
            Text(str(outcome.source.path)),
            size_text(outcome.source.size),
            "-" if rows is None else str(rows),
            status,
        )
    sent = [o for o in outcomes if o.failure is None and not o.skipped]
    skipped = sum(o.skipped for o in outcomes)
    table.add_section()
    table.add_row(
        Text(
            f"{len(sent)} of {len(outcomes)} uploaded"
            + (f", {skipped} skipped (already in the session)" if skipped else "")
        ),
        size_text(sum(o.source.size for o in sent)),
        str(sum(int(o.stored.file.get("row_count") or 0) for o in sent if o.stored)),
        "",
    )
    return table
