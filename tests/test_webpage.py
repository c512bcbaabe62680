"""The web page at ``/``: served from the package, and used in a real headless Chromium.

The browser tests start the real server, then run ``tests/browser/webpage.mjs``, which drives
Debian's chromium through the page with Playwright (``playwright-core``, installed by
``make browser-deps``). Without chromium they skip, unless ``CSVSTORE_REQUIRE_BROWSER`` is set
(as ``.ci/run`` does), so CI can never pass by skipping them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from csvstore.config import Settings
from tests.conftest import assert_consistent, stored_names
from tests.serverproc import ServerProcess

CELL_LIMIT = Settings().rows_cell_limit

ROOT = Path(__file__).resolve().parent.parent
BROWSER_DIR = Path(__file__).resolve().parent / "browser"
CHROMIUM = os.environ.get("CSVSTORE_CHROMIUM", "/usr/bin/chromium")
API_KEY = "browser-test-key-0123456789"
PAGE_CSP = "default-src 'self'; script-src 'self'"


def _browser_missing() -> str | None:
    if not Path(CHROMIUM).exists():
        return f"chromium is not installed at {CHROMIUM} (make browser-deps installs it)"
    return None


@pytest.fixture
def browser() -> Path:
    """The Node driver, once chromium, node and playwright-core are there."""
    missing = _browser_missing()
    if missing:
        if os.environ.get("CSVSTORE_REQUIRE_BROWSER"):
            pytest.fail(f"CSVSTORE_REQUIRE_BROWSER is set but {missing}")
        pytest.skip(missing)
    if shutil.which("node") is None:
        pytest.fail("chromium is installed but node is not: run `make browser-deps`")
    if not (BROWSER_DIR / "node_modules" / "playwright-core").is_dir():
        pytest.fail("chromium is installed but playwright-core is not: run `make browser-deps`")
    return BROWSER_DIR / "webpage.mjs"


@pytest.fixture
def server(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    """The real server; parametrise indirectly with extra arguments."""
    proc = ServerProcess(tmp_path / "data", *getattr(request, "param", []))
    proc.start()
    try:
        yield proc
    finally:
        assert proc.stop() == 0, proc.log()
    assert_consistent(Settings(data_dir=tmp_path / "data"))


def _auth(server: ServerProcess) -> dict[str, str]:
    return {"Authorization": f"Bearer {API_KEY}"} if "--api-keys" in server.args else {}


def _write_uploads(folder: Path) -> list[dict[str, Any]]:
    """Two files: one with a hostile name and cell after a title and a comment line (the
    preview starts at the header) and before a source line, one longer than a preview page."""
    folder.mkdir()
    hostile = folder / "cities <img src=x onerror=alert(1)>.csv"
    hostile.write_text(
        "Report: cities\n# exported 2024-01-01\n"
        'city;note;people\nOslo;"<b>not bold</b>";709000\nLima;plain;9750000\n'
        "\nSource: city registers\n"
    )
    long = folder / "measurements.csv"
    long.write_text(
        "id,sensor,value\n" + "".join(f"{i},s{i % 3},{i * 1.5}\n" for i in range(1, 46)),
        encoding="utf-8",
    )
    return [
        {"path": str(hostile), "name": hostile.name, "columns": ["city", "note", "people"],
         "firstRow": ["Oslo", "<b>not bold</b>", "709000"], "preamble": 2, "footer": 2},
        {"path": str(long), "name": long.name, "columns": ["id", "sensor", "value"],
         "firstRow": ["1", "s1", "1.5"]},
    ]  # fmt: skip


def _run_browser(script: Path, tmp_path: Path, config: dict[str, Any]) -> dict[str, Any]:
    config_path = tmp_path / "browser.json"
    config_path.write_text(json.dumps({"chromium": CHROMIUM, **config}))
    done = subprocess.run(
        ["node", str(script), str(config_path)],
        cwd=BROWSER_DIR,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"browser run failed:\n{done.stdout}\n{done.stderr}"
    seen: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return seen


@pytest.mark.parametrize("server", [["--api-keys", API_KEY]], indirect=True)
def test_whole_flow_in_chromium_with_an_api_key(
    browser: Path, server: ServerProcess, tmp_path: Path
) -> None:
    uploads = _write_uploads(tmp_path / "csv")
    screenshot = Path(os.environ.get("CSVSTORE_SCREENSHOT") or tmp_path / "page.png")
    query_screenshot = Path(os.environ.get("CSVSTORE_QUERY_SCREENSHOT") or tmp_path / "query.png")
    seen = _run_browser(
        browser,
        tmp_path,
        {
            "url": server.url + "/",
            "apiKey": API_KEY,
            "sessionId": "browser_session",
            "uploads": uploads,
            "dropped": {"name": "dropped.csv", "text": "a,b\n1,2\n"},
            "downloadName": "measurements.csv",
            "downloadTo": str(tmp_path / "downloaded.csv"),
            "screenshot": str(screenshot),
            "query": {
                "aggregate": "SELECT sensor, sum(value) AS total FROM measurements_csv "
                "GROUP BY sensor ORDER BY sensor",
                "chartLabels": ["s0", "s1", "s2"],
                "summaryOf": "measurements.csv",
                "screenshot": str(query_screenshot),
            },
        },
    )
    assert seen["storedKey"] == API_KEY
    # The Query panel: prefilled from the first table (upload order), run with the key.
    query = seen["query"]
    assert query["prefill"] == f"SELECT * FROM {query['tables'][0]} LIMIT 100"
    assert "measurements_csv (45 rows)" in query["tablesShown"]
    # Either file may be first (uploads run in parallel); each read in its own dialect.
    first = {
        "city": (["city", "note", "people"], "2 rows"),
        "id": (["id", "sensor", "value"], "45 rows"),
    }
    header, rows = first.get(query["firstResult"]["header"][0], (None, None))
    assert query["firstResult"]["header"] == header, query
    assert query["firstResult"]["meta"].startswith(f"{rows} in "), query
    sums = {f"s{k}": sum(i * 1.5 for i in range(1, 46) if i % 3 == k) for k in range(3)}
    assert [(s, float(total)) for s, total in query["aggregateRows"]] == list(sums.items())
    assert (query["bars"], query["labels"]) == (3, ["s0", "s1", "s2"])
    assert (query["lines"], query["barsAfterLine"]) == (1, 0)
    assert "COPY" in query["error"], query["error"]
    assert query_screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = {row[0]: row for row in query["summary"]}
    assert list(summary) == ["id", "sensor", "value"]
    assert summary["id"][2:5] == ["45", "0", summary["id"][4]]  # count, nulls, distinct
    assert (summary["id"][5], summary["id"][6]) == ("1", "45")  # min, max
    assert summary["sensor"][9].startswith("s")  # the most frequent values, with counts
    assert "session id is 1-128 characters" in seen["createError"]
    by_name = {f["cells"][0]: f for f in seen["files"]}
    assert set(by_name) == {"measurements.csv", uploads[0]["name"], "dropped.csv"}
    assert uploads[0]["name"] == "cities <img src=x onerror=alert(1)>.csv"  # shown as text
    long = by_name["measurements.csv"]["cells"]
    assert long[2:4] == ["45", "3: id, sensor, value"]  # rows, columns
    # The checksum shown (shortened, in full on hover) is that of the bytes sent.
    digest = hashlib.sha256(Path(uploads[1]["path"]).read_bytes()).hexdigest()
    assert by_name["measurements.csv"]["sha256"] == digest
    assert long[4] == digest[:12]
    # All of a short file; a page of 20 rows of a long one, then 20 more on "More rows".
    assert [(p["count"], p["more"]) for p in seen["previews"]] == [(2, False), (20, True)]
    assert seen["previews"][1]["afterMore"] == 40
    # Downloaded through the page: a key means fetch + blob, and the exact bytes.
    assert seen["downloads"] == [{"suggested": "measurements.csv", "url": "blob"}]
    assert (tmp_path / "downloaded.csv").read_bytes() == Path(uploads[1]["path"]).read_bytes()
    assert any("dropped.csv" in d for d in seen["dialogs"])  # the delete asked first
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The session and every file are gone on the server too.
    gone = requests.get(f"{server.url}/api/csv/sessions/browser_session", headers=_auth(server))
    assert gone.status_code == 404
    assert stored_names(tmp_path / "data" / "uploads") == []


def test_open_server_pages_sessions_and_streams_downloads(
    browser: Path, server: ServerProcess, tmp_path: Path
) -> None:
    for i in range(52):  # more than one page of 50
        made = requests.post(f"{server.url}/api/csv/sessions", json={"session_id": f"old_{i:02}"})
        assert made.status_code == 201
    uploads = _write_uploads(tmp_path / "csv")
    refused = tmp_path / "csv" / "report.csv"
    refused.write_bytes(b"%PDF-1.7\n" + bytes(range(256)))
    cut = tmp_path / "csv" / "shapes.csv"
    cut.write_text("id,shape\n1," + "x" * 300_000 + "\n")
    seen = _run_browser(
        browser,
        tmp_path,
        {
            "url": server.url + "/",
            "apiKey": None,
            "sessionId": "zz_open",
            "uploads": uploads,
            "dropped": None,
            "refused": str(refused),
            "downloadName": "measurements.csv",
            "downloadTo": str(tmp_path / "downloaded.csv"),
            "screenshot": str(tmp_path / "page.png"),
            "moreSessions": 52,
            "cutCell": {"path": str(cut), "name": cut.name},
        },
    )
    # The 300,000-character cell: shown cut to the server's limit, and marked as cut.
    assert seen["cutCell"] == [
        {"cut": False, "badge": None, "title": "", "length": 1},
        {
            "cut": True,
            "badge": "cut",
            "title": "Cut short: the whole cell is in the file's download",
            "length": len("cut ") + CELL_LIMIT,
        },
    ]
    assert (seen["firstPage"], seen["afterMore"]) == (50, 52)
    assert "PDF" in seen["refused"], seen["refused"]  # the server's detail, on the file's line
    # No key: a plain link, so the browser streams the download itself.
    assert seen["downloads"] == [{"suggested": "measurements.csv", "url": "http"}]
    assert (tmp_path / "downloaded.csv").read_bytes() == Path(uploads[1]["path"]).read_bytes()
    assert seen["sessionsLeft"] == 52
    assert requests.get(f"{server.url}/api/csv/sessions/zz_open").status_code == 404


@pytest.mark.parametrize("server", [["--api-keys", API_KEY]], indirect=True)
def test_page_and_its_files_are_served_without_a_key(server: ServerProcess) -> None:
    page = requests.get(server.url + "/")
    assert page.status_code == 200
    assert page.headers["Content-Type"].startswith("text/html")
    assert page.headers["Content-Security-Policy"].startswith(PAGE_CSP)
    assert page.headers["Cache-Control"] == "no-cache"
    assert '<script type="module" src="static/app.js">' in page.text
    for name, kind in [("app.js", "javascript"), ("style.css", "text/css")]:
        asset = requests.get(f"{server.url}/static/{name}")
        assert asset.status_code == 200, name
        assert kind in asset.headers["Content-Type"]
    assert requests.get(f"{server.url}/api/csv/sessions").status_code == 401  # the API still isn't
    # Nothing outside the static folder, and no directory listing.
    outside = ["/static/", "/static/../webpage.py", "/static/%2e%2e/webpage.py", "/static/x.js"]
    for path in outside:
        answer = requests.get(server.url + path)
        assert answer.status_code in (403, 404), path
        assert "STATIC_DIR" not in answer.text


def test_page_keeps_server_data_out_of_html() -> None:
    """The script builds the DOM from text only: no innerHTML, outerHTML or document.write."""
    script = (ROOT / "csvstore" / "web" / "static" / "app.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script, sink
