"""The OpenAPI document, generated from the route table and the marshmallow schemas."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web
from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin

from csvstore import __version__
from csvstore.web import schemas
from csvstore.web.keys import OPENAPI_KEY
from csvstore.web.problems import PROBLEM_JSON
from csvstore.web.routes import ROUTES

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
    "Problem",
)


_BINARY = {"schema": {"type": "string", "format": "binary"}}
# Responses that are not JSON: the file's own bytes, a ZIP, or nothing at all.
_RAW_BODIES: dict[str, dict[str, Any] | None] = {
    "binary": {"text/csv": _BINARY},
    "zip": {"application/zip": _BINARY},
    "empty": None,
}


def _ref(name: str) -> dict[str, Any]:
    if name.endswith("[]"):
        return {"type": "array", "items": _ref(name[:-2])}
    return {"$ref": f"#/components/schemas/{name.removesuffix('Schema') or name}"}


def _request_body_schema(name: str) -> dict[str, Any]:
    """A named schema, or ``binary`` for a body of raw bytes (a tus PATCH)."""
    return _BINARY if name == "binary" else {"schema": _ref(name)}


def build_openapi() -> dict[str, Any]:
    spec = APISpec(
        title="csvstore",
        version=__version__,
        openapi_version="3.1.0",
        plugins=[MarshmallowPlugin()],
        info={"description": "Stores CSV files grouped by a client-chosen session id."},
    )
    for name in _SCHEMAS:
        spec.components.schema(name.removesuffix("Schema") or name, schema=getattr(schemas, name))
    operations: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        responses: dict[str, Any] = {}
        for status, (description, schema_name) in route.responses.items():
            content: dict[str, Any] | None
            if schema_name is None:
                content = {PROBLEM_JSON: {"schema": _ref("Problem")}}
            elif schema_name in _RAW_BODIES:
                content = _RAW_BODIES[schema_name]
            else:
                content = {"application/json": {"schema": _ref(schema_name)}}
            responses[str(status)] = {"description": description}
            if content:
                responses[str(status)]["content"] = content
        responses.setdefault(
            "500",
            {
                "description": "Storage or database failure",
                "content": {PROBLEM_JSON: {"schema": _ref("Problem")}},
            },
        )
        operation: dict[str, Any] = {
            "summary": route.summary,
            "operationId": route.handler.__name__,
            "tags": [route.tag],
            "responses": responses,
        }
        if route.parameters:
            operation["parameters"] = route.parameters
        if route.request_schema:
            operation["requestBody"] = {
                "required": True,
                "content": {route.request_type: _request_body_schema(route.request_schema)},
            }
        operations.setdefault(route.path, {})[route.method.lower()] = operation
    for path, ops in operations.items():
        spec.path(path=path, operations=ops)
    return spec.to_dict()


async def openapi_json(request: web.Request) -> web.Response:
    return web.Response(body=request.app[OPENAPI_KEY], content_type="application/json")


def setup_openapi(app: web.Application) -> None:
    """``/openapi.json``, and Swagger UI at ``/docs`` served from the package (no CDN)."""
    from swagger_ui import api_doc

    app[OPENAPI_KEY] = orjson.dumps(build_openapi())
    app.router.add_get("/openapi.json", openapi_json)
    # Swagger UI resolves its document relative to its own prefix.
    app.router.add_get("/docs/openapi.json", openapi_json)
    api_doc(app, config_rel_url="/openapi.json", url_prefix="/docs", title="csvstore API")
