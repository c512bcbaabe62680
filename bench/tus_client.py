"""One large tus upload, for the ``tus`` scenario of bench/run.py (run in its own process).

    python -m bench.tus_client CREATE_URL FILE CHUNK_BYTES METADATA

POSTs the creation (``Upload-Length``, ``Upload-Metadata``), then PATCHes FILE in pieces of
CHUNK_BYTES (0: the whole file in one PATCH) over one keep-alive connection, each body sent
with sendfile(2) so the client costs next to nothing. Prints one JSON line: the answers'
status codes, the final Upload-Offset, the upload's URL, the Content-Location of the last
answer (csvstore's file), and the wall time from the creation to the last answer.
"""

from __future__ import annotations

import http.client
import json
import os
import sys
import time
from urllib.parse import urljoin, urlsplit

TUS = {"Tus-Resumable": "1.0.0"}


def upload(create_url: str, path: str, chunk: int, metadata: str) -> dict[str, object]:
    size = os.path.getsize(path)
    parts = urlsplit(create_url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=600)
    codes: list[int] = []
    t0 = time.perf_counter()
    conn.request(
        "POST", parts.path, headers={**TUS, "Upload-Length": str(size), "Upload-Metadata": metadata}
    )
    resp = conn.getresponse()
    resp.read()
    codes.append(resp.status)
    location = resp.getheader("Location") or ""
    if resp.status != 201 or not location:
        return {"codes": codes, "error": f"creation answered {resp.status}"}
    url = urlsplit(urljoin(create_url, location))
    offset = 0
    content_location = ""
    with open(path, "rb") as f:
        while offset < size:
            n = size - offset if chunk <= 0 else min(chunk, size - offset)
            conn.putrequest("PATCH", url.path, skip_accept_encoding=True)
            headers = {
                **TUS,
                "Upload-Offset": str(offset),
                "Content-Type": "application/offset+octet-stream",
                "Content-Length": str(n),
            }
            for k, v in headers.items():
                conn.putheader(k, v)
            conn.endheaders()
            assert conn.sock is not None
            conn.sock.sendfile(f, offset, n)
            resp = conn.getresponse()
            body = resp.read()
            codes.append(resp.status)
            if resp.status != 204:
                return {"codes": codes, "error": f"PATCH at {offset}: {resp.status} {body[:300]!r}"}
            offset = int(resp.getheader("Upload-Offset") or -1)
            content_location = resp.getheader("Content-Location") or content_location
    wall = time.perf_counter() - t0
    conn.close()
    return {
        "codes": codes,
        "offset": offset,
        "url": url.geturl(),
        "content_location": content_location,
        "wall_s": wall,
    }


def main() -> int:
    create_url, path, chunk, metadata = sys.argv[1:5]
    out = upload(create_url, path, int(chunk), metadata)
    print(json.dumps(out), flush=True)
    return 0 if "error" not in out else 1


if __name__ == "__main__":
    sys.exit(main())
