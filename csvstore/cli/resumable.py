"""Resumable uploads from the command line: the tus 1.0 protocol as an ``UploadStrategy``;
a failed PATCH asks where the upload stands (HEAD) and goes on from there (docs/cli.md)."""

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
# Memory per file in flight stays at one PATCH, and each answer moves the progress bar.
PATCH_SIZE = 8 * 1024 * 1024
# Failures in a row before giving up, pausing 1, 2, 3 ... s (or a longer Retry-After).
ATTEMPTS = 8
# A 423 may be a dead process's S3 lease (up to --tus-lease): waited out this long in all.
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
            # An answer naming one of these was a duplicate (the Date header's whole seconds
            # could not tell a duplicate made within the same second).
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
            stalled = False
            try:
                async with api.request("PATCH", url, data=chunk, headers=headers) as response:
                    sent_from, offset = offset, int(response.headers["Upload-Offset"])
                    done = response.headers.get("Content-Location")
                # Accepted, yet no byte taken: not progress, however often it answers.
                stalled = offset <= sent_from and done is None and bool(chunk)
                if not stalled:
                    failures = 0
            except CliFailure as failure:
                stored_at = failure.headers.get("Content-Location")
                if failure.status == 409 and stored_at:
                    # An earlier PATCH whose answer was lost stored the file.
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
            if stalled:
                failures += 1
                if failures > self.attempts:
                    raise CliFailure(
                        ExitCode.UNAVAILABLE,
                        f"gave up after {self.attempts} PATCHes the server answered without "
                        f"taking a byte (offset {offset})",
                    )
                await asyncio.sleep(self.pause * failures)
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
