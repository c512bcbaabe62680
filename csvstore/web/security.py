"""Who may call the API (optional bearer keys, kept as SHA-256 digests; see
docs/operations.md#access-control), and the headers every response carries."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Middleware

from csvstore.config import Settings
from csvstore.errors import Forbidden, Unauthorized
from csvstore.web.problems import Handler

READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# What browser tus clients (tus-js-client, Uppy) send and must be able to read.
TUS_REQUEST_HEADERS = (
    "Tus-Resumable",
    "Upload-Length",
    "Upload-Metadata",
    "Upload-Offset",
    "Upload-Checksum",
    "Upload-Defer-Length",
    "Upload-Concat",
)
TUS_EXPOSE_HEADERS = (
    "Upload-Offset",
    "Upload-Length",
    "Upload-Metadata",
    "Upload-Expires",
    "Tus-Resumable",
    "Tus-Version",
    "Tus-Extension",
    "Tus-Max-Size",
    "Tus-Checksum-Algorithm",
    "Content-Location",
)
PROTECTED_PREFIX = "/api/"
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="csvstore"'}
# The digest of the request's valid key: whose limits it counts against (web/limits.py).
API_KEY = web.RequestKey("api_key", bytes)


@dataclass(frozen=True, slots=True)
class ApiKey:
    digest: bytes  # sha256 of the key
    read_only: bool


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def parse_key_spec(spec: str) -> ApiKey:
    """``KEY``, ``sha256:HEX`` (a key stored hashed), either prefixed ``ro:`` for read-only."""
    spec = spec.strip()
    read_only = spec.startswith("ro:")
    if read_only:
        spec = spec[3:]
    if spec.startswith("sha256:"):
        try:
            digest = bytes.fromhex(spec[7:])
        except ValueError:
            raise ValueError("a sha256: key needs 64 hex digits") from None
        if len(digest) != 32:
            raise ValueError("a sha256: key needs 64 hex digits")
        return ApiKey(digest, read_only)
    if len(spec) < 16:
        raise ValueError("an API key must be at least 16 characters long")
    return ApiKey(_digest(spec), read_only)


def load_keys(settings: Settings) -> list[ApiKey]:
    specs: list[str] = [s for s in settings.api_keys.split(",") if s.strip()]
    if settings.api_keys_file is not None:
        from_file = list(_key_lines(settings.api_keys_file))
        if not from_file:  # an empty file must not quietly leave the server open
            raise ValueError(f"--api-keys-file {settings.api_keys_file} holds no key")
        specs += from_file
    return [parse_key_spec(spec) for spec in specs]


def _key_lines(path: Path) -> Iterable[str]:
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            yield line


def find_key(keys: list[ApiKey], presented: str) -> ApiKey | None:
    digest = _digest(presented)
    found = None
    for key in keys:  # every key is compared, so the time does not say which one matched
        if hmac.compare_digest(key.digest, digest):
            found = key
    return found


def auth_middleware(keys: list[ApiKey], reads: frozenset[str] = frozenset()) -> Middleware:
    """``reads``: route patterns a read-only key may POST to (a query only reads)."""

    @web.middleware
    async def check_key(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method == "OPTIONS" or not request.path.startswith(PROTECTED_PREFIX):
            return await handler(request)
        scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            raise Unauthorized(
                "this server needs an API key: send 'Authorization: Bearer <key>'",
                headers=_CHALLENGE,
            )
        key = find_key(keys, presented.strip())
        if key is None:
            raise Unauthorized("the API key is not valid", headers=_CHALLENGE)
        if key.read_only and request.method not in READ_METHODS and _route(request) not in reads:
            raise Forbidden(f"this API key is read-only: {request.method} is not allowed")
        request[API_KEY] = key.digest
        return await handler(request)

    return check_key


def _route(request: web.Request) -> str | None:
    resource = request.match_info.route.resource
    return None if resource is None else resource.canonical


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind_is_safe(settings: Settings, keys: list[ApiKey]) -> None:
    """Refuse to serve an open API on a public address unless told it is deliberate."""
    if not keys and not is_loopback(settings.host) and not settings.insecure:
        raise ValueError(
            f"refusing to listen on {settings.host} without API keys: set --api-keys or "
            "--api-keys-file, or pass --insecure if an open service is intended"
        )


# Every response: no MIME sniffing, no framing, no referrer leaks. The API's own answers
# are data, never pages, so they also get the tightest content policy.
_COMMON_HEADERS = {
    "Server": "csvstore",  # not aiohttp's, which names Python's and its own versions
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Resource-Policy": "same-origin",
}
_API_CSP = "default-src 'none'; frame-ancestors 'none'"
# The page's script and style are files of its own (static/), so no inline code runs there:
# an injected <script> or style attribute is refused.
_PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
# Swagger UI, as the API-doc package serves it, starts from an inline script and style.
DOCS_PREFIX = "/docs"
_DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; frame-ancestors 'none'"
)


def content_security_policy(path: str) -> str:
    if path.startswith(PROTECTED_PREFIX):
        return _API_CSP
    if path == DOCS_PREFIX or path.startswith(DOCS_PREFIX + "/"):
        return _DOCS_CSP
    return _PAGE_CSP


def security_headers(path: str) -> dict[str, str]:
    return {**_COMMON_HEADERS, "Content-Security-Policy": content_security_policy(path)}


# Built once per policy, not per response.
_HEADERS_BY_CSP = {
    csp: tuple({**_COMMON_HEADERS, "Content-Security-Policy": csp}.items())
    for csp in (_API_CSP, _DOCS_CSP, _PAGE_CSP)
}


async def add_security_headers(request: web.Request, response: web.StreamResponse) -> None:
    headers = response.headers
    for name, value in _HEADERS_BY_CSP[content_security_policy(request.path)]:
        headers.setdefault(name, value)
    headers["Server"] = "csvstore"  # aiohttp set its own already


def setup_cors(app: web.Application, origins: list[str]) -> None:
    import aiohttp_cors

    options = aiohttp_cors.ResourceOptions(  # type: ignore[no-untyped-call]
        allow_credentials=False,
        expose_headers=(
            "Location",
            "Link",
            "ETag",
            "Content-Range",
            "Content-Disposition",
            "X-Request-ID",
            "Retry-After",  # of a 429, 503 or 507: when to try again
            *TUS_EXPOSE_HEADERS,
        ),
        allow_headers=(
            "Authorization",
            "Content-Type",
            "Range",
            "If-None-Match",
            "If-Range",
            "Content-Digest",
            "X-Request-ID",
            *TUS_REQUEST_HEADERS,
        ),
        allow_methods="*",
        max_age=600,
    )
    cors = aiohttp_cors.setup(app, defaults=dict.fromkeys(origins, options))
    app.on_response_prepare.append(_vary_on_origin)
    for route in list(app.router.routes()):
        # A resource with an OPTIONS handler of its own (tus discovery) answers its
        # preflights itself; aiohttp-cors cannot add its own there.
        if any(other.method == "OPTIONS" for other in route.resource or ()):
            continue
        cors.add(route)


async def _vary_on_origin(request: web.Request, response: web.StreamResponse) -> None:
    """With CORS on, each answer depends on the request's Origin: caches must key on it."""
    vary = response.headers.get("Vary")
    if vary is None:
        response.headers["Vary"] = "Origin"
    elif "origin" not in vary.lower():
        response.headers["Vary"] = f"{vary}, Origin"
