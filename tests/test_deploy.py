"""What ships to deploy with: the systemd unit (systemd-analyze verify, its hardening, a stop
timeout past the grace period), the Containerfile's user, volume and health check run as the
container would, the version, LICENSE and CHANGELOG, and a Server header without versions."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path

import pytest
import requests

from csvstore import __version__
from csvstore.config import Settings
from csvstore.config_values import parse_duration
from csvstore.web.server import _CANCEL_WAIT
from tests.conftest import Client
from tests.serverproc import ServerProcess, free_port

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "deploy" / "csvstore.service"
ENV_FILE = ROOT / "deploy" / "csvstore.env"
CONTAINERFILE = ROOT / "Containerfile"
CSVSTORE = Path(sys.executable).parent / "csvstore"
KEY = "deploy-test-key-0123456789"
NOBODY = 65534


def unit_values(text: str) -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            values.setdefault(key.strip(), []).append(value.strip())
    return values


def env_file(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {k.strip(): v.strip() for k, v in pairs if not k.startswith("#")}


# systemd


def _local_unit(tmp_path: Path) -> Path:
    """The unit with its two paths pointing at this checkout (verify checks they exist)."""
    text = UNIT.read_text()
    text = text.replace("/opt/csvstore/bin/csvstore", str(CSVSTORE))
    text = text.replace("/etc/csvstore/csvstore.env", str(ENV_FILE))
    unit = tmp_path / "csvstore.service"
    unit.write_text(text)
    return unit


def _systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:  # .ci/run installs it (Debian's systemd)
        pytest.skip("systemd-analyze is not installed")
    return found


def test_the_unit_verifies(tmp_path: Path) -> None:
    done = subprocess.run(
        [_systemd_analyze(), "verify", str(_local_unit(tmp_path))],
        capture_output=True,
        text=True,
        check=False,
    )
    # verify exits 0 on unknown keys and bad values too, only saying so
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


def test_the_unit_is_hardened(tmp_path: Path) -> None:
    unit = _local_unit(tmp_path)
    done = subprocess.run(
        [_systemd_analyze(), "security", "--offline=yes", "--threshold=20", str(unit)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout  # exposure at most 2.0 of 10 ("OK")
    values = unit_values(UNIT.read_text())
    for key, value in {
        "DynamicUser": "yes",
        "StateDirectory": "csvstore",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "Environment": "CSVSTORE_DATA_DIR=/var/lib/csvstore",  # the StateDirectory
        "EnvironmentFile": "/etc/csvstore/csvstore.env",
    }.items():
        assert values[key] == [value], key


def test_the_unit_waits_longer_than_the_grace_period() -> None:
    settings = Settings.from_mapping(env_file(ENV_FILE))  # every line is a valid setting
    assert set(env_file(ENV_FILE)) <= {f"CSVSTORE_{f.name.upper()}" for f in fields(Settings)}
    [timeout] = unit_values(UNIT.read_text())["TimeoutStopSec"]
    assert parse_duration(timeout) > settings.shutdown_grace + _CANCEL_WAIT


@pytest.fixture
def unprivileged_dir() -> Iterator[Path]:
    """A data folder owned by nobody, as StateDirectory or a container's volume is."""
    folder = Path(tempfile.mkdtemp(prefix="csvstore-deploy-"))
    os.chmod(folder, 0o755)
    data = folder / "data"
    data.mkdir()
    if os.geteuid() == 0:
        os.chown(data, NOBODY, NOBODY)
    yield data
    shutil.rmtree(folder, ignore_errors=True)


def _as_nobody(command: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return command  # already unprivileged
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *command]


def _wait_healthy(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            requests.get(f"{url}/healthz", timeout=2)
            return
        except requests.ConnectionError:
            assert proc.poll() is None, "the server exited"
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.1)


