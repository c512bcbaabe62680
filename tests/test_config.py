"""Settings: each field is one flag and one CSVSTORE_* variable, read as people write values;
errors name the flag or the variable; docs/settings.md is generated from the fields."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest
import requests

from csvstore.commandline import (
    build_check_parser,
    build_migrate_parser,
    build_parser,
    settings_from,
)
from csvstore.config import (
    GROUPS,
    Settings,
    env_name,
    flag_name,
    shown_default,
    spec,
    unknown_variables,
)
from csvstore.config_values import GiB, MiB
from tests.serverproc import ServerProcess

ROOT = Path(__file__).resolve().parent.parent


def csvstore(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "csvstore", *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("CSVSTORE_PORT", "abc", "CSVSTORE_PORT: expected an integer, got 'abc'"),
        ("CSVSTORE_INSECURE", "maybe", "CSVSTORE_INSECURE: expected true or false, got 'maybe'"),
        ("CSVSTORE_DURABILITY", "slow", "CSVSTORE_DURABILITY: expected one of full, fast"),
        ("CSVSTORE_MAX_UPLOAD_SIZE", "lots", "CSVSTORE_MAX_UPLOAD_SIZE: not a size: 'lots'"),
        ("CSVSTORE_SHUTDOWN_GRACE", "soon", "CSVSTORE_SHUTDOWN_GRACE: not a duration: 'soon'"),
    ],
)
def test_a_bad_variable_is_named_by_the_real_process(
    variable: str, value: str, message: str
) -> None:
    done = csvstore(env={variable: value})
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--port", "abc"], "argument --port: expected an integer, got 'abc'"),
        (["--port", "70000"], "argument --port: expected a port from 0 to 65535, got '70000'"),
        (["--log-format", "xml"], "argument --log-format: expected one of text, json"),
        (["--idle-timeout", "-1"], "argument --idle-timeout: not a duration: '-1'"),
        # Values that would break every upload or spin a core: refused at start.
        (["--upload-chunk-size", "0"], "the upload chunk size is at least 4KiB, got '0'"),
        (["--sweep-interval", "0"], "the sweep interval must be more than 0, got '0'"),
        (["--tus-expiry", "0s"], "the tus expiry must be more than 0, got '0s'"),
        (["check", "--workers", "many"], "argument --workers: expected an integer"),
        (["--max-upload-size", "0"], "max upload size must be more than 0 bytes, got '0'"),
        (["--host", "[example]"], "argument --host: not an IPv6 address in brackets"),
        (["--host", "http://0.0.0.0"], "argument --host: not an address or host name"),
        # A browser's Origin never has a path: such an entry would match nothing, silently.
        (["--cors-origins", "https://app.example/ui"], "not an origin: 'https://app.example/ui'"),
        (["--cors-origins", "app.example"], "not an origin: 'app.example'"),
        (
            ["migrate-to", "--from-data-dir", "x", "--from-storage", "gs://b/p"],
            "argument --from-storage: unsupported storage 'gs://b/p'",
        ),
    ],
)
def test_a_bad_flag_is_named_by_the_real_process(args: list[str], message: str) -> None:
    done = csvstore(*args)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_a_data_dir_that_is_a_file_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    for args in (
        ["--data-dir", str(afile)],
        ["--data-dir", str(afile / "sub")],
        ["check", "--data-dir", str(afile)],
    ):
        done = csvstore(*args, "--port", "0")
        assert done.returncode == 2, done.stderr
        assert f"--data-dir {args[-1]}: not a directory" in done.stderr
        assert "Traceback" not in done.stderr
    assert afile.read_text() == "not a folder"


def test_check_and_migrate_to_name_a_bad_variable() -> None:
    for command in (["check"], ["migrate-to", "--from-data-dir", "x"]):
        done = csvstore(*command, env={"CSVSTORE_S3_PART_SIZE": "1MiB"})
        assert done.returncode == 2, done.stderr
        assert "CSVSTORE_S3_PART_SIZE: the S3 part size is between 5MiB and 5GiB" in done.stderr


def test_help_groups_the_flags_and_shows_values_as_people_write_them() -> None:
    out = csvstore("--help").stdout
    headings = [out.index(f"\n{group}:\n") for group in GROUPS]
    assert headings == sorted(headings)
    server, storage, uploads = (out.index(f"\n{group}:\n") for group in GROUPS[:3])
    assert server < out.index("--port PORT") < storage < out.index("--durability") < uploads
    assert "--durability {full,fast}" in out
    assert "--log-level {debug,info,warning,error,critical}" in out
    assert "--max-upload-size SIZE" in out
    for text in ("default: 1GiB]", "default: 64MiB]", "default: 24h]", "default: 30s]"):
        assert text in " ".join(out.split())
    assert "1073741824" not in out
    for parser in (build_check_parser(), build_migrate_parser()):
        text = parser.format_help()
        assert all(f"\n{group}:\n" in text for group in GROUPS)
        assert "--tus-expiry DURATION" in text


def test_sizes_and_durations_as_people_write_them() -> None:
    for text, size in [("1GiB", GiB), ("1G", GiB), ("500MB", 500 * MiB), ("1073741824", GiB)]:
        assert settings_from(["--max-upload-size", text], {}).max_upload_size == size
        assert settings_from([], {"CSVSTORE_MIN_FREE_SPACE": text}).min_free_space == size
    given = settings_from(
        ["--shutdown-grace", "30s", "--idle-timeout", "2m", "--ready-timeout", "0.5"],
        {"CSVSTORE_BODY_READ_TIMEOUT": "1h", "CSVSTORE_TUS_EXPIRY": "7d"},
    )
    assert (given.shutdown_grace, given.idle_timeout, given.ready_timeout) == (30, 120, 0.5)
    assert (given.body_read_timeout, given.tus_expiry) == (3600, 7 * 86400)
    assert settings_from(["--shutdown-grace", "45"], {}).shutdown_grace == 45


def test_every_field_is_one_flag_and_one_variable() -> None:
    help_text = build_parser().format_help()
    defaults = Settings()
    for f in fields(Settings):
        assert env_name(f) == "CSVSTORE_" + f.name.upper()
        assert flag_name(f) in help_text
        assert env_name(f) in help_text
        assert spec(f).group in GROUPS
        shown = shown_default(f)
        if shown:  # the default as shown reads back as the default, by flag and by variable
            assert getattr(settings_from([flag_name(f), shown], {}), f.name) == getattr(
                defaults, f.name
            )
            assert getattr(Settings.from_mapping({env_name(f): shown}), f.name) == getattr(
                defaults, f.name
            )


def test_docs_settings_is_generated_from_the_fields() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "settings-doc"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    text = (ROOT / "docs" / "settings.md").read_text()
    assert all(f"`{flag_name(f)}` | `{env_name(f)}`" in text for f in fields(Settings))


def test_the_readme_names_every_flag_of_the_server() -> None:
    """Issue 18's done-when: the settings table has every setting's flag (generated), and
    the flags that are not settings are named beside it."""
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("<!-- settings table") : readme.index("<!-- end of settings")]
    assert all(f"| `{flag_name(f)}` |" in table for f in fields(Settings))
    flags = {o for a in build_parser()._actions for o in a.option_strings if o.startswith("--")}
    assert flags - {"--help"}
    assert not [flag for flag in flags - {"--help"} if f"`{flag}`" not in readme]


def test_the_real_server_takes_values_as_people_write_them(tmp_path: Path) -> None:
    server = ServerProcess(
        tmp_path / "data",
        "--max-upload-size", "1K", "--shutdown-grace", "5s", "--idle-timeout", "2m",
        env={"CSVSTORE_BODY_READ_TIMEOUT": "30s", "CSVSTORE_SWEEP_INTERVAL": "1m"},
    )  # fmt: skip
    server.start()
    try:
        requests.post(f"{server.url}/api/csv/sessions", json={"session_id": "s"}, timeout=10)
        for size, status in [(1000, 201), (2000, 413)]:
            body = b"a\n" + b"1\n" * ((size - 2) // 2)
            done = requests.post(
                f"{server.url}/api/csv/upload",
                files={"file": ("f.csv", body)},
                data={"session_id": "s"},
                timeout=10,
            )
            assert done.status_code == status, done.text
    finally:
        assert server.stop() == 0


def test_a_bracketed_ipv6_loopback_is_loopback_and_origins_lose_a_trailing_slash(
    tmp_path: Path,
) -> None:
    args = ["--host", "[::1]", "--cors-origins", "https://app.example/, http://b.example:8080"]
    settings = settings_from([*args, "--data-dir", str(tmp_path)], {})
    assert settings.host == "::1"  # refused before as a public address without API keys
    assert settings.cors_origins == "https://app.example,http://b.example:8080"
    assert settings_from(["--cors-origins", "*"], {}).cors_origins == "*"  # any origin, as before


def test_a_misspelled_variable_is_named_in_a_warning(tmp_path: Path) -> None:
    server = ServerProcess(
        tmp_path / "data",
        env={"CSVSTORE_PROT": "9999", "CSVSTORE_URL": "http://client.example"},
    )
    server.start()
    assert server.stop() == 0
    log = server.log()
    assert "CSVSTORE_PROT is not a setting and is ignored (did you mean CSVSTORE_PORT?)" in log
    assert "CSVSTORE_URL" not in log  # the client's variable, not a misspelling


def test_unknown_variables_are_misspellings_not_the_test_hooks() -> None:
    found = unknown_variables(
        {"CSVSTORE_host": "::", "CSVSTORE_FAULTS": "1", "CSVSTORE_KILL_ROUNDS": "4", "HOME": "/"}
    )
    assert found == ["CSVSTORE_host is not a setting and is ignored (did you mean CSVSTORE_HOST?)"]
