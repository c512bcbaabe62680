"""The web page at ``/``: the files in ``static/`` as they are (no build, no CDN)."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from csvstore.web.problems import meet_expectation

STATIC_DIR = Path(__file__).parent / "static"
# Revalidated every time (a 304 from the ETag): an old script must not meet a new API.
_REVALIDATE = {"Cache-Control": "no-cache"}


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "index.html", headers=_REVALIDATE)


def setup_webpage(app: web.Application) -> None:
    app.router.add_get("/", index, expect_handler=meet_expectation)
    app.router.add_static("/static/", STATIC_DIR, name="static", expect_handler=meet_expectation)
