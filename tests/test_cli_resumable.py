"""The command-line client resumes large uploads by default (tus), through dropped connections."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.serverproc import ServerProcess
from tests.tusproxy import DroppingProxy

SIZE = 10 * 1024 * 1024  # above the client's 8 MiB threshold for resumable uploads


def run_cli(url: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CSVSTORE_")}
    return subprocess.run(
        [sys.executable, "-m", "csvstore", *args, "--json"],
        env={**environ, "CSVSTORE_URL": url},
        capture_output=True,
        timeout=300,
        check=False,
    )


def big_csv(path: Path) -> bytes:
    rows = [b"id,name,amount\n"]
    total = i = 0
    while total < SIZE:
        rows.append(f"{i},name {i},{i * 0.5:.1f}\n".encode())
        total += len(rows[-1])
        i += 1
    body = b"".join(rows)
    path.write_bytes(body)
    return body


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(Path(tmp_path_factory.mktemp("cli-tus")) / "data")
    proc.start()
    requests.post(f"{proc.url}/api/csv/sessions", json={"session_id": "c"}, timeout=30)
    yield proc
    assert proc.stop() == 0


@pytest.mark.parametrize("sha256", [False, True], ids=["plain", "checksums"])
def test_a_large_upload_resumes_through_dropped_connections(
    server: ServerProcess, tmp_path: Path, sha256: bool
) -> None:
    path = tmp_path / "big.csv"
    body = big_csv(path)
    with DroppingProxy(server.port, [SIZE * 3 // 10, SIZE * 7 // 10]) as proxy:
        extra = ["--sha256"] if sha256 else []
        result = run_cli(proxy.url, "upload", "c", str(path), *extra)
        assert proxy.cuts == 2
    assert result.returncode == 0, result.stderr.decode()
    report: dict[str, Any] = json.loads(result.stdout)
    [item] = report["files"]
    assert item["status"] == "stored"
    file_id = item["file"]["id"]
    assert item["file"]["sha256"] == hashlib.sha256(body).hexdigest()
    stored = requests.get(f"{server.url}/api/csv/files/{file_id}/content", timeout=60)
    assert stored.content == body


def test_without_resume_a_dropped_connection_fails_the_file(
    server: ServerProcess, tmp_path: Path
) -> None:
    path = tmp_path / "big.csv"
    big_csv(path)
    with DroppingProxy(server.port, [SIZE // 2]) as proxy:
        result = run_cli(proxy.url, "upload", "c", str(path), "--no-resume")
    assert result.returncode == 3, result.stderr.decode()
    [item] = json.loads(result.stdout)["files"]
    assert item["status"] == "failed"


def test_dedupe_reports_a_resumed_duplicate(server: ServerProcess, tmp_path: Path) -> None:
    path = tmp_path / "twice.csv"
    big_csv(path)
    requests.post(f"{server.url}/api/csv/sessions", json={"session_id": "d"}, timeout=30)
    first = json.loads(run_cli(server.url, "upload", "d", str(path), "--dedupe").stdout)
    again = json.loads(run_cli(server.url, "upload", "d", str(path), "--dedupe").stdout)
    assert first["files"][0]["status"] == "stored"
    assert again["files"][0]["status"] == "duplicate"
    assert again["files"][0]["file"]["id"] == first["files"][0]["file"]["id"]
