"""Dialect accuracy: csvstore, clevercsv and csv.Sniffer on public CSV corpora.

    python -m bench.accuracy            # (make accuracy) downloads once, then measures
    python -m bench.accuracy --judge    # also prints each file where a tool is wrong

The corpora come from the package registries into bench/.cache/accuracy (git-ignored), at
pinned versions so that the truth stays valid: csv-spectrum from npm, and the test data of
the frictionless, csvkit and agate sdists from PyPI. bench/accuracy_truth.json holds the
truth for every file: delimiter, header, data rows (the header, preamble lines, blank lines
and comment lines excluded) and encoding, judged by hand where the tools disagree.

Each tool gets the file's bytes: csvstore the whole upload path's analysis (UploadAnalysis,
as an upload), clevercsv its Detector on the first 64 KiB (its documented use; encoding by
its get_encoding) and csv.Sniffer the same sample (encoding: UTF-8 when the bytes decode,
else cp1252, as it has no detection). Row counts parse the whole file in each tool's
dialect, skipping blank records, less one for a header.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "bench" / ".cache" / "accuracy"
TRUTH = ROOT / "bench" / "accuracy_truth.json"
SAMPLE = 64 * 1024
MAX_FILE = 8 * 1024 * 1024

PYPI = {"frictionless": "5.21.0", "csvkit": "2.2.0", "agate": "1.14.2"}
NPM = {"csv-spectrum": "2.0.0"}
# Where each archive keeps its CSV files (other files are not looked at).
FOLDERS = {
    "frictionless": "data/",
    "csvkit": "examples/",
    "agate": "examples/",
    "csv-spectrum": "csvs/",
}
MEASURES = ("delimiter", "has_header", "row_count", "encoding")


@dataclass
class Guess:
    delimiter: str | None
    has_header: bool | None
    row_count: int | None
    encoding: str | None
    seconds: float


def download() -> dict[str, Path]:
    """The archives, downloaded once into the cache."""
    CACHE.mkdir(parents=True, exist_ok=True)
    archives: dict[str, Path] = {}
    for name, version in PYPI.items():
        found = list(CACHE.glob(f"{name}-{version}.tar.gz"))
        if not found:
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "-q", "--no-binary", ":all:",
                 "--no-deps", "-d", str(CACHE), f"{name}=={version}"],
                check=True,
            )  # fmt: skip
            found = list(CACHE.glob(f"{name}-{version}.tar.gz"))
        archives[name] = found[0]
    for name, version in NPM.items():
        target = CACHE / f"{name}-{version}.tgz"
        if not target.exists():
            subprocess.run(
                ["npm", "pack", "--silent", f"{name}@{version}"], cwd=CACHE, check=True,
                stdout=subprocess.DEVNULL,
            )  # fmt: skip
        archives[name] = target
    return archives


def corpus(archives: dict[str, Path]) -> dict[str, bytes]:
    """``source/path`` -> bytes of every CSV file under the corpora's data folders."""
    files: dict[str, bytes] = {}
    for name, archive in archives.items():
        with tarfile.open(archive) as tar:
            for member in tar.getmembers():
                path = member.name.split("/", 1)[1] if "/" in member.name else member.name
                if not (member.isfile() and path.startswith(FOLDERS[name])):
                    continue
                if not path.lower().endswith((".csv", ".tsv")) or member.size > MAX_FILE:
                    continue
                handle = tar.extractfile(member)
                assert handle is not None
                files[f"{name}/{path}"] = handle.read()
    return dict(sorted(files.items()))


def _encoding_name(name: str | None) -> str | None:
    return None if name is None else name.lower()


def _count(text: str, dialect: Any, reader: Callable[..., Any], header: bool) -> int:
    rows = sum(1 for record in reader(io.StringIO(text, newline=""), dialect) if record)
    return max(0, rows - int(header))


def _decode(data: bytes, encoding: str | None) -> str:
    try:
        return data.decode(encoding or "utf-8")
    except (UnicodeDecodeError, LookupError):
        return data.decode("cp1252", errors="replace")


def run_csvstore(data: bytes) -> Guess:
    from csvstore.analysis.stream import UploadAnalysis
    from csvstore.errors import NotACsv

    start = time.perf_counter()
    analysis = UploadAnalysis()
    try:
        for at in range(0, len(data), 1 << 20):
            analysis.feed(data[at : at + (1 << 20)])
        facts = analysis.finish()
    except NotACsv:
        return Guess(None, None, None, None, time.perf_counter() - start)
    return Guess(
        facts.delimiter,
        facts.has_header,
        facts.row_count,
        _encoding_name(facts.encoding),
        time.perf_counter() - start,
    )