def test_the_unit_command_serves_as_an_unprivileged_user(unprivileged_dir: Path) -> None:
    """ExecStart with the unit's and the env file's variables, as a user of its own, then
    stopped as systemd stops it: SIGTERM, exit 0 well within TimeoutStopSec."""
    port = free_port()
    env = {
        "PATH": os.environ.get("PATH", ""),
        "CSVSTORE_DATA_DIR": str(unprivileged_dir),
        **env_file(ENV_FILE),
        "CSVSTORE_PORT": str(port),
        "CSVSTORE_API_KEYS": KEY,
        "CSVSTORE_WORKERS": "1",  # see the report: a worker still starting dies of SIGTERM
    }
    proc = subprocess.Popen(_as_nobody([str(CSVSTORE)]), env=env, stdout=subprocess.DEVNULL)
    try:
        _wait_healthy(f"http://127.0.0.1:{port}", proc)
        auth = {"Authorization": f"Bearer {KEY}"}
        created = requests.post(
            f"http://127.0.0.1:{port}/api/csv/sessions", json={"session_id": "s"}, headers=auth
        )
        assert created.status_code == 201
        owner = (unprivileged_dir / "csvstore.db").stat().st_uid
        assert owner == (NOBODY if os.geteuid() == 0 else os.geteuid())
    finally:
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    [timeout] = unit_values(UNIT.read_text())["TimeoutStopSec"]
    assert code == 0
    assert time.monotonic() - started < parse_duration(timeout)


# The container


def containerfile_lines() -> list[str]:
    """Instructions with their continuation lines joined, comments left out."""
    joined = re.sub(r"\\\n\s*", " ", CONTAINERFILE.read_text())
    return [line for line in joined.splitlines() if line.strip() and not line.startswith("#")]


def test_the_containerfile_runs_as_a_user_with_its_data_in_a_volume() -> None:
    lines = containerfile_lines()
    froms = [line.split()[1] for line in lines if line.startswith("FROM ")]
    assert froms
    assert all(re.fullmatch(r"python:3\.1[1-9]-slim", image) for image in froms)
    [user] = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert user.split(":")[0] not in {"0", "root"}
    env = _container_env(lines)
    [volume] = [line.split()[1] for line in lines if line.startswith("VOLUME ")]
    assert env["CSVSTORE_DATA_DIR"] == volume
    assert f"EXPOSE {env['CSVSTORE_PORT']}" in lines
    assert any("/healthz" in line for line in lines if line.startswith("HEALTHCHECK "))


def _container_env(lines: list[str]) -> dict[str, str]:
    [env_line] = [line for line in lines if line.startswith("ENV ")]
    return dict(pair.split("=", 1) for pair in env_line.split()[1:])


def _healthcheck(lines: list[str]) -> list[str]:
    [line] = [line for line in lines if line.startswith("HEALTHCHECK ")]
    command = eval(line.split(" CMD ", 1)[1])  # the exec form is a JSON-like list
    assert command[0] == "python"
    return [sys.executable, *command[1:]]


