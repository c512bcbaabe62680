"""csvstore behind a real nginx (Debian's package) on loopback, configured as
docs/deployment.md says: uploads stream through unbuffered, a tus upload cut at the proxy
resumes, Link and Location are relative and followed through the proxy, and with
--trusted-proxies the access log names the client the proxy saw, never a forged address.

Clients reach nginx from other loopback addresses (127.0.0.5, ...: Linux routes all of
127.0.0.0/8 to lo) so the client's address differs from the proxy's 127.0.0.1."""

from __future__ import annotations

import base64
import contextlib
import getpass
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import pytest
import requests
from aiohttp import web

from csvstore.web.proxies import forwarded_middleware, parse_networks
from tests.serverproc import ServerProcess, free_port

NGINX = shutil.which("nginx") or next(
    (p for p in ("/usr/sbin/nginx", "/sbin/nginx") if os.access(p, os.X_OK)), None
)
# .ci/run installs nginx and sets CSVSTORE_REQUIRE_NGINX: there a missing nginx fails.
pytestmark = pytest.mark.skipif(
    NGINX is None and not os.environ.get("CSVSTORE_REQUIRE_NGINX"),
    reason="nginx is not installed (.ci/run installs it)",
)

MiB = 1024 * 1024
CLIENT = "127.0.0.5"  # the address nginx sees the client at
FORGED = "203.0.113.66"  # what a client claims in X-Forwarded-For

LOCATION = """
            proxy_pass http://127.0.0.1:{upstream};
            proxy_http_version 1.1;
            proxy_buffering off;
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_read_timeout 1h;
            proxy_send_timeout 1h;
"""

CONF = """
worker_processes 1;
user {user};
pid {prefix}/nginx.pid;
daemon off;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/client_body_temp;
    proxy_temp_path {prefix}/proxy_temp;
    fastcgi_temp_path {prefix}/fastcgi_temp;
    uwsgi_temp_path {prefix}/uwsgi_temp;
    scgi_temp_path {prefix}/scgi_temp;
    server {{
        listen 127.0.0.1:{port};
        client_max_body_size 0;
        client_body_timeout 1h;
        location / {{
            proxy_request_buffering off;
{location}
        }}
        # The control: nginx's default request buffering, which spools bodies to disk.
        location /buffered/ {{
            rewrite ^/buffered(/.*)$ $1 break;
{location}
        }}
    }}
}}
"""


def _directives(conf: str) -> set[str]:
    """The directives of an nginx configuration text, comments and spacing aside; where the
    test and a deployment must differ (addresses, TLS) left out."""
    found = set()
    for line in conf.splitlines():
        words = line.split("#", 1)[0].strip().removesuffix(";").split()
        if line.split("#", 1)[0].strip().endswith(";") and words[0] not in DIFFERENT:
            found.add(" ".join(words))
    return found


DIFFERENT = {"listen", "server_name", "ssl_certificate", "ssl_certificate_key", "proxy_pass"}


def test_the_documented_configuration_is_the_tested_one() -> None:
    """docs/deployment.md's nginx block has exactly the directives of the server block and
    the ``location /`` this file runs (the control location and paths aside)."""
    doc = (Path(__file__).resolve().parent.parent / "docs" / "deployment.md").read_text()
    block = doc.split("```nginx", 1)[1].split("```", 1)[0]
    tested = CONF.split("server {{", 1)[1].split("# The control", 1)[0]
    tested = tested.replace("{location}", LOCATION.format(upstream=8000))
    assert _directives(block) == _directives(tested)
    assert "proxy_request_buffering off" in _directives(block)


