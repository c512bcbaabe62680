"""The benchmark's reference server: the best this stack (aiohttp on one process) can do.

``POST /api/csv/upload`` reads the multipart form, streams the ``file`` part into a new
file in ``--dir`` in 1 MiB chunks and answers 200 with a tiny JSON body. There is no
database, no validation and no fsync: whatever csvstore does on top of this is what the
ratios in the benchmark measure.

It also answers ``GET /api/csv/sessions`` (``[]``) and ``POST /api/csv/sessions`` (201)
so that the harness can treat it like csvstore for readiness checks and set-up; neither
touches the disk.

Run it as ``python -m bench.baseline_server --host 127.0.0.1 --port 8001 --dir /tmp/x``.
"""

from __future__ import annotations

import argparse
import os
import uuid
from pathlib import Path

from aiohttp import BodyPartReader, web

CHUNK = 1024 * 1024
DIR_KEY = web.AppKey("dir", Path)
_OK = b'{"message":"File uploaded successfully"}'


async def upload(request: web.Request) -> web.Response:
    reader = await request.multipart()
    size = -1
    while True:
        part = await reader.next()
        if part is None:
            break
        if not isinstance(part, BodyPartReader):  # nested multipart: not ours
            return web.Response(status=400, text="nested multipart")
        if part.name == "file" and size < 0:
            path = request.app[DIR_KEY] / f"{uuid.uuid4().hex}.csv"
            size = 0
            # Plain blocking writes on the event loop: into the page cache, with large
            # chunks, this is the cheapest way Python can put the bytes on disk.
            with path.open("wb") as out:
                while chunk := await part.read_chunk(CHUNK):
                    out.write(chunk)
                    size += len(chunk)
        else:
            await part.read()  # small fields (session_id): read and drop
    if size < 0:
        return web.Response(status=400, text="no file part")
    return web.Response(body=_OK, content_type="application/json")


async def list_sessions(request: web.Request) -> web.Response:
    return web.Response(body=b"[]", content_type="application/json")


async def create_session(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(status=201, body=b"{}", content_type="application/json")


def make_app(directory: Path) -> web.Application:
    app = web.Application()
    app[DIR_KEY] = directory
    app.router.add_post("/api/csv/upload", upload)
    app.router.add_get("/api/csv/sessions", list_sessions)
    app.router.add_post("/api/csv/sessions", create_session)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--dir", type=Path, required=True, help="where uploads are written")
    args = parser.parse_args(argv)
    directory: Path = args.dir
    os.makedirs(directory, exist_ok=True)
    loop_factory = None
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is there on Linux
        pass
    else:
        loop_factory = uvloop.new_event_loop
    web.run_app(
        make_app(directory),
        host=args.host,
        port=args.port,
        access_log=None,
        print=None,
        loop=loop_factory() if loop_factory else None,
    )


if __name__ == "__main__":
    main()