def test_the_container_command_and_health_check(unprivileged_dir: Path) -> None:
    """The image's CMD with its ENV (the volume a folder of nobody's), and its HEALTHCHECK
    run as it is: healthy while serving, unhealthy once stopped. Without keys on 0.0.0.0 it
    refuses to start, as the Containerfile's comment says."""
    lines = containerfile_lines()
    port = free_port()
    env = {**_container_env(lines), "CSVSTORE_PORT": str(port)}
    env["CSVSTORE_DATA_DIR"] = str(unprivileged_dir)
    env["PATH"] = f"{CSVSTORE.parent}:{os.environ.get('PATH', '')}"
    [cmd] = [eval(line.split(" ", 1)[1]) for line in lines if line.startswith("CMD ")]
    refused = subprocess.run(
        _as_nobody(cmd), env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert refused.returncode != 0
    assert "without API keys" in refused.stdout + refused.stderr
    env["CSVSTORE_API_KEYS"] = KEY
    proc = subprocess.Popen(_as_nobody(cmd), env=env, stdout=subprocess.DEVNULL)
    check = _healthcheck(lines)
    try:
        _wait_healthy(f"http://127.0.0.1:{port}", proc)
        assert subprocess.run(check, env=env, timeout=30, check=False).returncode == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    stopped = subprocess.run(check, env=env, capture_output=True, timeout=30, check=False)
    assert stopped.returncode != 0


# Version, licence, changelog


def test_version_comes_from_the_one_source() -> None:
    shown = subprocess.run(
        [str(CSVSTORE), "--version"], capture_output=True, text=True, check=True
    ).stdout
    assert shown.strip() == f"csvstore {__version__}"
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'version = { attr = "csvstore.__version__" }' in pyproject
    assert not re.search(r"^version\s*=\s*\"", pyproject, re.MULTILINE)
    changelog = (ROOT / "CHANGELOG.md").read_text()
    first = re.search(r"^## \[?(\d+\.\d+\.\d+)", changelog, re.MULTILINE)
    assert first is not None
    assert first.group(1) == __version__
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")


# The Server header


async def test_the_server_header_names_no_versions(client: Client) -> None:
    for path in ("/api/csv/sessions", "/api/csv/nothing", "/", "/docs", "/healthz"):
        resp = await client.get(path)
        assert resp.headers["Server"] == "csvstore", path


def test_the_server_header_of_a_real_process(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data")
    server.start()
    try:
        assert requests.get(f"{server.url}/api/csv/sessions").headers["Server"] == "csvstore"
        # refused by the HTTP layer, before the application: no app hook runs
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: bogus\r\n\r\n")
            head = sock.recv(65536).split(b"\r\n\r\n", 1)[0].decode()
        assert re.match(r"HTTP/1\.[01] 400 ", head), head
        assert "\r\nServer: csvstore\r\n" in head, head
        assert "aiohttp" not in head
        assert "Python" not in head
    finally:
        assert server.stop() == 0


def test_the_container_install_steps_as_an_unprivileged_user(unprivileged_dir: Path) -> None:
    """The build stage's RUN that installs csvstore, word for word but for its two paths,
    as nobody with an empty home (no pip cache), then the installed command serves."""
    lines = containerfile_lines()
    [install] = [line[4:] for line in lines if line.startswith("RUN python -m venv")]
    work = unprivileged_dir.parent
    source = work / "src"
    # the build context: the checkout's files as git sees them (what a clean clone holds)
    listed = (
        subprocess.run(
            [
                "git",
                "-C",
                str(ROOT),
                "ls-files",
                "-z",
                "--cached",
                "--others",
                "--exclude-standard",
            ],
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .split("\0")
    )
    for name in filter(None, listed):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    prefix, home = work / "opt", work / "home"
    home.mkdir()
    for path in (source, home, work):
        if os.geteuid() == 0:
            for found in (path, *path.rglob("*")):
                os.lchown(found, NOBODY, NOBODY)
    command = install.replace("/opt/csvstore", str(prefix)).replace("/src", str(source))
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(home)}
    python = _python_for_nobody()
    done = subprocess.run(
        _as_nobody(["sh", "-c", command.replace("python ", f"{python} ", 1)]),
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    installed = prefix / "bin" / "csvstore"
    shown = subprocess.run(
        _as_nobody([str(installed), "--version"]), env=env, capture_output=True, text=True
    )
    assert shown.stdout.strip() == f"csvstore {__version__}"
    assert list((prefix / "lib").glob("python3*/site-packages/csvstore/analysis/_scan*.so"))
    port = free_port()
    serve_env = {
        **env,
        **_container_env(lines),
        "CSVSTORE_PORT": str(port),
        "CSVSTORE_DATA_DIR": str(unprivileged_dir),
        "CSVSTORE_API_KEYS": KEY,
        "PATH": f"{prefix / 'bin'}:{env['PATH']}",  # the image's PATH, its venv first
    }
    proc = subprocess.Popen(_as_nobody([str(installed)]), env=serve_env, cwd=str(home))
    try:
        _wait_healthy(f"http://127.0.0.1:{port}", proc)
        auth = {"Authorization": f"Bearer {KEY}"}
        assert requests.get(f"http://127.0.0.1:{port}/readyz", headers=auth).status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0


def _python_for_nobody() -> str:
    """The image's python: this interpreter's base if nobody may run it (a pyenv under
    /root is out of its reach), else the system's."""
    base = getattr(sys, "_base_executable", sys.executable)
    for candidate in (base, "/usr/local/bin/python3", "/usr/bin/python3"):
        if Path(candidate).exists():
            probe = ["sh", "-c", f"{candidate} -c 'import venv, ensurepip'"]  # as RUN does
            tried = subprocess.run(_as_nobody(probe), capture_output=True, check=False)
            if tried.returncode == 0:
                return candidate
    raise AssertionError("no python that an unprivileged user may run")