class Nginx:
    def __init__(self, prefix: Path, upstream: int) -> None:
        self.prefix = prefix
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        conf = CONF.format(
            user=getpass.getuser(),
            prefix=prefix,
            port=self.port,
            location=LOCATION.format(upstream=upstream),
        )
        (prefix / "nginx.conf").write_text(conf)
        self.log = (prefix / "stderr.log").open("wb")
        assert NGINX is not None
        self.proc = subprocess.Popen(
            [NGINX, "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-e", "stderr"],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError((prefix / "stderr.log").read_text()) from None
                time.sleep(0.05)

    def spooled(self, folder: str = "client_body_temp") -> int:
        """Bytes in nginx's temp files (request bodies, or proxy_temp: responses). nginx
        unlinks them as soon as they are made, so the folder looks empty: the workers' open
        descriptors show them."""
        workers = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        total = 0
        for pid in [self.proc.pid, *map(int, workers.split())]:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd).startswith(str(self.prefix / folder)):
                        total += fd.stat().st_size
        return total

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=15)
        self.log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(
        Path(tmp_path_factory.mktemp("proxied")) / "data", "--trusted-proxies", "127.0.0.1"
    )
    proc.start()
    requests.post(f"{proc.url}/api/csv/sessions", json={"session_id": "p"}, timeout=30)
    yield proc
    assert proc.stop() == 0


@pytest.fixture(scope="module")
def nginx(server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nginx]:
    proxy = Nginx(Path(tmp_path_factory.mktemp("nginx")), server.port)
    yield proxy
    proxy.stop()


def _session_from(address: str) -> requests.Session:
    """A requests session whose connections leave from ``address``."""
    http = requests.Session()
    adapter = requests.adapters.HTTPAdapter()
    adapter.init_poolmanager(10, 10, source_address=(address, 0))
    http.mount("http://", adapter)
    return http


def _multipart(
    total: int, nginx: Nginx, seen: list[int], *, control: bool = False
) -> Iterator[bytes]:
    """An upload form of ``total`` CSV bytes, checking nginx's body temp files as it goes."""
    yield b'--b\r\nContent-Disposition: form-data; name="session_id"\r\n\r\np\r\n'
    yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="big.csv"\r\n'
    yield b"Content-Type: text/csv\r\n\r\nid,name,amount\n"
    block = b"".join(b"%d,name %d,%d.50\n" % (i, i, i) for i in range(40_000))[: MiB - 16]
    block = block[: block.rindex(b"\n") + 1]
    sent = 0
    while sent + len(block) <= total:
        yield block
        sent += len(block)
        if sent % (16 * len(block)) == 0 or sent <= 2 * len(block):
            time.sleep(0.1)  # let nginx take (and, if it buffered, spool) what was sent
            seen.append(nginx.spooled())
            deadline = time.monotonic() + 3
            while control and not seen[-1] and time.monotonic() < deadline:
                time.sleep(0.05)  # a loaded machine: the control waits for nginx's spool
                seen[-1] = nginx.spooled()
    yield b"\r\n--b--\r\n"


def test_a_large_upload_streams_through_nginx_unbuffered(
    server: ServerProcess, nginx: Nginx
) -> None:
    seen: list[int] = []
    resp = _session_from(CLIENT).post(
        f"{nginx.url}/api/csv/upload",
        data=_multipart(200 * MiB, nginx, seen),
        headers={"Content-Type": "multipart/form-data; boundary=b"},
        timeout=300,
    )
    assert resp.status_code == 201, resp.text
    assert resp.headers["Location"] == f"/api/csv/files/{resp.json()['file']['id']}"
    assert resp.json()["file"]["file_size"] > 199 * MiB
    assert len(seen) >= 10
    assert seen == [0] * len(seen), seen  # nothing spooled to disk while it streamed
    # The control: the same measurement sees nginx's default buffering spool the body.
    control: list[int] = []
    requests.post(
        f"{nginx.url}/buffered/api/csv/upload",
        data=_multipart(4 * MiB, nginx, control, control=True),
        headers={"Content-Type": "multipart/form-data; boundary=b"},
        timeout=60,
    )
    assert max(control) > 0, control
    # And back: the download streams too (proxy_buffering off), nothing in proxy_temp.
    file_id = resp.json()["file"]["id"]
    with requests.get(f"{nginx.url}/api/csv/files/{file_id}/content", stream=True) as down:
        received, spooled = 0, []
        for chunk in down.iter_content(MiB):
            received += len(chunk)
            if received % (32 * MiB) < MiB:
                time.sleep(0.1)
                spooled.append(nginx.spooled("proxy_temp"))
    assert received == resp.json()["file"]["file_size"]
    assert len(spooled) >= 4
    assert spooled == [0] * len(spooled), spooled


