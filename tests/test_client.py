"""The command-line client end to end: ``python -m csvstore sessions|upload|files ...`` run as
a subprocess against the real server process, checked through the HTTP API."""

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

from csvstore.cli import run_client
from csvstore.config import Settings
from tests.conftest import assert_consistent, csv_bytes
from tests.serverproc import ServerProcess, free_port

API_KEY = "client-test-key-0123456789"


def run_cli(
    url: str, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[bytes]:
    """``python -m csvstore ARGS`` with CSVSTORE_URL pointing at ``url`` and no key unless given."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CSVSTORE_")}
    environ |= {"CSVSTORE_URL": url, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "csvstore", *args],
        env=environ,
        cwd=cwd,
        capture_output=True,
        timeout=120,
        check=False,
    )


def json_of(result: subprocess.CompletedProcess[bytes]) -> Any:
    assert result.stdout, result.stderr.decode()
    return json.loads(result.stdout)


def stderr_of(result: subprocess.CompletedProcess[bytes]) -> str:
    return result.stderr.decode()


def started(data_dir: Path, *args: str) -> Iterator[ServerProcess]:
    server = ServerProcess(data_dir, *args)
    server.start()
    try:
        yield server
    finally:
        assert server.stop() == 0, server.log()
    assert_consistent(Settings(data_dir=data_dir))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One open server for the module; each test uses session ids of its own."""
    yield from started(tmp_path_factory.mktemp("client") / "data")


@pytest.fixture(scope="module")
def guarded_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server that needs an API key, and that refuses every upload with 507 (it wants more
    free space than any disk has): the key, and a server-side failure, against the real thing."""
    data_dir = tmp_path_factory.mktemp("client-guarded") / "data"
    yield from started(data_dir, "--api-keys", API_KEY, "--min-free-space", "1000tb")


def session_of(server: ServerProcess, session_id: str) -> dict[str, Any]:
    response = requests.get(f"{server.url}/api/csv/sessions/{session_id}", timeout=10)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def upload_one(server: ServerProcess, session_id: str, name: str, data: bytes) -> dict[str, Any]:
    response = requests.post(
        f"{server.url}/api/csv/upload",
        files={"file": (name, data)},
        data={"session_id": session_id},
        timeout=30,
    )
    assert response.status_code == 201, response.text
    return response.json()["file"]  # type: ignore[no-any-return]


def write_csvs(folder: Path, sizes: dict[str, int]) -> dict[str, bytes]:
    """CSV files of about these many rows each; their bytes by name."""
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, rows in sizes.items():
        data = csv_bytes(rows)
        (folder / name).write_bytes(data)
        written[name] = data
    return written


def create_session(server: ServerProcess, session_id: str) -> None:
    response = requests.post(
        f"{server.url}/api/csv/sessions", json={"session_id": session_id}, timeout=10
    )
    assert response.status_code == 201, response.text


def test_sessions_create_list_show_delete(server: ServerProcess) -> None:
    url = server.url
    created = run_cli(url, "sessions", "create", "cli-s1", "--ttl", "1h")
    assert created.returncode == 0, stderr_of(created)
    assert b"cli-s1 created" in created.stdout
    assert session_of(server, "cli-s1")["expires_at"] is not None
    create_session(server, "cli-s2")

    duplicate = run_cli(url, "sessions", "create", "cli-s1", "--json")
    assert duplicate.returncode == 1
    assert json_of(duplicate)["error"]["status"] == 400
    assert "400" in stderr_of(duplicate)

    table = run_cli(url, "sessions", "list")
    assert table.returncode == 0
    assert b"cli-s1" in table.stdout
    assert b"cli-s2" in table.stdout

    shown = json_of(run_cli(url, "sessions", "show", "cli-s1", "--json"))
    assert shown["session_id"] == "cli-s1"
    assert shown["csv_files"] == []

    deleted = run_cli(url, "sessions", "delete", "cli-s1", "--json")
    assert deleted.returncode == 0
    assert json_of(deleted) == {"message": "Session deleted successfully"}
    gone = run_cli(url, "sessions", "show", "cli-s1", "--json")
    assert gone.returncode == 1
    assert json_of(gone)["error"]["status"] == 404
    assert "not found" in stderr_of(gone)


def test_sessions_list_follows_every_page(server: ServerProcess) -> None:
    ids = [f"cli-page-{i}" for i in range(5)]
    for session_id in ids:
        create_session(server, session_id)
    everything = requests.get(f"{server.url}/api/csv/sessions?limit=1000", timeout=10).json()

    listed = json_of(run_cli(server.url, "sessions", "list", "--page-size", "2", "--json"))

    names = [s["session_id"] for s in listed]
    assert set(ids) <= set(names)
    assert len(names) == len(set(names)) == len(everything)  # every page, each session once


def test_upload_a_folder_in_parallel(server: ServerProcess, tmp_path: Path) -> None:
    folder = tmp_path / "csvs"
    written = write_csvs(
        folder,
        {"a.csv": 3, "b.csv": 200, "c.CSV": 1, "big.csv": 60_000, "big2.csv": 40_000, "e.csv": 0},
    )
    (folder / "notes.txt").write_text("not a csv, not picked up from a folder")
    create_session(server, "cli-up")

    result = run_cli(server.url, "upload", "cli-up", str(folder), "--parallel", "3", "--json")

    assert result.returncode == 0, stderr_of(result)
    document = json_of(result)
    assert document["uploaded"] == len(written)
    assert document["failed"] == 0
    assert {Path(f["path"]).name for f in document["files"]} == set(written)
    assert all(f["status"] == "stored" for f in document["files"])
    rows = {Path(f["path"]).name: f["file"]["row_count"] for f in document["files"]}
    assert rows["big.csv"] == 60_000
    assert rows["b.csv"] == 200

    stored = {f["original_filename"]: f for f in session_of(server, "cli-up")["csv_files"]}
    assert set(stored) == set(written)
    for name, data in written.items():
        assert stored[name]["file_size"] == len(data)
        assert stored[name]["sha256"] == hashlib.sha256(data).hexdigest()


def test_upload_summary_sha256_and_dedupe(server: ServerProcess, tmp_path: Path) -> None:
    written = write_csvs(tmp_path, {"one.csv": 50})
    path = str(tmp_path / "one.csv")
    create_session(server, "cli-dedupe")

    first = run_cli(server.url, "upload", "cli-dedupe", path, "--sha256")
    assert first.returncode == 0, stderr_of(first)
    summary = first.stdout.decode()
    assert "one.csv" in summary
    assert "1 of 1 uploaded" in summary
    assert " 50 " in summary  # the rows column

    again = json_of(
        run_cli(server.url, "upload", "cli-dedupe", path, "--dedupe", "--resend", "--json")
    )
    assert again["files"][0]["status"] == "duplicate"
    files = session_of(server, "cli-dedupe")["csv_files"]
    assert len(files) == 1
    assert again["files"][0]["file"]["duplicate_of"] == files[0]["id"]
    assert files[0]["sha256"] == hashlib.sha256(written["one.csv"]).hexdigest()


def test_upload_again_skips_what_the_session_holds(server: ServerProcess, tmp_path: Path) -> None:
    """Running the same upload twice sends only what the session lacks (by SHA-256, whatever
    the name), and the summary says what was skipped; --resend sends everything."""
    folder = tmp_path / "csvs"
    written = write_csvs(folder, {"a.csv": 10, "b.csv": 20})
    create_session(server, "cli-rerun")
    assert run_cli(server.url, "upload", "cli-rerun", str(folder)).returncode == 0
    first_ids = {f["id"] for f in session_of(server, "cli-rerun")["csv_files"]}

    (folder / "c.csv").write_bytes(csv_bytes(30))
    (folder / "renamed-a.csv").write_bytes(written["a.csv"])  # same bytes, another name
    again = run_cli(server.url, "upload", "cli-rerun", str(folder), "--json")
    assert again.returncode == 0, stderr_of(again)
    document = json_of(again)
    by_name = {Path(f["path"]).name: f for f in document["files"]}
    assert {name: f["status"] for name, f in by_name.items()} == {
        "a.csv": "skipped",
        "b.csv": "skipped",
        "c.csv": "stored",
        "renamed-a.csv": "skipped",
    }
    assert by_name["a.csv"]["file"]["id"] in first_ids
    assert (document["uploaded"], document["skipped"], document["failed"]) == (1, 3, 0)
    files = session_of(server, "cli-rerun")["csv_files"]
    assert sorted(f["original_filename"] for f in files) == ["a.csv", "b.csv", "c.csv"]

    human = run_cli(server.url, "upload", "cli-rerun", str(folder)).stdout.decode()
    assert "0 of 4 uploaded, 4 skipped (already in the session)" in human
    assert "skipped: already in the session as" in human

    resent = json_of(
        run_cli(server.url, "upload", "cli-rerun", str(folder / "c.csv"), "--resend", "--json")
    )
    assert resent["files"][0]["status"] == "stored"
    assert len(session_of(server, "cli-rerun")["csv_files"]) == 4


def test_upload_refusals_are_reported_per_file(server: ServerProcess, tmp_path: Path) -> None:
    write_csvs(tmp_path, {"good.csv": 5})
    (tmp_path / "image.csv").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    create_session(server, "cli-mixed")

    result = run_cli(server.url, "upload", "cli-mixed", str(tmp_path), "--json")

    assert result.returncode == 1
    by_name = {Path(f["path"]).name: f for f in json_of(result)["files"]}
    assert by_name["good.csv"]["status"] == "stored"
    assert by_name["image.csv"]["status"] == "refused"
    assert by_name["image.csv"]["error"]["status"] == 400
    assert "PNG" in by_name["image.csv"]["error"]["detail"]
    assert "image.csv" in stderr_of(result)
    stored = session_of(server, "cli-mixed")["csv_files"]
    assert [f["original_filename"] for f in stored] == ["good.csv"]


def test_upload_into_an_unknown_session_is_refused(server: ServerProcess, tmp_path: Path) -> None:
    write_csvs(tmp_path, {"x.csv": 2})
    result = run_cli(server.url, "upload", "cli-no-such-session", str(tmp_path / "x.csv"))
    assert result.returncode == 1
    assert "not found" in stderr_of(result)


def test_files_show_get_and_rm(server: ServerProcess, tmp_path: Path) -> None:
    create_session(server, "cli-files")
    data = csv_bytes(1000)
    file = upload_one(server, "cli-files", "report.csv", data)

    shown = json_of(run_cli(server.url, "files", "show", file["id"], "--json"))
    assert shown == requests.get(f"{server.url}/api/csv/files/{file['id']}", timeout=10).json()
    human = run_cli(server.url, "files", "show", file["id"])
    assert file["sha256"] in human.stdout.decode()

    target = tmp_path / "out.csv"
    got = run_cli(server.url, "files", "get", file["id"], "-o", str(target), "--json")
    assert got.returncode == 0, stderr_of(got)
    assert target.read_bytes() == data
    document = json_of(got)
    assert document["verified"] is True
    assert document["bytes_received"] == len(data)
    assert document["resumed_from"] == 0

    # into a folder, under the original name; and to stdout
    folder = tmp_path / "downloads"
    folder.mkdir()
    assert run_cli(server.url, "files", "get", file["id"], "-o", str(folder)).returncode == 0
    assert (folder / "report.csv").read_bytes() == data
    piped = run_cli(server.url, "files", "get", file["id"], "-o", "-")
    assert piped.returncode == 0
    assert piped.stdout == data

    removed = run_cli(server.url, "files", "rm", file["id"])
    assert removed.returncode == 0
    assert requests.get(f"{server.url}/api/csv/files/{file['id']}", timeout=10).status_code == 404


def test_files_get_resumes_a_partial_download(server: ServerProcess, tmp_path: Path) -> None:
    create_session(server, "cli-resume")
    data = csv_bytes(80_000)  # a few MB: several chunks on each side of the cut
    file = upload_one(server, "cli-resume", "large.csv", data)
    target = tmp_path / "large.csv"
    half = len(data) // 2
    target.write_bytes(data[:half])

    resumed = run_cli(server.url, "files", "get", file["id"], "-o", str(target), "--json")

    assert resumed.returncode == 0, stderr_of(resumed)
    assert target.read_bytes() == data
    document = json_of(resumed)
    assert document["resumed_from"] == half
    assert document["bytes_received"] == len(data) - half  # only the rest came over the wire
    assert document["verified"] is True

    # complete already: nothing is fetched
    complete = json_of(run_cli(server.url, "files", "get", file["id"], "-o", str(target), "--json"))
    assert complete["bytes_received"] == 0
    assert target.read_bytes() == data

    # a local part that is not this file's beginning is found out and replaced
    target.write_bytes(b"x" * half)
    replaced = run_cli(server.url, "files", "get", file["id"], "-o", str(target), "--json")
    assert replaced.returncode == 0, stderr_of(replaced)
    assert target.read_bytes() == data
    assert json_of(replaced)["resumed_from"] == 0


def test_files_get_without_o_never_replaces_another_file(
    server: ServerProcess, tmp_path: Path
) -> None:
    """Without -o the file goes under its original name in the current folder: a different
    file already there is left alone (exit 2) unless --force; the same file is complete."""
    create_session(server, "cli-clobber")
    data = csv_bytes(500)
    file = upload_one(server, "cli-clobber", "notes.csv", data)
    mine = tmp_path / "notes.csv"
    mine.write_bytes(b"my own notes,not the server's\n")

    refused = run_cli(server.url, "files", "get", file["id"], cwd=tmp_path)
    assert refused.returncode == 2
    assert "already exists and is not this file" in stderr_of(refused)
    assert mine.read_bytes() == b"my own notes,not the server's\n"
    # a folder given with -o: the name in it is csvstore's choice too
    assert run_cli(server.url, "files", "get", file["id"], "-o", str(tmp_path)).returncode == 2
    assert mine.read_bytes() == b"my own notes,not the server's\n"

    forced = run_cli(server.url, "files", "get", file["id"], "--force", cwd=tmp_path)
    assert forced.returncode == 0, stderr_of(forced)
    assert mine.read_bytes() == data
    again = run_cli(server.url, "files", "get", file["id"], "--json", cwd=tmp_path)
    assert again.returncode == 0, stderr_of(again)
    assert json_of(again)["bytes_received"] == 0


def test_files_get_refuses_bytes_that_do_not_match(server: ServerProcess, tmp_path: Path) -> None:
    create_session(server, "cli-corrupt")
    data = csv_bytes(100)
    file = upload_one(server, "cli-corrupt", "c.csv", data)
    stored = server.data_dir / "uploads" / file["filename"]
    stored.write_bytes(data.replace(b"name", b"NAME", 1))  # same size, other bytes
    target = tmp_path / "c.csv"

    result = run_cli(server.url, "files", "get", file["id"], "-o", str(target))

    assert result.returncode == 4
    assert file["sha256"] in stderr_of(result)
    assert not target.exists()  # a corrupt file never sits under the name a script expects
    response = requests.delete(f"{server.url}/api/csv/files/{file['id']}", timeout=10)
    assert response.status_code == 200


def test_usage_errors_exit_2(server: ServerProcess, tmp_path: Path) -> None:
    for args in (
        ["upload", "s"],  # no file
        ["upload", "s", str(tmp_path / "missing.csv")],
    ):
        result = run_cli(server.url, *args)
        assert result.returncode == 2, (args, stderr_of(result))
        assert stderr_of(result).strip(), args


@pytest.mark.parametrize(
    "args",
    [
        ["upload", "s", ".", "--parallel", "0"],
        ["sessions", "rename", "a", "b"],
        ["sessions", "create", "s", "--ttl", "soon"],
        ["files", "get", "id", "-o", "-", "--json"],
        ["sessions", "list", "--url", "ftp://example.com"],
        ["files"],
    ],
)
def test_more_usage_errors_exit_2(
    args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # refused before anything is sent, so in-process (and fast); nothing listens at this URL
    environ = {"CSVSTORE_URL": f"http://127.0.0.1:{free_port()}"}
    assert run_client(args, environ) == 2
    assert capsys.readouterr().err.strip()


def test_help_documents_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_client(["upload", "--help"], {}) == 0
    help_text = capsys.readouterr().out
    assert "integrity failure" in help_text
    assert "CSVSTORE_API_KEY" in help_text


def test_server_unreachable_exits_3(tmp_path: Path) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    result = run_cli(down, "sessions", "list", "--json")
    assert result.returncode == 3
    assert json_of(result)["error"]["exit_code"] == 3
    assert "cannot connect" in stderr_of(result)
    write_csvs(tmp_path, {"a.csv": 1})
    assert run_cli(down, "upload", "s", str(tmp_path / "a.csv")).returncode == 3


def test_api_key_from_flag_and_env(guarded_server: ServerProcess) -> None:
    url = guarded_server.url
    refused = run_cli(url, "sessions", "list")
    assert refused.returncode == 1
    assert "401" in stderr_of(refused)

    created = run_cli(url, "sessions", "create", "cli-keyed", "--api-key", API_KEY)
    assert created.returncode == 0, stderr_of(created)
    listed = run_cli(url, "sessions", "list", "--json", env={"CSVSTORE_API_KEY": API_KEY})
    assert listed.returncode == 0
    assert "cli-keyed" in [s["session_id"] for s in json_of(listed)]


def test_api_key_from_a_file(guarded_server: ServerProcess, tmp_path: Path) -> None:
    """--api-key-file: the key stays out of the command line (and so out of ps)."""
    url = guarded_server.url
    key_file = tmp_path / "key"
    key_file.write_text(API_KEY + "\n")
    listed = run_cli(url, "sessions", "list", "--json", "--api-key-file", str(key_file))
    assert listed.returncode == 0, stderr_of(listed)
    # the file wins over the variable
    env = {"CSVSTORE_API_KEY": "wrong-key-0123456789"}
    assert (
        run_cli(url, "sessions", "list", "--api-key-file", str(key_file), env=env).returncode == 0
    )

    missing = run_cli(url, "sessions", "list", "--api-key-file", str(tmp_path / "nope"))
    assert missing.returncode == 2
    assert "cannot read the API key file" in stderr_of(missing)
    (tmp_path / "empty").write_text("\n")
    empty = run_cli(url, "sessions", "list", "--api-key-file", str(tmp_path / "empty"))
    assert empty.returncode == 2
    both = run_cli(url, "sessions", "list", "--api-key", API_KEY, "--api-key-file", str(key_file))
    assert both.returncode == 2


def test_server_errors_exit_3(guarded_server: ServerProcess, tmp_path: Path) -> None:
    env = {"CSVSTORE_API_KEY": API_KEY}
    response = requests.post(
        f"{guarded_server.url}/api/csv/sessions",
        json={"session_id": "cli-full"},
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=10,
    )
    assert response.status_code == 201
    write_csvs(tmp_path, {"a.csv": 10})

    result = run_cli(guarded_server.url, "upload", "cli-full", str(tmp_path), "--json", env=env)

    assert result.returncode == 3  # 507: the server's disk is (as good as) full
    [item] = json_of(result)["files"]
    assert item["status"] == "failed"
    assert item["error"]["status"] == 507
    assert "507" in stderr_of(result)


def test_uploads_past_the_servers_concurrency_limit_wait_and_are_sent_again(
    tmp_path: Path,
) -> None:
    """`--max-concurrent-uploads 1` answers the parallel uploads 429 with Retry-After: the
    client waits and sends each file again (it reported them refused), and a listing under
    `--rate-limit` is asked again the same way."""
    busy = ServerProcess(tmp_path / "data", "--max-concurrent-uploads", "1", "--rate-limit", "30/s")
    busy.start()
    try:
        written = write_csvs(tmp_path / "many", {f"f{i}.csv": 60_000 for i in range(6)})
        create_session(busy, "busy")
        result = run_cli(busy.url, "upload", "busy", str(tmp_path / "many"), "--parallel", "4")
        assert result.returncode == 0, stderr_of(result)
        stored = {f["original_filename"]: f for f in session_of(busy, "busy")["csv_files"]}
        assert sorted(stored) == sorted(written)
        assert "429" in busy.log(), "the limit was never reached: the test proves nothing"
        for _ in range(3):
            listed = run_cli(busy.url, "sessions", "list", "--json")
            assert listed.returncode == 0, stderr_of(listed)
    finally:
        assert busy.stop() == 0


def test_a_bad_url_port_is_a_usage_error_and_a_foreign_server_one_line(tmp_path: Path) -> None:
    """Not csvstore's answers (another server on that port) are one line and exit 3, not
    a KeyError traceback; a port past 65535 is a usage error (2), not a connection one."""
    import http.server
    import threading

    class Foreign(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b'{"id": "x"}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    bad = run_cli("http://127.0.0.1:99999", "sessions", "list")
    assert bad.returncode == 2, stderr_of(bad)
    assert "--url must be an http(s) URL" in stderr_of(bad)
    foreign = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Foreign)
    threading.Thread(target=foreign.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{foreign.server_address[1]}"
        result = run_cli(url, "files", "get", "x", cwd=tmp_path)
    finally:
        foreign.shutdown()
        foreign.server_close()
    assert result.returncode == 3, stderr_of(result)
    assert "is it a csvstore server?" in stderr_of(result)
    assert "Traceback" not in stderr_of(result)