def run_clevercsv(data: bytes) -> Guess:
    import chardet  # what clevercsv.encoding.get_encoding runs, on a file name
    import clevercsv

    start = time.perf_counter()
    detector = chardet.UniversalDetector()
    for at in range(0, len(data), SAMPLE):
        detector.feed(data[at : at + SAMPLE])
        if detector.done:
            break
    detector.close()
    encoding = detector.result.get("encoding") or "utf-8"
    text = _decode(data, encoding)
    try:
        dialect = clevercsv.Detector().detect(text[:SAMPLE])
        if dialect is None:
            raise ValueError("no dialect")
        header = bool(clevercsv.Detector().has_header(text[:SAMPLE]))
        rows = _count(text, dialect, clevercsv.reader, header)
        delimiter = dialect.delimiter
    except Exception:
        return Guess(None, None, None, _encoding_name(encoding), time.perf_counter() - start)
    return Guess(delimiter, header, rows, _encoding_name(encoding), time.perf_counter() - start)


def run_sniffer(data: bytes) -> Guess:
    start = time.perf_counter()
    try:
        data.decode("utf-8")
        encoding = "utf-8-sig" if data.startswith(b"\xef\xbb\xbf") else "utf-8"
    except UnicodeDecodeError:
        encoding = "cp1252"
    text = _decode(data, encoding)
    sniffer = csv.Sniffer()
    try:
        dialect = sniffer.sniff(text[:SAMPLE])
        header = sniffer.has_header(text[:SAMPLE])
        rows = _count(text, dialect, csv.reader, header)
    except csv.Error:
        return Guess(None, None, None, encoding, time.perf_counter() - start)
    return Guess(dialect.delimiter, header, rows, encoding, time.perf_counter() - start)


def _right(data: bytes, measure: str, guess: Any, truth: dict[str, Any]) -> bool:
    """An encoding is right when it decodes the file to the same text as the true one (names
    differ: ascii, utf-8; iso8859-7, windows-1253 on Greek letters); the rest must be equal."""
    if measure != "encoding" or guess is None or truth["encoding"] is None:
        return bool(guess == truth[measure])
    try:
        return data.decode(guess) == data.decode(truth["encoding"])
    except (UnicodeDecodeError, LookupError):
        return False


TOOLS: dict[str, Callable[[bytes], Guess]] = {
    "csvstore": run_csvstore,
    "clevercsv": run_clevercsv,
    "csv.Sniffer": run_sniffer,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.accuracy", description=__doc__)
    parser.add_argument("--judge", action="store_true", help="list each wrong guess")
    parser.add_argument(
        "--write-missing-truth",
        action="store_true",
        help="add files without truth, taking the tools' consensus (then judge by hand)",
    )
    args = parser.parse_args(argv)
    csv.field_size_limit(1 << 30)
    files = corpus(download())
    truth: dict[str, dict[str, Any]] = json.loads(TRUTH.read_text()) if TRUTH.exists() else {}
    guesses = {
        tool: {name: run(data) for name, data in files.items()} for tool, run in TOOLS.items()
    }
    if args.write_missing_truth:
        for name in files:
            if name not in truth:
                mine = guesses["csvstore"][name]
                truth[name] = {m: getattr(mine, m) for m in MEASURES}
        TRUTH.write_text(json.dumps(truth, indent=1, ensure_ascii=False, sort_keys=True) + "\n")
    judged = [name for name in files if name in truth]
    missing = len(files) - len(judged)
    print(f"{len(judged)} files with truth ({missing} without: not counted)")
    header = f"{'tool':<12}" + "".join(f"{m:>12}" for m in MEASURES) + f"{'ms/file':>10}"
    print(header)
    table: list[str] = []
    for tool in TOOLS:
        cells = []
        for measure in MEASURES:
            right = sum(
                _right(files[name], measure, getattr(guesses[tool][name], measure), truth[name])
                for name in judged
            )
            cells.append(100 * right / max(1, len(judged)))
        per_file = 1000 * sum(g.seconds for g in guesses[tool].values()) / max(1, len(files))
        print(f"{tool:<12}" + "".join(f"{c:>11.1f}%" for c in cells) + f"{per_file:>10.1f}")
        table.append(
            f"| {tool} | " + " | ".join(f"{c:.1f}%" for c in cells) + f" | {per_file:.1f} |"
        )
        if args.judge:
            for name in judged:
                guess = guesses[tool][name]
                wrong = {
                    m: getattr(guess, m)
                    for m in MEASURES
                    if not _right(files[name], m, getattr(guess, m), truth[name])
                }
                if wrong:
                    print(f"    {name}: {wrong} (truth {truth[name]})")
    print()
    print("| tool | delimiter | header | rows | encoding | ms per file |")
    print("| --- | --- | --- | --- | --- | --- |")
    print("\n".join(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
