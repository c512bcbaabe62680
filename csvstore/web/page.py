"""The web page at ``/``: plain HTML, CSS and JavaScript shipped in the package.

No build step and no CDN: the files in ``static/`` are what the browser runs. They sit outside
``/api``, so the page loads without an API key and asks for one when the API answers 401.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

STATIC_DIR = Path(__file__).parent / "static"
# The page is tiny and changes with every release: let browsers revalidate it each time
# (FileResponse answers 304 from its ETag) rather than run an old script against a new API.
_REVALIDATE = {"Cache-Control": "no-cache"}


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "index.html", headers=_REVALIDATE)


def setup_webpage(app: web.Application) -> None:
    app.router.add_get("/", index)
    app.router.add_static("/static/", STATIC_DIR, name="static")
