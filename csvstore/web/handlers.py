"""HTTP handlers: parse with a schema, call the service, render with a schema. Nothing more."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

import orjson
from aiohttp import web
from yarl import URL

from csvstore.errors import BadRequest, UnsupportedMediaType
from csvstore.uploads import UploadLimits, bounded
from csvstore.web import schemas
from csvstore.web.body import body_chunks, refuse_unknown_coding
from csvstore.web.download import send_archive, send_file
from csvstore.web.ingest import receive_upload
from csvstore.web.keys import LIMITS_KEY, SETTINGS_KEY, STORE_KEY
from csvstore.web.observability import QUERY_SQL, UPLOADED_BYTES
from csvstore.web.render import projector

# Responses are rendered by projections of their schemas (see render.py): same shape, faster.
_session_created = projector(schemas.SessionCreatedResponse())
_session = projector(schemas.SessionSchema())
_file = projector(schemas.FileSchema())
_uploaded = projector(schemas.UploadResponse())
_message = projector(schemas.MessageResponse())
_rows = projector(schemas.RowsResponse())
_query_result = projector(schemas.QueryResponse())
_table = projector(schemas.TableSchema())
_summary = projector(schemas.SummaryResponse())

SESSIONS_PATH = "/api/csv/sessions"
# JSON request bodies are a session id and a few options, or a query; 64 KiB is generous.
# Uploads are streamed and limited by max_upload_size instead, which this does not affect.
JSON_BODY_LIMIT = 64 * 1024


def json_response(
    data: Any, *, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status, body=orjson.dumps(data), content_type="application/json", headers=headers
    )


async def read_json(request: web.Request) -> Any:
    # A missing type is taken as JSON (as FastAPI does); another type is a mistake to name.
    ctype = request.headers.get("Content-Type")
    if (
        ctype is not None
        and request.content_type != "application/json"
        and not (request.content_type.endswith("+json"))
    ):
        raise UnsupportedMediaType(f"expected an application/json body, got {request.content_type}")
    raw = await _read_small_body(request)
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}") from None


async def _read_small_body(request: web.Request) -> bytes:
    """The whole body, at most JSON_BODY_LIMIT bytes, read as an upload's body is: a stalled
    body gets the 408 of ``--body-read-timeout`` and a dropped one is the client's leaving
    (client-gone), where ``request.read()`` would wait forever or raise a 500."""
    size = request.content_length
    if size is not None and size > JSON_BODY_LIMIT:
        raise web.HTTPRequestEntityTooLarge(max_size=JSON_BODY_LIMIT, actual_size=size)

    def too_large() -> web.HTTPRequestEntityTooLarge:  # its size unknown: only the limit shows
        return web.HTTPRequestEntityTooLarge(
            max_size=JSON_BODY_LIMIT, actual_size=JSON_BODY_LIMIT + 1
        )

    refuse_unknown_coding(request)
    chunks = body_chunks(request.content, request.app[LIMITS_KEY], broken_is_gone=True)
    return b"".join([chunk async for chunk in bounded(chunks, JSON_BODY_LIMIT, too_large)])


async def create_session(request: web.Request) -> web.Response:
    body = schemas.load(schemas.SessionCreateRequest(), await read_json(request), what="session")
    session = await request.app[STORE_KEY].create_session(
        body["session_id"], ttl_seconds=body["ttl_seconds"]
    )
    session_id = session.session_id
    return json_response(
        _session_created({"message": "Session created successfully", "session_id": session_id}),
        status=201,
        headers={"Location": f"{SESSIONS_PATH}/{quote(session_id)}"},
    )


async def list_sessions(request: web.Request) -> web.Response:
    query = schemas.load_query(schemas.SessionListQuery(), request.query)
    limit = query["limit"]
    # One more than asked for tells whether a next page exists without a second round trip.
    # The database renders the JSON (SessionSchema's shape, tested): faster than Python.
    page = await request.app[STORE_KEY].list_sessions_json(after=query["after"], limit=limit + 1)
    headers = {}
    if len(page) > limit:
        page = page[:limit]
        # Relative, never built from Host: behind a TLS proxy the scheme would be wrong, and
        # a client that sets Host would send the page (and its API key) elsewhere.
        next_url = URL.build(path=SESSIONS_PATH, query={"limit": limit, "after": page[-1][0]})
        headers["Link"] = f'<{next_url}>; rel="next"'
    body = "[" + ",".join(session for _, session in page) + "]"
    return web.Response(body=body.encode(), content_type="application/json", headers=headers)


async def get_session(request: web.Request) -> web.Response:
    session = await request.app[STORE_KEY].get_session(request.match_info["session_id"])
    return json_response(_session(session))


async def delete_session(request: web.Request) -> web.Response:
    await request.app[STORE_KEY].delete_session(request.match_info["session_id"])
    return json_response(_message({"message": "Session deleted successfully"}))


async def upload(request: web.Request) -> web.Response:
    limits: UploadLimits = request.app[LIMITS_KEY]
    uploaded = await receive_upload(request, request.app[STORE_KEY], limits)
    request[UPLOADED_BYTES] = uploaded.file.file_size
    location = {"Location": f"/api/csv/files/{uploaded.file.id}"}
    body: dict[str, Any] = {"session_id": uploaded.session_id, "file": uploaded.file}
    if uploaded.duplicate:
        file = {**_file(uploaded.file), "duplicate_of": uploaded.file.id}
        body.update(message="File already stored", file=file)
        return json_response(_uploaded(body), status=200, headers=location)
    body["message"] = "File uploaded successfully"
    return json_response(_uploaded(body), status=201, headers=location)


async def get_file(request: web.Request) -> web.Response:
    row = await request.app[STORE_KEY].get_file(request.match_info["file_id"])
    return json_response(_file(row))


async def download_file(request: web.Request) -> web.StreamResponse:
    store = request.app[STORE_KEY]
    file = await store.get_file(request.match_info["file_id"])
    return await send_file(request, store, file)


async def file_rows(request: web.Request) -> web.Response:
    query = schemas.load_query(schemas.RowsQuery(), request.query)
    store = request.app[STORE_KEY]
    file = await store.get_file(request.match_info["file_id"])
    settings = request.app[SETTINGS_KEY]
    page = await store.read_rows(
        file,
        query["offset"],
        query["limit"],
        max_bytes=settings.rows_max_bytes,
        cell_limit=settings.rows_cell_limit,
    )
    body = {
        "columns": file.columns or [],
        "rows": page.rows,
        "next_offset": page.next_row,
        "truncated": [[row, column] for row, column in page.truncated],
    }
    return json_response(_rows(body))


async def download_archive(request: web.Request) -> web.StreamResponse:
    store = request.app[STORE_KEY]
    session = await store.get_session(request.match_info["session_id"])
    return await send_archive(request, store, session)


async def delete_file(request: web.Request) -> web.Response:
    await request.app[STORE_KEY].delete_file(request.match_info["file_id"])
    return json_response(_message({"message": "File deleted successfully"}))


async def query_tables(request: web.Request) -> web.Response:
    tables = await request.app[STORE_KEY].query_tables(request.match_info["session_id"])
    return json_response([_table(table) for table in tables])


async def run_query(request: web.Request) -> web.StreamResponse:
    body = schemas.load(schemas.QueryRequest(), await read_json(request), what="query")
    request[QUERY_SQL] = body["sql"]
    store = request.app[STORE_KEY]
    session_id = request.match_info["session_id"]
    if not _wants_csv(request):
        result = await store.run_query(session_id, body["sql"], body["limit"])
        return json_response(_query_result(result))
    chunks = store.query_csv(session_id, body["sql"])
    try:
        # Refusals and SQL errors come with the first chunk: still a problem+json answer.
        first = await anext(chunks, b"")
        response = web.StreamResponse(headers={"Content-Type": "text/csv; charset=utf-8"})
        await response.prepare(request)
        await response.write(first)
        async for chunk in chunks:
            await response.write(chunk)
        await response.write_eof()
        return response
    finally:
        await chunks.aclose()


def _wants_csv(request: web.Request) -> bool:
    """CSV when Accept ranks it above JSON (RFC 9110 12.5.1); JSON on a tie."""
    quality: dict[str, float] = {}
    for item in request.headers.get("Accept", "").split(","):
        media, *params = (part.strip().lower() for part in item.split(";"))
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip() == "q" and _QVALUE.fullmatch(value.strip()):
                q = float(value)
        quality[media] = max(q, quality.get(media, 0.0))

    def ranked(media: str) -> float:
        for candidate in (media, media.split("/")[0] + "/*", "*/*"):
            if candidate in quality:
                return quality[candidate]
        return 0.0

    return ranked("text/csv") > ranked("application/json")


_QVALUE = re.compile(r"0(\.\d{0,3})?|1(\.0{0,3})?")


async def file_summary(request: web.Request) -> web.Response:
    summary = await request.app[STORE_KEY].file_summary(request.match_info["file_id"])
    return json_response(_summary(summary))
