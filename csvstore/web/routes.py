"""The one URL table. Each route also carries what the OpenAPI document says about it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from csvstore.web import handlers, observability, schemas, tus
from csvstore.web import page as webpage
from csvstore.web.observability import DOWNLOAD, QUERY, UPLOAD, RouteKinds
from csvstore.web.problems import meet_expectation

API = "/api/csv"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str
    handler: Handler
    summary: str
    # status -> (description, response schema name or None); errors use the Problem schema
    responses: dict[int, tuple[str, str | None]]
    request_schema: str | None = None
    request_type: str = "application/json"
    parameters: list[dict[str, Any]] = field(default_factory=list)
    tag: str = "csv"
    kind: str | None = None  # UPLOAD, DOWNLOAD or QUERY, for the metrics
    reads: bool = False  # a POST that only reads: read-only keys may send it
    operation_id: str = ""
    # status -> the headers that answer sets (openapi.HEADERS); "Name?" when only sometimes
    headers: dict[int, tuple[str, ...]] = field(default_factory=dict)


_SESSION_ID = {"in": "path", "name": "session_id", "required": True, "schema": {"type": "string"}}
_FILE_ID = {"in": "path", "name": "file_id", "required": True, "schema": {"type": "string"}}
_UPLOAD_ID = {"in": "path", "name": "upload_id", "required": True, "schema": {"type": "string"}}
_COUNT = {"type": "integer", "minimum": 0}
_TEXT = {"type": "string"}


def _header(name: str, schema: dict[str, Any] | None = None, *, required: bool = True) -> Any:
    return {"in": "header", "name": name, "required": required, "schema": schema or _TEXT}


_TUS_RESUMABLE = _header("Tus-Resumable", {"type": "string", "enum": ["1.0.0"]})
_FILE_HEADERS = ("Content-Disposition", "Accept-Ranges", "Last-Modified", "ETag?")
_PROGRESS = ("Upload-Offset", "Upload-Expires?", "Content-Location?")

_QUERY_ERRORS: dict[int, tuple[str, str | None]] = {
    404: ("No such session or file", None),
    422: (
        "Stopped at --query-timeout, past --query-memory, or a file the engine cannot read",
        None,
    ),
    429: ("--query-concurrency queries are running (Retry-After)", None),
}

ROUTES: tuple[Route, ...] = (
    Route(
        "POST",
        f"{API}/sessions",
        handlers.create_session,
        "Create a session",
        {
            201: ("Created; Location names the session", "SessionCreatedResponse"),
            400: ("Duplicate or invalid session id", None),
            415: ("Body is not JSON", None),
        },
        request_schema="SessionCreateRequest",
        operation_id="create_session",
        headers={201: ("Location",)},
    ),
    Route(
        "GET",
        f"{API}/sessions",
        handlers.list_sessions,
        "List sessions with their files, a page at a time (Link: rel=next while more remain)",
        {
            200: ("A page of sessions, in session_id order", "SessionSchema[]"),
            400: ("Invalid limit or cursor", None),
        },
        parameters=[{"in": "query", "schema": schemas.SessionListQuery}],
        operation_id="list_sessions",
        headers={200: ("Link?",)},
    ),
    Route(
        "GET",
        f"{API}/sessions/{{session_id}}",
        handlers.get_session,
        "Get a session and its files",
        {200: ("The session", "SessionSchema"), 404: ("No such session", None)},
        parameters=[_SESSION_ID],
        operation_id="get_session",
    ),
    Route(
        "DELETE",
        f"{API}/sessions/{{session_id}}",
        handlers.delete_session,
        "Delete a session, its files' rows and their stored bytes",
        {200: ("Deleted", "MessageResponse"), 404: ("No such session", None)},
        parameters=[_SESSION_ID],
        operation_id="delete_session",
    ),
    Route(
        "POST",
        f"{API}/upload",
        handlers.upload,
        "Upload a CSV file into a session (streamed)",
        {
            200: (
                "dedupe=true and the session holds the same bytes: that file, duplicate_of "
                "naming it (Location too)",
                "UploadResponse",
            ),
            201: ("Stored; Location names the file", "UploadResponse"),
            400: ("Not a CSV, or a bad form", None),
            404: ("No such session", None),
            413: ("Larger than the upload limit", None),
            507: ("The server's disk is full", None),
        },
        request_schema="UploadForm",
        request_type="multipart/form-data",
        kind=UPLOAD,
        operation_id="upload_file",
        headers={200: ("Location",), 201: ("Location",)},
    ),
    Route(
        "GET",
        f"{API}/files/{{file_id}}",
        handlers.get_file,
        "Get a file's metadata",
        {200: ("The file", "FileSchema"), 404: ("No such file", None)},
        parameters=[_FILE_ID],
        operation_id="get_file",
    ),
    Route(
        "GET",
        f"{API}/files/{{file_id}}/content",
        handlers.download_file,
        "Download a file's bytes (ETag, conditional requests, single Range, HEAD)",
        {
            200: ("The stored bytes", "binary"),
            206: ("The requested range (Content-Range)", "binary"),
            304: ("Not modified (If-None-Match, or If-Modified-Since)", "empty"),
            404: ("No such file", None),
            412: ("If-Match or If-Unmodified-Since failed", None),
            416: ("Range outside the file", None),
            500: ("The stored bytes are missing or not the size recorded", None),
        },
        parameters=[_FILE_ID],
        kind=DOWNLOAD,
        operation_id="download_file",
        headers={
            200: _FILE_HEADERS,
            206: ("Content-Range", *_FILE_HEADERS),
            304: ("ETag", "Last-Modified"),
            416: ("Content-Range",),
        },
    ),
    Route(
        "GET",
        f"{API}/files/{{file_id}}/rows",
        handlers.file_rows,
        "Parsed rows of a file, a page at a time, in its own dialect and encoding",
        {
            200: (
                "Columns, rows from offset (at most 8 MiB of the file parsed), the next offset "
                "(null at the end), and the cells cut short",
                "RowsResponse",
            ),
            400: ("Invalid offset or limit", None),
            404: ("No such file", None),
            409: ("The file was stored without a profile", None),
        },
        parameters=[_FILE_ID, {"in": "query", "schema": schemas.RowsQuery}],
        operation_id="get_file_rows",
    ),
    Route(
        "GET",
        f"{API}/sessions/{{session_id}}/archive",
        handlers.download_archive,
        "Download every file of a session as one ZIP, streamed as it is built",
        {
            200: ("A ZIP archive, entries named by original filename", "zip"),
            404: ("No such session", None),
        },
        parameters=[_SESSION_ID],
        kind=DOWNLOAD,
        operation_id="download_session_archive",
        headers={200: ("Content-Disposition",)},
    ),
    Route(
        "DELETE",
        f"{API}/files/{{file_id}}",
        handlers.delete_file,
        "Delete a file's row and its stored bytes",
        {200: ("Deleted", "MessageResponse"), 404: ("No such file", None)},
        parameters=[_FILE_ID],
        operation_id="delete_file",
    ),
    # Queries (issue 20): docs/query.md.
    Route(
        "GET",
        f"{API}/sessions/{{session_id}}/tables",
        handlers.query_tables,
        "The session's files as SQL tables: names, columns with their types, row counts",
        {200: ("One table per file, in upload order", "TableSchema[]"), **_QUERY_ERRORS},
        parameters=[_SESSION_ID],
        tag="query",
        operation_id="list_tables",
    ),
    Route(
        "POST",
        f"{API}/sessions/{{session_id}}/query",
        handlers.run_query,
        "Run one read-only SQL statement over the session's tables (Accept: text/csv streams "
        "the whole result, up to --query-max-rows)",
        {
            200: ("The result: JSON up to limit rows, or CSV", "query"),
            400: ("Invalid body, a refused statement or an SQL error", None),
            413: ("A JSON body over 64 KiB", None),
            415: ("Body is not JSON", None),
            **_QUERY_ERRORS,
        },
        request_schema="QueryRequest",
        parameters=[_SESSION_ID, _header("Accept", required=False)],
        tag="query",
        kind=QUERY,
        reads=True,
        operation_id="run_query",
    ),
    Route(
        "GET",
        f"{API}/files/{{file_id}}/summary",
        handlers.file_summary,
        "Per-column summary of a file (computed once, then kept)",
        {200: ("The file's columns summarised", "SummaryResponse"), **_QUERY_ERRORS},
        parameters=[_FILE_ID],
        tag="query",
        operation_id="get_file_summary",
    ),
    # Resumable uploads (tus 1.0): see csvstore/web/tus.py and docs/resumable.md.
    Route(
        "OPTIONS",
        tus.TUS_ROOT,
        tus.options,
        "tus discovery: Tus-Version, Tus-Extension, Tus-Max-Size, Tus-Checksum-Algorithm",
        {204: ("What this tus server supports, in headers", "empty")},
        tag="tus",
        operation_id="tus_discover",
        headers={204: ("Tus-Version", "Tus-Extension", "Tus-Max-Size", "Tus-Checksum-Algorithm")},
    ),
    Route(
        "POST",
        tus.TUS_ROOT,
        tus.create,
        "tus creation: a new resumable upload into a session (Upload-Length, Upload-Metadata "
        "with base64 session_id and filename); with an application/offset+octet-stream body "
        "its first bytes too",
        {
            201: ("Created; Location names the upload, Upload-Expires says until when", "empty"),
            400: ("Bad metadata, not a .csv name, or a refused body", None),
            404: ("No such session", None),
            412: ("Tus-Resumable is not 1.0.0 (Tus-Version says what is)", None),
            413: ("Upload-Length over the upload limit", None),
            415: ("A body that is not application/offset+octet-stream", None),
            460: ("Upload-Checksum does not match the body", None),
            507: ("The server's disk is full", None),
        },
        parameters=[_TUS_RESUMABLE, _header("Upload-Length", _COUNT), _header("Upload-Metadata")],
        tag="tus",
        kind=UPLOAD,  # creation-with-upload carries bytes; a refused creation is a rejection
        operation_id="tus_create_upload",
        headers={
            201: ("Location", *_PROGRESS),
            412: ("Tus-Version",),
        },
    ),
    Route(
        "HEAD",
        f"{tus.TUS_ROOT}{{upload_id}}",
        tus.head,
        "tus: how far an upload got (Upload-Offset, Upload-Length, Upload-Metadata)",
        {
            200: ("Upload-Offset and Upload-Length in headers", "empty"),
            404: ("No such upload (never created, expired or terminated)", None),
            412: ("Tus-Resumable is not 1.0.0", None),
        },
        parameters=[_UPLOAD_ID, _TUS_RESUMABLE],
        tag="tus",
        operation_id="tus_get_upload_offset",
        headers={
            200: (
                "Upload-Offset",
                "Upload-Length",
                "Cache-Control",
                "Upload-Metadata?",
                "Upload-Expires?",
                "Content-Location?",
            ),
            412: ("Tus-Version",),
        },
    ),
    Route(
        "PATCH",
        f"{tus.TUS_ROOT}{{upload_id}}",
        tus.patch,
        "tus: append bytes at Upload-Offset; the last byte stores the file as POST /upload "
        "would (Content-Location then names it)",
        {
            204: ("Appended; Upload-Offset is the new offset", "empty"),
            400: ("Bad headers, or the complete file is not a CSV", None),
            404: ("No such upload, or its session was deleted", None),
            409: ("Upload-Offset is not the upload's offset", None),
            412: ("Tus-Resumable is not 1.0.0", None),
            413: ("The body goes past Upload-Length", None),
            415: ("Content-Type is not application/offset+octet-stream", None),
            423: ("Another request is writing to this upload", None),
            460: ("Upload-Checksum does not match the body", None),
            507: ("The server's disk is full", None),
        },
        request_schema="binary",
        request_type=tus.OFFSET_STREAM,
        parameters=[
            _UPLOAD_ID,
            _TUS_RESUMABLE,
            _header("Upload-Offset", _COUNT),
            _header("Upload-Checksum", required=False),
        ],
        tag="tus",
        kind=UPLOAD,
        operation_id="tus_append_to_upload",
        headers={
            204: _PROGRESS,
            409: ("Upload-Offset?", "Upload-Expires?", "Content-Location?"),
            412: ("Tus-Version",),
            460: ("Upload-Offset?",),
        },
    ),
    Route(
        "DELETE",
        f"{tus.TUS_ROOT}{{upload_id}}",
        tus.terminate,
        "tus termination: abandon an upload and remove its bytes",
        {
            204: ("Terminated", "empty"),
            404: ("No such upload", None),
            412: ("Tus-Resumable is not 1.0.0", None),
            423: ("Another request is writing to this upload", None),
        },
        parameters=[_UPLOAD_ID, _TUS_RESUMABLE],
        tag="tus",
        operation_id="tus_terminate_upload",
        headers={412: ("Tus-Version",)},
    ),
)


def route_kinds() -> RouteKinds:
    kinds: RouteKinds = {}
    for route in ROUTES:
        if route.kind is not None:
            kinds[route.method, route.path] = route.kind
            if route.method == "GET":
                kinds["HEAD", route.path] = route.kind
            if route.path.endswith("/"):  # tus's root also answers without its slash
                kinds[route.method, route.path.rstrip("/")] = route.kind
    return kinds


def setup_routes(app: web.Application) -> None:
    # Operations: outside /api, so they answer without an API key.
    expect = meet_expectation  # on every route: see its docstring
    app.router.add_get("/healthz", observability.healthz, expect_handler=expect)
    app.router.add_get("/readyz", observability.readyz, expect_handler=expect)
    app.router.add_get("/metrics", observability.metrics_handler, expect_handler=expect)
    # The web page and its files: outside /api too; the page asks for a key on a 401.
    webpage.setup_webpage(app)
    for route in ROUTES:
        if route.method == "GET":  # answers HEAD too
            app.router.add_get(route.path, route.handler, expect_handler=expect)
        else:
            app.router.add_route(route.method, route.path, route.handler, expect_handler=expect)
