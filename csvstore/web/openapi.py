"""The OpenAPI document, generated from the route table and the marshmallow schemas."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web
from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin

from csvstore import __version__
from csvstore.web import schemas
from csvstore.web.keys import OPENAPI_KEY
from csvstore.web.observability import UPLOAD
from csvstore.web.problems import PROBLEM_JSON, meet_expectation
from csvstore.web.routes import ROUTES, Route
from csvstore.web.security import PROTECTED_PREFIX

# Nested schemas first: apispec then refers to them instead of registering them twice.
_SCHEMAS = (
    "FileSchema",
    "SessionSchema",
    "SessionCreateRequest",
    "SessionCreatedResponse",
    "UploadForm",
    "UploadResponse",
    "MessageResponse",
    "RowsResponse",
    "QueryRequest",
    "QueryResponse",
    "ColumnSchema",
    "TableSchema",
    "TopValue",
    "ColumnSummarySchema",
    "SummaryResponse",
    "Problem",
)


_BINARY = {"schema": {"type": "string", "format": "binary"}}
# Responses that are not JSON: the file's own bytes, a ZIP, or nothing at all.
_RAW_BODIES: dict[str, dict[str, Any] | None] = {
    "binary": {"text/csv": _BINARY},
    "zip": {"application/zip": _BINARY},
    "query": {
        "application/json": {"schema": {"$ref": "#/components/schemas/QueryResponse"}},
        "text/csv": {"schema": {"type": "string"}},
    },
    "empty": None,
}


def _ref(name: str) -> dict[str, Any]:
    if name.endswith("[]"):
        return {"type": "array", "items": _ref(name[:-2])}
    return {"$ref": f"#/components/schemas/{name.removesuffix('Schema') or name}"}


def _request_body_schema(name: str) -> dict[str, Any]:
    """A named schema, or ``binary`` for a body of raw bytes (a tus PATCH)."""
    return _BINARY if name == "binary" else {"schema": _ref(name)}


_INT = {"type": "integer", "minimum": 0}
_TEXT = {"type": "string"}
# What each response header says; routes.py names the ones each answer sets.
HEADERS: dict[str, tuple[str, dict[str, Any]]] = {
    "Location": ("The created resource, as a URL relative to the server", _TEXT),
    "Link": ('The next page while more remain: <URL>; rel="next" (relative URL)', _TEXT),
    "ETag": ("The file's SHA-256 in quotes (files stored with a digest)", _TEXT),
    "Last-Modified": ("When the file was stored", _TEXT),
    "Accept-Ranges": ("bytes: single ranges are served", _TEXT),
    "Content-Range": ("The range sent (206), or bytes */SIZE (416)", _TEXT),
    "Content-Disposition": ("attachment; an ASCII filename and the exact one in filename*", _TEXT),
    "Cache-Control": ("no-store: an upload's offset changes", _TEXT),
    "Retry-After": ("Seconds to wait before trying again", _INT),
    "WWW-Authenticate": ('Bearer realm="csvstore"', _TEXT),
    "Tus-Resumable": ("The tus protocol version: 1.0.0", _TEXT),
    "Tus-Version": ("The tus versions this server speaks", _TEXT),
    "Tus-Extension": ("The tus extensions this server supports", _TEXT),
    "Tus-Max-Size": ("The largest Upload-Length accepted, in bytes", _INT),
    "Tus-Checksum-Algorithm": ("The algorithms Upload-Checksum may name", _TEXT),
    "Upload-Offset": ("The bytes of the upload received so far", _INT),
    "Upload-Length": ("The upload's length, in bytes", _INT),
    "Upload-Metadata": ("The Upload-Metadata the upload was created with", _TEXT),
    "Upload-Expires": ("When the incomplete upload expires (HTTP date)", _TEXT),
    "Content-Location": ("The stored file, once the upload is complete (relative URL)", _TEXT),
}
# Headers every answer of a status carries, whatever the operation.
_BY_STATUS = {401: ("WWW-Authenticate",), **dict.fromkeys((423, 429, 503, 507), ("Retry-After",))}
_READ_METHODS = {"GET", "HEAD", "OPTIONS"}
BEARER = "bearerAuth"


def _headers(names: tuple[str, ...]) -> dict[str, Any]:
    out = {}
    for name in names:
        bare = name.rstrip("?")
        description, schema = HEADERS[bare]
        out[bare] = {"description": description, "required": bare == name, "schema": schema}
    return out


def _problem(description: str) -> dict[str, Any]:
    return {"description": description, "content": {PROBLEM_JSON: {"schema": _ref("Problem")}}}


@dataclass(frozen=True, slots=True)
class Documented:
    """What the document says beyond the routes: the settings that add answers."""

    api_keys: bool = False
    rate_limit: bool = False
    upload_limit: bool = False


def build_openapi(documented: Documented = Documented()) -> dict[str, Any]:
    spec = APISpec(
        title="csvstore",
        version=__version__,
        openapi_version="3.1.0",
        plugins=[MarshmallowPlugin()],
        info={
            "description": "Stores CSV files grouped by a client-chosen session id. Every "
            "answer carries X-Request-ID."
        },
    )
    for name in _SCHEMAS:
        spec.components.schema(name.removesuffix("Schema") or name, schema=getattr(schemas, name))
    if documented.api_keys:
        spec.components.security_scheme(
            BEARER,
            {
                "type": "http",
                "scheme": "bearer",
                "description": "An API key: Authorization: Bearer <key>",
            },
        )
    operations: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        operations.setdefault(route.path, {})[route.method.lower()] = _operation(route, documented)
    for path, ops in operations.items():
        spec.path(path=path, operations=ops)
    return spec.to_dict()


def _operation(route: Route, documented: Documented) -> dict[str, Any]:
    statuses = dict(route.responses)
    protected = route.path.startswith(PROTECTED_PREFIX) and route.method != "OPTIONS"
    if protected:
        statuses.setdefault(503, ("The database or the storage is unavailable", None))
    if documented.api_keys and protected:
        statuses[401] = ("No API key, or not a valid one", None)
        if route.method not in _READ_METHODS and not route.reads:
            statuses[403] = ("A read-only API key", None)
    if documented.rate_limit or (documented.upload_limit and route.kind == UPLOAD):
        statuses[429] = ("Past this client's rate or uploads limit", None)
    statuses.setdefault(500, ("Storage or database failure", None))
    responses: dict[str, Any] = {}
    for status in sorted(statuses):
        description, schema_name = statuses[status]
        if schema_name is None:
            response = _problem(description)
        else:
            response = {"description": description}
            json_body = {"application/json": {"schema": _ref(schema_name)}}
            content = _RAW_BODIES.get(schema_name, json_body)
            if content:
                response["content"] = content
        names = route.headers.get(status, ()) + _BY_STATUS.get(status, ())
        if route.tag == "tus":  # on every answer of the tus endpoint, errors too
            names += ("Tus-Resumable",)
        if names:
            response["headers"] = _headers(names)
        responses[str(status)] = response
    operation: dict[str, Any] = {
        "summary": route.summary,
        "operationId": route.operation_id,
        "tags": [route.tag],
        "responses": responses,
    }
    if documented.api_keys and protected:
        operation["security"] = [{BEARER: []}]
    if route.parameters:
        operation["parameters"] = route.parameters
    if route.request_schema:
        operation["requestBody"] = {
            "required": True,
            "content": {route.request_type: _request_body_schema(route.request_schema)},
        }
    return operation


async def openapi_json(request: web.Request) -> web.Response:
    return web.Response(body=request.app[OPENAPI_KEY], content_type="application/json")


def setup_openapi(app: web.Application, documented: Documented) -> None:
    """``/openapi.json``, and Swagger UI at ``/docs`` served from the package (no CDN)."""
    from swagger_ui import api_doc

    app[OPENAPI_KEY] = orjson.dumps(build_openapi(documented))
    app.router.add_get("/openapi.json", openapi_json, expect_handler=meet_expectation)
    # Swagger UI resolves its document relative to its own prefix.
    app.router.add_get("/docs/openapi.json", openapi_json, expect_handler=meet_expectation)
    api_doc(app, config_rel_url="/openapi.json", url_prefix="/docs", title="csvstore API")
