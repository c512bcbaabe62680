"""Resumable uploads from the command line: the tus 1.0 protocol as an ``UploadStrategy``.

A file is created on the server (``POST /api/csv/tus/``) and sent in PATCHes of
``PATCH_SIZE``. When a PATCH fails on the way -- the connection drops, the server restarts,
answers 5xx, 409 (another offset), 423 (busy) or 460 (the bytes arrived damaged) -- the
client asks where the upload stands (HEAD) and goes on from there, a few times with a
growing pause. What the server refused (400 not a CSV, 404, 413) is reported at once.

Files from ``RESUMABLE_FROM`` bytes up go this way by default (``--no-resume`` turns it
off); smaller ones are one multipart POST, which costs one request instead of three and
loses little when it has to be sent again.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from typing import IO

from csvstore.cli.http import Api, CliFailure, ExitCode
from csvstore.cli.upload import (
    Advance,
    MultipartUpload,
    Source,
    Stored,
    UploadOptions,
    UploadStrategy,
)

TUS_PATH = "/api/csv/tus/"
TUS = {"Tus-Resumable": "1.0.0"}
OFFSET_STREAM = "application/offset+octet-stream"
# 8 MiB: below it a dropped upload is cheap to send again whole.
RESUMABLE_FROM = 8 * 1024 * 1024
# One PATCH per 8 MiB: memory per file in flight stays at one PATCH, and the server's answer
# to each moves the progress bar.
PATCH_SIZE = 8 * 1024 * 1024
# Failures in a row (no progress in between) before giving up, pausing 1, 2, 3 ... seconds
# (or the server's Retry-After, when longer).
ATTEMPTS = 8
# A 423 is another request holding the upload: on S3, possibly a dead process's lease,
# which blocks it for up to --tus-lease seconds (30 by default; Retry-After says how long
# is left). 423s are waited out for this long in all, apart from the attempts above.
LOCKED_PATIENCE = 120.0
_RETRY_STATUSES = frozenset({409, 423, 460})


def _metadata(values: dict[str, str]) -> str:
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in values.items())


def _retryable(failure: CliFailure) -> bool:
    if failure.status is None:  # the connection failed: no answer at all
        return True
    return failure.status in _RETRY_STATUSES or (failure.status >= 500 and failure.status != 507)


class TusUpload:
    """One tus upload per file; see the module docstring."""

    def __init__(
        self,
        *,
        patch_size: int = PATCH_SIZE,
        attempts: int = ATTEMPTS,
        pause: float = 1.0,
        locked_patience: float = LOCKED_PATIENCE,
    ) -> None:
        self.patch_size = patch_size
        self.attempts = attempts
        self.pause = pause
        self.locked_patience = locked_patience

    async def upload(
        self,
        api: Api,
        session_id: str,
        source: Source,
        options: UploadOptions,
        advance: Advance,
    ) -> Stored:
        values = {"session_id": session_id, "filename": source.name}
        existing: set[str] = set()
        if options.encoding:
            values["encoding"] = options.encoding
        if options.dedupe:
            values["dedupe"] = "true"
            # The session's files before this upload: if the server answers with one of
            # them, it was a duplicate. (Comparing timestamps with the Date header, which has
            # whole seconds only, misreported a duplicate made within the same second.)
            session = await api.call("GET", f"/api/csv/sessions/{session_id}")
            existing = {str(f["id"]) for f in session["csv_files"]}
        created_headers = {
            **TUS,
            "Upload-Length": str(source.size),
            "Upload-Metadata": _metadata(values),
        }
        async with api.request("POST", api.url(TUS_PATH), headers=created_headers) as response:
            upload_url = api.url(response.headers["Location"])
            file_location = response.headers.get("Content-Location")  # an empty file is done
        handle = await asyncio.to_thread(source.path.open, "rb")
        try:
            if file_location is None:
                file_location = await self._send(api, upload_url, handle, source, options, advance)
        finally:
            await asyncio.to_thread(handle.close)
        file = await api.call("GET", file_location)
        return Stored(file=file, duplicate=str(file["id"]) in existing)

    async def _send(
        self,
        api: Api,
        url: str,
        handle: IO[bytes],
        source: Source,
        options: UploadOptions,
        advance: Advance,
    ) -> str:
        """PATCH until the server has every byte; the stored file's path."""
        offset = reported = failures = 0
        locked_for = 0.0  # seconds waited on 423s
        while True:
            size = min(self.patch_size, source.size - offset)
            chunk = await asyncio.to_thread(_read_at, handle, offset, size)
            headers = {**TUS, "Upload-Offset": str(offset), "Content-Type": OFFSET_STREAM}
            if options.sha256:
                digest = base64.b64encode(hashlib.sha256(chunk).digest()).decode()
                headers["Upload-Checksum"] = f"sha256 {digest}"
            try:
                async with api.request("PATCH", url, data=chunk, headers=headers) as response:
                    offset = int(response.headers["Upload-Offset"])
                    done = response.headers.get("Content-Location")
                failures = 0
            except CliFailure as failure:
                stored_at = failure.headers.get("Content-Location")
                if failure.status == 409 and stored_at:
                    # "complete": an earlier PATCH whose answer was lost (or the server's
                    # recovery after a crash) stored the file; the 409 says where.
                    advance(source.size - reported)
                    return stored_at
                if not _retryable(failure):
                    raise
                if failure.status == 423 and locked_for < self.locked_patience:
                    wait = failure.retry_after or self.pause
                    locked_for += wait
                else:
                    failures += 1
                    if failures > self.attempts:
                        raise CliFailure(
                            failure.exit_code,
                            f"gave up after {self.attempts} attempts to resume: {failure.detail}",
                            status=failure.status,
                            title=failure.title,
                        ) from None
                    wait = max(self.pause * failures, failure.retry_after or 0.0)
                await asyncio.sleep(wait)
                offset, done = await self._where(api, url, offset)
            if offset > reported:
                advance(offset - reported)
                reported = offset
            if done is not None:
                return done

    @staticmethod
    async def _where(api: Api, url: str, offset: int) -> tuple[int, str | None]:
        """The upload's offset on the server (unchanged if it cannot be asked right now)."""
        try:
            async with api.request("HEAD", url, headers=TUS) as response:
                return (
                    int(response.headers["Upload-Offset"]),
                    response.headers.get("Content-Location"),
                )
        except CliFailure as failure:
            if failure.status == 404:
                raise CliFailure(
                    ExitCode.REFUSED,
                    "the server no longer has this upload (expired, or refused when complete)",
                    status=404,
                    title="Not Found",
                ) from None
            return offset, None  # the next PATCH will fail or succeed, and tell


def _read_at(handle: IO[bytes], offset: int, size: int) -> bytes:
    handle.seek(offset)
    chunk = handle.read(size)
    if len(chunk) != size:
        raise OSError(f"{handle.name} shrank while it was being uploaded")
    return chunk


class ResumableWhenLarge:
    """tus from ``threshold`` bytes up, a single multipart POST below."""

    def __init__(self, threshold: int = RESUMABLE_FROM) -> None:
        self.threshold = threshold
        self.small: UploadStrategy = MultipartUpload()
        self.large: UploadStrategy = TusUpload()

    async def upload(
        self,
        api: Api,
        session_id: str,
        source: Source,
        options: UploadOptions,
        advance: Advance,
    ) -> Stored:
        strategy = self.large if source.size >= self.threshold else self.small
        return await strategy.upload(api, session_id, source, options, advance)
