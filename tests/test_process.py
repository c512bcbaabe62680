"""The real ``python -m csvstore`` process: the README's usage, unchanged, and its settings."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from csvstore.commandline import build_parser, settings_from
from csvstore.config import Settings
from csvstore.config_values import GiB, parse_size
from csvstore.storage.local import JOURNAL_MAX
from tests.conftest import assert_consistent
from tests.serverproc import ServerProcess


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def server(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """``python -m csvstore`` on a free port and a temp data dir; stopped after the test.

    Parametrise indirectly with extra command-line arguments (e.g. ``["--workers", "2"]``).
    """
    extra_args: list[str] = getattr(request, "param", [])
    port = free_port()
    env = {**os.environ, "CSVSTORE_DATA_DIR": str(tmp_path / "data"), "CSVSTORE_PORT": str(port)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "csvstore", *extra_args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                requests.get(f"{base}/api/csv/sessions", timeout=1)
                break
            except requests.ConnectionError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    out = proc.stdout.read().decode() if proc.stdout else ""
                    raise RuntimeError(f"server did not start:\n{out}") from None
                time.sleep(0.05)
        yield base
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code: int | None = proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            code = None
        if proc.stdout:
            proc.stdout.close()
    assert code == 0, "the server did not stop cleanly on SIGTERM"
    assert_consistent(Settings(data_dir=tmp_path / "data"))


def test_requests_example_from_the_spec(server: str, tmp_path: Path) -> None:
    data_csv = tmp_path / "data.csv"
    data_csv.write_bytes(b"id,name\n1,alice\n2,bob\n")
    created = requests.post(f"{server}/api/csv/sessions", json={"session_id": "my_session_123"})
    assert created.status_code == 201
    with open(data_csv, "rb") as f:
        uploaded = requests.post(
            f"{server}/api/csv/upload", files={"file": f}, data={"session_id": "my_session_123"}
        )
    assert uploaded.status_code == 201, uploaded.text
    session = requests.get(f"{server}/api/csv/sessions/my_session_123").json()
    assert session["session_id"] == "my_session_123"
    [file] = session["csv_files"]
    assert file["original_filename"] == "data.csv"
    assert file["file_size"] == data_csv.stat().st_size
    assert file == uploaded.json()["file"]


def test_curl_example_from_the_spec(server: str, tmp_path: Path) -> None:
    data_csv = tmp_path / "data.csv"
    data_csv.write_bytes(b"a;b\r\n1;2\r\n")
    requests.post(f"{server}/api/csv/sessions", json={"session_id": "my_session_123"})
    out = subprocess.run(
        [
            "curl",
            "-sS",
            "-w",
            "\n%{http_code}",
            "-F",
            f"file=@{data_csv}",
            "-F",
            "session_id=my_session_123",
            f"{server}/api/csv/upload",
        ],
        capture_output=True,
        check=True,
        text=True,
    ).stdout
    body, status = out.rsplit("\n", 1)
    assert status == "201", body
    assert '"original_filename":"data.csv"' in body
    files = requests.get(f"{server}/api/csv/sessions/my_session_123").json()["csv_files"]
    assert len(files) == 1


def test_docs_and_openapi_are_served(server: str) -> None:
    docs = requests.get(f"{server}/docs")
    assert docs.status_code == 200
    assert "swagger" in docs.text.lower()
    assert "cdn" not in docs.text.lower()
    assert requests.get(f"{server}/docs/static/swagger-ui-bundle.js").status_code == 200
    spec = requests.get(f"{server}/openapi.json").json()
    assert spec["openapi"].startswith("3.")
    assert "/api/csv/upload" in spec["paths"]


def test_help_explains_every_setting() -> None:
    text = build_parser().format_help()
    for name in ("--host", "--port", "--data-dir", "--max-upload-size", "--log-level"):
        assert name in text
    for env in ("CSVSTORE_HOST", "CSVSTORE_PORT", "CSVSTORE_DATA_DIR", "CSVSTORE_MAX_UPLOAD_SIZE"):
        assert env in text
    out = subprocess.run(
        [sys.executable, "-m", "csvstore", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "CSVSTORE_MAX_UPLOAD_SIZE" in out


def test_settings_flags_beat_env_beat_defaults() -> None:
    assert settings_from([], {}) == Settings()
    env = {"CSVSTORE_PORT": "9001", "CSVSTORE_MAX_UPLOAD_SIZE": "2GiB", "CSVSTORE_HOST": "::1"}
    from_env = settings_from([], env)
    assert (from_env.port, from_env.max_upload_size, from_env.host) == (9001, 2 * GiB, "::1")
    both = settings_from(["--port", "9002", "--data-dir", "/srv/x", "--log-level", "DEBUG"], env)
    assert (both.port, both.data_dir, both.log_level) == (9002, Path("/srv/x"), "debug")
    assert both.max_upload_size == 2 * GiB


def test_bad_settings_exit_with_a_message() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "csvstore", "--max-upload-size", "lots"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "not a size" in proc.stderr


def test_journal_interval_setting() -> None:
    assert Settings().journal_interval == 1.0
    assert settings_from(["--journal-interval", "0.25"], {}).journal_interval == 0.25
    assert settings_from([], {"CSVSTORE_JOURNAL_INTERVAL": "2m"}).journal_interval == 120
    proc = subprocess.run(
        [sys.executable, "-m", "csvstore", "--journal-interval", "0"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "the journal interval is 0.01 s to 1 day" in proc.stderr


def test_io_threads_setting() -> None:
    assert Settings().io_threads == 32
    assert settings_from(["--io-threads", "4"], {}).io_threads == 4
    assert settings_from([], {"CSVSTORE_IO_THREADS": "64"}).io_threads == 64
    proc = subprocess.run(
        [sys.executable, "-m", "csvstore", "--io-threads", "0"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "io threads must be between 1 and 1024" in proc.stderr


def test_blocking_file_work_runs_on_the_configured_threads(tmp_path: Path) -> None:
    """Concurrent uploads into the real process: their writes, fsyncs and renames run on
    as many worker threads as ``--io-threads`` allows, and on no more. (Over JOURNAL_MAX:
    smaller files are written on the event loop and need no thread.)"""
    body = b"id,name\n" + b"".join(b"%d,n%d\n" % (i, i) for i in range(10_000))
    assert len(body) > JOURNAL_MAX

    def threads_after_load(io_threads: int) -> int:
        server = ServerProcess(tmp_path / f"data{io_threads}", "--io-threads", str(io_threads))
        server.start()
        try:
            assert server.proc is not None
            url = server.url
            requests.post(f"{url}/api/csv/sessions", json={"session_id": "t"}, timeout=10)

            def upload(i: int) -> int:
                files = {"file": (f"f{i}.csv", body, "text/csv")}
                form = {"session_id": "t"}
                return requests.post(
                    f"{url}/api/csv/upload", data=form, files=files, timeout=30
                ).status_code

            with ThreadPoolExecutor(16) as pool:
                assert set(pool.map(upload, range(64))) == {201}
            return len(list(Path(f"/proc/{server.proc.pid}/task").iterdir()))
        finally:
            assert server.stop() == 0

    # Python 3.11 does not name its threads in /proc: compare the thread counts of two
    # processes that differ only in the setting.
    one, twelve = threads_after_load(1), threads_after_load(12)
    assert 1 <= twelve - one <= 11


@pytest.mark.parametrize(
    ("text", "size"), [("1024", 1024), ("64KiB", 65536), ("1.5m", 1572864), ("1GiB", GiB)]
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("server", [["--workers", "2"]], indirect=True)
def test_workers_share_the_port_and_the_database(server: str) -> None:
    """Two processes, one SQLite database: concurrent creates have one winner, and every
    upload answered 201 is listed."""

    with ThreadPoolExecutor(16) as pool:
        creates = list(
            pool.map(
                lambda _: (
                    requests.post(
                        f"{server}/api/csv/sessions", json={"session_id": "shared"}
                    ).status_code
                ),
                range(16),
            )
        )
        assert sorted(creates) == [201] + [400] * 15

        def upload(i: int) -> int:
            files = {"file": (f"f{i}.csv", f"a,b\n{i},{i}\n".encode())}
            return requests.post(
                f"{server}/api/csv/upload", files=files, data={"session_id": "shared"}
            ).status_code

        statuses = list(pool.map(upload, range(200)))
    assert statuses == [201] * 200
    files = requests.get(f"{server}/api/csv/sessions/shared").json()["csv_files"]
    assert sorted(f["original_filename"] for f in files) == sorted(f"f{i}.csv" for i in range(200))


def test_a_taken_port_is_one_clear_line_and_exit_1(tmp_path: Path) -> None:
    """Another program holds the port: the server says so and stops cleanly (its database
    closed, its background tasks ended), with no traceback."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "csvstore", "--port", str(port), "--data-dir", str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert proc.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in proc.stderr
    assert "address already in use" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert "Task was destroyed" not in proc.stderr