def test_a_tus_upload_cut_at_the_proxy_resumes(server: ServerProcess, nginx: Nginx) -> None:
    body = b"id,value\n" + b"".join(b"%d,%d\n" % (i, i * 7) for i in range(400_000))
    meta = ",".join(
        f"{k} {base64.b64encode(v.encode()).decode()}"
        for k, v in (("filename", "cut.csv"), ("session_id", "p"))
    )
    tus = {"Tus-Resumable": "1.0.0"}
    created = requests.post(
        f"{nginx.url}/api/csv/tus/",
        headers={**tus, "Upload-Length": str(len(body)), "Upload-Metadata": meta},
        timeout=30,
    )
    assert created.status_code == 201, created.text
    location = created.headers["Location"]
    assert location.startswith("/api/csv/tus/")  # relative: no scheme, no host
    # A PATCH that stops half way and drops its connection, as a client losing its network.
    half = len(body) // 2
    with socket.create_connection(("127.0.0.1", nginx.port)) as cut:
        cut.sendall(
            f"PATCH {location} HTTP/1.1\r\nHost: 127.0.0.1\r\nTus-Resumable: 1.0.0\r\n"
            "Content-Type: application/offset+octet-stream\r\nUpload-Offset: 0\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body[:half]
        )
        time.sleep(1.0)
    url = urljoin(nginx.url, location)
    deadline = time.monotonic() + 30
    while True:  # the server settles the cut PATCH once nginx passes the connection's end
        probe = requests.head(url, headers=tus, timeout=30)
        settled = probe.status_code == 200 and int(probe.headers["Upload-Offset"]) > 0
        if settled or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert probe.status_code == 200, probe.headers
    offset = int(probe.headers["Upload-Offset"])
    assert 0 < offset <= half  # the bytes that made it through the proxy were kept
    done = requests.patch(
        url,
        data=body[offset:],
        headers={
            **tus,
            "Content-Type": "application/offset+octet-stream",
            "Upload-Offset": str(offset),
        },
        timeout=60,
    )
    assert done.status_code == 204, done.text
    file_url = urljoin(nginx.url, done.headers["Content-Location"])
    stored = requests.get(f"{file_url}/content", timeout=60)
    assert stored.content == body


def test_the_listing_link_is_relative_and_followed_through_the_proxy(
    server: ServerProcess, nginx: Nginx
) -> None:
    wanted = {f"link-{i}" for i in range(5)}
    for session_id in wanted:
        made = requests.post(
            f"{nginx.url}/api/csv/sessions",
            json={"session_id": session_id},
            headers={"X-Forwarded-Proto": "https"},
            timeout=30,
        )
        assert made.headers["Location"] == f"/api/csv/sessions/{session_id}"
    url, seen, pages = f"{nginx.url}/api/csv/sessions?limit=2", set(), 0
    while url:
        page = requests.get(url, headers={"X-Forwarded-Proto": "https"}, timeout=30)
        assert page.status_code == 200
        seen |= {s["session_id"] for s in page.json()}
        pages += 1
        link = page.links.get("next", {}).get("url")
        assert link is None or link.startswith("/api/csv/sessions?")
        url = urljoin(url, link) if link else ""
    assert wanted <= seen
    assert pages >= 3


def _access_lines(server: ServerProcess, marker: str) -> list[str]:
    return [line for line in server.log().splitlines() if marker in line]


