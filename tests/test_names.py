"""File names in and out, with real clients against the real server process: curl, requests
and httpie send a multipart file name as it is, so the server keeps it as sent (no
percent-decoding), and a download's ASCII fallback is a readable transliteration."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
import requests
from httpie.downloads import filename_from_content_disposition

from csvstore.web.download import content_disposition
from tests.conftest import Client, assert_problem, raw_multipart
from tests.serverproc import ServerProcess

NAMES = ["report%2041%.csv", "a%2Fb.csv"]
BODY = b"id,name\n1,a\n2,b\n"
HTTPIE = Path(sys.executable).parent / "http"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(Path(tmp_path_factory.mktemp("names")) / "data")
    proc.start()
    for session in ("curl", "requests", "httpie", "download"):
        requests.post(f"{proc.url}/api/csv/sessions", json={"session_id": session}, timeout=30)
    yield proc
    assert proc.stop() == 0


def _upload(client: str, url: str, path: Path) -> dict[str, Any]:
    upload = f"{url}/api/csv/upload"
    if client == "requests":
        with path.open("rb") as handle:
            resp = requests.post(
                upload, data={"session_id": client}, files={"file": handle}, timeout=30
            )
        return dict(resp.json())
    if client == "curl":
        command = ["curl", "-sS", "-F", f"session_id={client}", "-F", f"file=@{path.name}", upload]
    else:
        command = [str(HTTPIE), "--ignore-stdin", "--form", "POST", upload]
        command += [f"session_id={client}", f"file@{path.name}"]
    out = subprocess.run(command, cwd=path.parent, capture_output=True, check=True, timeout=60)
    return dict(json.loads(out.stdout))


@pytest.mark.parametrize("client", ["curl", "requests", "httpie"])
@pytest.mark.parametrize("name", NAMES)
def test_a_name_with_percent_escapes_is_kept_as_sent(
    server: ServerProcess, tmp_path: Path, client: str, name: str
) -> None:
    if client == "curl" and shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    path = tmp_path / name
    path.write_bytes(BODY + name.encode())  # distinct bytes: not a duplicate of another test
    body = _upload(client, server.url, path)
    assert body["file"]["original_filename"] == name, body
    resp = requests.get(f"{server.url}/api/csv/files/{body['file']['id']}", timeout=30)
    assert resp.status_code == 200
    assert resp.json()["original_filename"] == name
    download = requests.get(f"{server.url}/api/csv/files/{body['file']['id']}/content", timeout=30)
    disposition = download.headers["Content-Disposition"]
    assert unquote(disposition.split("filename*=UTF-8''")[1]) == name


def test_a_non_ascii_name_downloads_with_curl_as_readable_ascii(
    server: ServerProcess, tmp_path: Path
) -> None:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    name = "Λεωνίδας.csv"
    files = {"file": (name, BODY, "text/csv")}
    resp = requests.post(
        f"{server.url}/api/csv/upload", data={"session_id": "download"}, files=files, timeout=30
    )
    file = resp.json()["file"]
    assert file["original_filename"] == name
    out = tmp_path / "out"
    out.mkdir()
    content = f"{server.url}/api/csv/files/{file['id']}/content"
    subprocess.run(["curl", "-sS", "-OJ", content], cwd=out, check=True, timeout=60)
    assert os.listdir(out) == ["Leonidas.csv"]
    assert (out / "Leonidas.csv").read_bytes() == BODY
    disposition = requests.get(content, timeout=30).headers["Content-Disposition"]
    assert unquote(disposition.split("filename*=UTF-8''")[1]) == name


@pytest.mark.parametrize(
    ("disposition", "stored"),
    [
        # RFC 8187's filename* is the exact name and wins over the fallback next to it.
        ("filename=\"L.csv\"; filename*=UTF-8''%CE%9B%20%2541.csv", "Λ %41.csv"),
        ('filename="a%22b.csv"', 'a"b.csv'),  # the WHATWG escape browsers and curl write for "
        ('filename="a\\"b%20c.csv"', 'a"b%20c.csv'),  # backslash-quoted: no % decoding either
        # a quoted name holding "; filename*=" is a name, not a parameter (was read as one)
        ("filename=\"x; filename*=UTF-8''y.csv; z.csv\"", "x; filename*=UTF-8''y.csv; z.csv"),
    ],
)
def test_filename_star_and_quoting_rules(
    server: ServerProcess, disposition: str, stored: str
) -> None:
    body = (
        b'--b\r\nContent-Disposition: form-data; name="session_id"\r\n\r\nrequests\r\n'
        + f'--b\r\nContent-Disposition: form-data; name="file"; {disposition}\r\n'.encode()
        + b"Content-Type: text/csv\r\n\r\n"
        + BODY
        + disposition.encode()
        + b"\r\n--b--\r\n"
    )
    resp = requests.post(
        f"{server.url}/api/csv/upload",
        data=body,
        headers={"Content-Type": "multipart/form-data; boundary=b"},
        timeout=30,
    )
    assert resp.status_code == 201, resp.text
    assert resp.json()["file"]["original_filename"] == stored


def test_a_non_ascii_name_downloads_with_httpie_as_readable_ascii(server: ServerProcess) -> None:
    files = {"file": ("Ωμέγα.csv", BODY + b"3,c\n", "text/csv")}
    resp = requests.post(
        f"{server.url}/api/csv/upload", data={"session_id": "download"}, files=files, timeout=30
    )
    file_id = resp.json()["file"]["id"]
    download = requests.get(f"{server.url}/api/csv/files/{file_id}/content", timeout=30)
    # httpie --download's own choice of name (it writes to stdout when that is not a tty).
    chosen = filename_from_content_disposition(download.headers["Content-Disposition"])
    assert chosen == "Omega.csv"


async def test_a_filename_star_in_an_unknown_charset_is_a_400(client: Client, session: str) -> None:
    body, headers = raw_multipart(
        ('form-data; name="session_id"', session.encode()),
        ("form-data; name=\"file\"; filename*=klingon-8''x%FF.csv", BODY),
    )
    resp = await client.post("/api/csv/upload", data=body, headers=headers)
    problem = await assert_problem(resp, 400)
    assert "filename*" in problem["detail"]


def test_the_ascii_fallback_never_has_a_folder_in_it(server: ServerProcess) -> None:
    files = {"file": ("½ a\u2215b.csv", BODY + b"4,d\n", "text/csv")}
    resp = requests.post(
        f"{server.url}/api/csv/upload", data={"session_id": "download"}, files=files, timeout=30
    )
    file_id = resp.json()["file"]["id"]
    download = requests.get(f"{server.url}/api/csv/files/{file_id}/content", timeout=30)
    disposition = download.headers["Content-Disposition"]
    assert 'filename="1_2 a_b.csv"' in disposition
    assert unquote(disposition.split("filename*=UTF-8''")[1]) == "½ a\u2215b.csv"


@pytest.mark.parametrize(
    ("name", "fallback"),
    [
        ("emoji😀.csv", "emoji_grinning_.csv"),  # anyascii: ':grinning:'
        ('a<b>c:d"e|f?g*h\\i/j.csv', "a_b_c_d_e_f_g_h_i_j.csv"),
        ("Λεωνίδας.csv", "Leonidas.csv"),
        ("con.csv", "_con.csv"),  # a device name, whatever the case and extension
        ("COM1.backup.csv", "_COM1.backup.csv"),
        ("CONSOLE.csv", "CONSOLE.csv"),
    ],
)
def test_the_ascii_fallback_name_is_one_windows_accepts(name: str, fallback: str) -> None:
    disposition = content_disposition(name)
    assert disposition.startswith(f'attachment; filename="{fallback}"; '), disposition
    assert unquote(disposition.split("filename*=UTF-8''")[1]) == name