def test_workers_do_not_share_their_port_with_another_server(tmp_path: Path) -> None:
    """SO_REUSEPORT let a second `--workers 2` server join the first one's port silently,
    requests alternating between two stores: it is refused as a taken port is."""
    first = ServerProcess(tmp_path / "one", "--workers", "2")
    first.start()
    try:
        port = first.url.rsplit(":", 1)[1]
        second = subprocess.run(
            [sys.executable, "-m", "csvstore", "--port", port, "--workers", "2",
             "--data-dir", str(tmp_path / "two")],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert second.returncode == 1, second.stderr
        assert f"cannot listen on 127.0.0.1:{port}" in second.stderr
        assert "Traceback" not in second.stderr
        assert requests.get(f"{first.url}/healthz", timeout=5).status_code == 200
    finally:
        assert first.stop() == 0


def test_the_log_says_listening_only_once_the_port_is_bound(tmp_path: Path) -> None:
    """ "starting on" when the process starts; "listening on" after the bind, per worker."""
    server = ServerProcess(tmp_path / "data", "--workers", "2")
    server.start()
    try:
        deadline = time.monotonic() + 10
        while server.log().count("listening on") < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        assert server.stop() == 0
    log = server.log()
    starting = log.index(f"starting on http://127.0.0.1:{server.port} with 2 worker(s)")
    listening = [line for line in log.splitlines() if "listening on" in line]
    assert len(listening) == 2, log
    assert all(f"listening on http://127.0.0.1:{server.port} (pid " in line for line in listening)
    assert starting < log.index("listening on")


def test_invalid_http_is_a_400_and_one_log_line(tmp_path: Path) -> None:
    """A request that is not valid HTTP (here a made-up Transfer-Encoding beside a
    Content-Length) is refused by the HTTP layer with a 400, and logged as the client's
    error in one line: no traceback."""
    server = ServerProcess(tmp_path / "data")
    server.start()
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as conn:
            conn.sendall(
                b"POST /api/csv/tus/ HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: bogus\r\n"
                b"Content-Length: 0\r\n\r\n"
            )
            answer = conn.recv(4096)
        assert answer.split(b"\r\n", 1)[0].split()[1] == b"400"
    finally:
        assert server.stop() == 0
    log = server.log()
    assert "Traceback" not in log
    refused = [line for line in log.splitlines() if "malformed request" in line]
    assert len(refused) == 1, log
    assert "WARNING csvstore: malformed request from 127.0.0.1 refused: 400" in refused[0]
    assert "Transfer-Encoding" in refused[0]


def _workers_of(pid: int) -> set[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return {int(child) for child in children}


def _wait_for_workers(server: ServerProcess, count: int, timeout: float = 20) -> set[int]:
    assert server.proc is not None
    deadline = time.monotonic() + timeout
    while True:
        workers = _workers_of(server.proc.pid)
        listening = server.log().count("listening on")
        if len(workers) == count and listening >= count:
            return workers
        assert time.monotonic() < deadline, f"{len(workers)} workers:\n{server.log()}"
        assert server.proc.poll() is None, f"the supervisor exited:\n{server.log()}"
        time.sleep(0.05)


def test_a_worker_killed_under_load_is_restarted_and_nothing_acknowledged_is_lost(
    tmp_path: Path,
) -> None:
    """SIGKILL one of two workers while uploads stream in: the supervisor starts a new one
    (logged, counted in /metrics), the server goes on answering, and every upload answered
    201 is listed with its bytes' SHA-256; nothing else is left behind."""
    server = ServerProcess(tmp_path / "data", "--workers", "2")
    server.start()
    try:
        first = _wait_for_workers(server, 2)
        assert requests.post(f"{server.url}/api/csv/sessions", json={"session_id": "s"}).ok
        acknowledged: dict[str, str] = {}
        stop_at = time.monotonic() + 6

        def upload_until_stopped(thread: int) -> int:
            failures = 0
            i = 0
            while time.monotonic() < stop_at:
                name = f"t{thread}-{i}.csv"
                body = b"a,b\n" + b"".join(b"%d,%d\n" % (i, n) for n in range(4000))
                i += 1
                try:
                    reply = requests.post(
                        f"{server.url}/api/csv/upload",
                        files={"file": (name, body)},
                        data={"session_id": "s"},
                        timeout=30,
                    )
                except requests.ConnectionError:
                    failures += 1  # the connection was on the killed worker
                    continue
                if reply.status_code == 201:
                    acknowledged[name] = hashlib.sha256(body).hexdigest()
                else:
                    failures += 1
            return failures

        with ThreadPoolExecutor(6) as pool:
            running = [pool.submit(upload_until_stopped, t) for t in range(6)]
            time.sleep(1.5)
            victim = min(first)
            os.kill(victim, signal.SIGKILL)
            failures = sum(f.result() for f in running)
        after = _wait_for_workers(server, 2)
        assert victim not in after
        assert len(after - first) == 1
        assert f"worker {victim} was killed by signal 9; starting a new worker in" in server.log()
        # Every worker reports the supervisor's one count.
        for _ in range(4):
            metrics = requests.get(f"{server.url}/metrics").text
            assert "csvstore_worker_restarts_total 1.0" in metrics
        listed = requests.get(f"{server.url}/api/csv/sessions/s").json()["csv_files"]
        stored = {f["original_filename"]: f["sha256"] for f in listed}
        assert len(acknowledged) > 50
        assert {name: stored.get(name) for name in acknowledged} == acknowledged
        assert failures < len(acknowledged)
    finally:
        assert server.stop() == 0, server.log()
    # What the killed worker had in flight (a temp file) goes at the next start-up check.
    single = ServerProcess(tmp_path / "data")
    single.start()
    assert single.stop() == 0
    assert_consistent(Settings(data_dir=tmp_path / "data"))


def test_workers_that_keep_dying_stop_the_server_with_exit_1(tmp_path: Path) -> None:
    """Each restart waits longer than the last; the sixth death within a minute makes the
    supervisor give up: it stops the other worker and exits 1, saying why."""
    from csvstore.web.server import RESTART_LIMIT

    server = ServerProcess(tmp_path / "data", "--workers", "2")
    server.start()
    assert server.proc is not None
    started = time.monotonic()
    killed: set[int] = set()
    while server.proc.poll() is None and time.monotonic() - started < 30:
        workers = _workers_of(server.proc.pid) - killed
        if len(workers) == 2 and len(killed) <= RESTART_LIMIT:
            victim = max(workers)
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGKILL)
            killed.add(victim)
        time.sleep(0.02)
    assert server.proc.wait(timeout=30) == 1
    log = server.log()
    assert log.count("starting a new worker in") == RESTART_LIMIT
    for pause in ("0.1 s", "0.2 s", "0.4 s", "0.8 s", "1.6 s"):
        assert f"starting a new worker in {pause}" in log
    assert f"{RESTART_LIMIT + 1} workers died in the last 60 s; giving up" in log


def test_a_stop_while_workers_are_still_starting_is_a_clean_stop(tmp_path: Path) -> None:
    """SIGTERM reaching workers before they serve (a quick restart under systemd) is not a
    death: each stops once it can, the supervisor exits 0, no 'exited with status' line."""
    for attempt in range(4):
        server = ServerProcess(tmp_path / f"data{attempt}", "--workers", "2")
        log = server.log_path.open("ab")
        server.proc = subprocess.Popen(
            [
                sys.executable, "-m", "csvstore", "--port", str(server.port),
                "--data-dir", str(server.data_dir), "--workers", "2",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + 30
        while len(_workers_of(server.proc.pid)) < 2:  # forked, not yet serving
            assert server.proc.poll() is None, server.log()
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.002)
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=60) == 0, server.log()
        assert "while stopping" not in server.log()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_sighup_stops_the_server_gracefully_and_its_workers_with_it(
    tmp_path: Path, workers: str
) -> None:
    """The terminal a server was started from closing (SIGHUP) is a stop like SIGTERM: exit
    0 and no worker left serving (they had been orphaned, still answering)."""
    server = ServerProcess(tmp_path / "data", "--workers", workers)
    server.start()
    assert server.proc is not None
    children = _children(server.proc.pid)
    server.proc.send_signal(signal.SIGHUP)
    assert server.proc.wait(timeout=30) == 0
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in children):
        assert time.monotonic() < deadline, "a worker outlived its supervisor"
        time.sleep(0.05)
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{server.url}/healthz", timeout=2)


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in path.read_text().split()] if path.exists() else []


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"