def test_the_access_log_names_the_client_the_proxy_saw(server: ServerProcess, nginx: Nginx) -> None:
    # Through nginx, with a forged X-Forwarded-For: nginx appends the real peer, which wins.
    via = _session_from(CLIENT).get(
        f"{nginx.url}/api/csv/sessions?limit=1",
        headers={"X-Forwarded-For": FORGED, "X-Request-ID": "via-proxy"},
        timeout=30,
    )
    assert via.status_code == 200
    # Straight to the server from an address not in --trusted-proxies: the header is ignored.
    direct = _session_from("127.0.0.9").get(
        f"{server.url}/api/csv/sessions?limit=1",
        headers={"X-Forwarded-For": FORGED, "X-Request-ID": "direct"},
        timeout=30,
    )
    assert direct.status_code == 200
    time.sleep(0.2)
    [proxied] = _access_lines(server, "id=via-proxy")
    [straight] = _access_lines(server, "id=direct")
    assert f" {CLIENT} GET /api/csv/sessions" in proxied, proxied
    assert " 127.0.0.9 GET /api/csv/sessions" in straight, straight
    assert FORGED not in proxied + straight


def test_the_limiter_counts_each_client_the_proxy_saw(tmp_path: Path) -> None:
    """--rate-limit per address behind nginx: two clients of one proxy each have their own
    allowance (were the proxy's address counted, the second would be refused at once)."""
    limited = ServerProcess(
        tmp_path / "data", "--trusted-proxies", "127.0.0.1", "--rate-limit", "2/m"
    )
    limited.start()
    try:
        (tmp_path / "nginx").mkdir()
        proxy = Nginx(tmp_path / "nginx", limited.port)
        try:
            for client in (CLIENT, "127.0.0.6"):
                http = _session_from(client)
                url = f"{proxy.url}/api/csv/sessions"
                statuses = [http.get(url, timeout=30).status_code for _ in range(3)]
                assert statuses == [200, 200, 429], (client, statuses)
        finally:
            proxy.stop()
    finally:
        assert limited.stop() == 0


def test_a_bad_trusted_proxies_value_is_named_by_the_real_process() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "csvstore", "--trusted-proxies", "10.0.0.0/8,proxy.example"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "--trusted-proxies: not an IP address or network: 'proxy.example'" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("trusted", "headers", "remote", "scheme"),
    [
        # The test client's peer is 127.0.0.1.
        ("127.0.0.1", {"X-Forwarded-For": "198.51.100.7", "X-Forwarded-Proto": "https"},
         "198.51.100.7", "https"),
        ("10.0.0.0/8", {"X-Forwarded-For": "198.51.100.7", "X-Forwarded-Proto": "https"},
         "127.0.0.1", "http"),  # an untrusted peer's headers are ignored
        ("127.0.0.0/8,10.0.0.0/8", {"X-Forwarded-For": f"{FORGED}, 198.51.100.7, 10.1.2.3"},
         "198.51.100.7", "http"),  # the rightmost untrusted hop, not what the client wrote
        ("127.0.0.1,10.0.0.0/8", {"X-Forwarded-For": "junk, 10.1.2.3"}, "10.1.2.3", "http"),
        ("127.0.0.1", {"X-Forwarded-Proto": "gopher"}, "127.0.0.1", "http"),
    ],
)  # fmt: skip
async def test_the_forwarded_middleware_believes_only_trusted_hops(
    aiohttp_client: Any, trusted: str, headers: dict[str, str], remote: str, scheme: str
) -> None:
    # The real middleware around a handler that shows what the application sees.
    async def echo(request: web.Request) -> web.Response:
        return web.json_response({"remote": request.remote, "scheme": request.scheme})

    app = web.Application(middlewares=[forwarded_middleware(parse_networks(trusted))])
    app.router.add_get("/", echo)
    client = await aiohttp_client(app)
    seen = await (await client.get("/", headers=headers)).json()
    assert seen == {"remote": remote, "scheme": scheme}
