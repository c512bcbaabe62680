"""The errors a client can act on, each with an HTTP status and a stable ``reason``: the
problem's ``code`` (rendered by csvstore.web.problems) and the metrics' label."""

from __future__ import annotations

import math
import sys
from typing import Any, ClassVar


class CsvstoreError(Exception):
    """``detail`` is for people; ``retry_after`` (seconds) becomes ``Retry-After``."""

    status: ClassVar[int] = 500
    reason: ClassVar[str] = "internal-error"
    retry_after: float | None = None

    def __init__(
        self,
        detail: str,
        *,
        errors: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors
        self.headers = headers
        if retry_after is not None:
            self.retry_after = retry_after

    def response_headers(self) -> dict[str, str] | None:
        if self.retry_after is None:
            return self.headers
        return {"Retry-After": retry_after_value(self.retry_after), **(self.headers or {})}


def retry_after_value(seconds: float) -> str:
    """Whole seconds, rounded up: a client that waits exactly this long is not early."""
    return str(max(1, math.ceil(seconds)))


class BadRequest(CsvstoreError):
    status = 400
    reason = "bad-request"


class ValidationFailed(BadRequest):
    reason = "validation-failed"


class SessionExists(BadRequest):
    reason = "session-exists"


class NotACsv(BadRequest):
    reason = "not-csv"


class Unauthorized(CsvstoreError):
    status = 401
    reason = "unauthorized"


class Forbidden(CsvstoreError):
    status = 403
    reason = "forbidden"


class NotFound(CsvstoreError):
    status = 404
    reason = "not-found"


class SessionNotFound(NotFound):
    reason = "unknown-session"


class FileNotFound(NotFound):
    reason = "unknown-file"


class UploadNotFound(NotFound):
    reason = "unknown-upload"


class RequestTimeout(CsvstoreError):
    status = 408
    reason = "timeout"


class OffsetConflict(CsvstoreError):
    """A tus request at another offset than the upload's (or to a complete upload)."""

    status = 409
    reason = "offset-conflict"


class NotProfiled(CsvstoreError):
    status = 409
    reason = "not-profiled"


class PreconditionFailed(CsvstoreError):
    status = 412
    reason = "precondition-failed"


class UploadTooLarge(CsvstoreError):
    status = 413
    reason = "too-large"


class UnsupportedMediaType(CsvstoreError):
    status = 415
    reason = "unsupported-media-type"


class RangeNotSatisfiable(CsvstoreError):
    status = 416
    reason = "range-not-satisfiable"


class UploadLocked(CsvstoreError):
    status = 423
    reason = "upload-locked"
    # One PATCH holds an upload; an S3 lease left by a dead process says its own time.
    retry_after = 1.0


class UploadBeingStored(CsvstoreError):
    status = 423
    reason = "upload-being-stored"
    retry_after = 1.0

    def __init__(self, upload_id: str) -> None:
        super().__init__(
            f"upload {upload_id} has all its bytes and is being stored; ask with HEAD shortly"
        )


class TooManyRequests(CsvstoreError):
    status = 429
    reason = "rate-limited"


class ChecksumMismatch(CsvstoreError):
    status = 460  # tus 1.0 checksum extension
    reason = "checksum-mismatch"


class StoredFileUnavailable(CsvstoreError):
    status = 500
    reason = "stored-file-unavailable"


class QueryCacheFull(CsvstoreError):
    """S3 storage: the queried files do not fit the local cache (--query-cache-size)."""

    status = 503
    reason = "query-cache-full"
    retry_after = 5.0  # room comes back as running queries end


class DependencyUnavailable(CsvstoreError):
    """The database or the storage (``dependency``) cannot be reached right now."""

    status = 503
    reason = "unavailable"
    # Long enough for a restart or a fail-over, short enough that clients come back soon.
    retry_after = 5.0

    def __init__(self, dependency: str, detail: str) -> None:
        super().__init__(detail)
        self.dependency = dependency


class InsufficientStorage(CsvstoreError):
    status = 507
    reason = "disk-full"
    # Space comes back as files are deleted or sessions expire (the sweeper runs every
    # minute by default): sooner, a retry would most likely fail the same way.
    retry_after = 60.0


class QueryRefused(BadRequest):
    """The SQL asks for something a query may not do; the detail names it."""

    reason = "query-refused"


class QueryInvalid(BadRequest):
    reason = "query-invalid"


class QueryTimeout(CsvstoreError):
    # Not 408: that status says the client was slow, and some clients resend on it.
    status = 422
    reason = "query-timeout"


class QueryTooLarge(CsvstoreError):
    status = 422
    reason = "query-too-large"


class QueryUnsupportedFile(CsvstoreError):
    status = 422
    reason = "query-unsupported-file"


class QueryBusy(CsvstoreError):
    status = 429
    reason = "query-busy"
    retry_after = 1.0


class ClientGone(Exception):
    """The client stopped sending mid-body; there is nobody left to answer. Internal."""


def error_classes() -> list[type[CsvstoreError]]:
    """The hierarchy as defined here; a subclass elsewhere only adds context (the tus
    engine's conflict carries the upload's state) and keeps its parent's reason."""
    found: list[type[CsvstoreError]] = [CsvstoreError]
    for cls in found:
        found.extend(cls.__subclasses__())
    return [cls for cls in found if cls.__module__ == __name__]


def storage_unavailable(exc: BaseException) -> DependencyUnavailable | None:
    """S3 out of reach, as botocore says (looked up, not imported: local storage has none)."""
    botocore = sys.modules.get("botocore.exceptions")
    if botocore is None:
        return None
    unreachable = isinstance(exc, botocore.HTTPClientError | botocore.ConnectionError)
    if isinstance(exc, botocore.ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        unreachable = status >= 500
    if not unreachable:
        return None
    return DependencyUnavailable(
        "storage", "the storage (S3) is unavailable: the request could not be completed"
    )
