"""The web page at ``/``: the files in ``static/`` as they are (no build, no CDN)."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from csvstore.web.problems import meet_expectation

STATIC_DIR = Path(__file__).parent / "static"
# Revalidated every time (a 304 from the ETag): an old script must not meet a new API.
_REVALIDATE = {"Cache-Control": "no-cache"}
_ASSETS = frozenset(path.name for path in STATIC_DIR.iterdir())


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "index.html", headers=_REVALIDATE)


async def asset(request: web.Request) -> web.FileResponse:
    """One of the page's files; any other name is a 404 problem, not an empty 404."""
    name = request.match_info["name"]
    if name not in _ASSETS:
        raise web.HTTPNotFound()
    return web.FileResponse(STATIC_DIR / name)


def setup_webpage(app: web.Application) -> None:
    app.router.add_get("/", index, expect_handler=meet_expectation)
    app.router.add_get("/static/{name:.*}", asset, expect_handler=meet_expectation)
