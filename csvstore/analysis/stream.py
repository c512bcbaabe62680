"""What csvstore learns about an upload in the one pass that writes it: each chunk checked,
hashed and profiled on its way to storage."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import logging
from dataclasses import dataclass, field
from typing import Any

from csvstore.analysis.content import CsvContentCheck
from csvstore.analysis.profile import CsvProfile, CsvProfiler
from csvstore.analysis.projection import profilable

log = logging.getLogger("csvstore.analysis")

# The header is re-read from these first bytes when the encoding is detected at the end.
_HEAD_KEPT = 64 * 1024


@dataclass(frozen=True, slots=True)
class FileFacts:
    sha256: str | None = None
    encoding: str | None = None
    encoding_source: str | None = None  # declared | bom | detected | fallback
    encoding_confidence: float | None = None
    invalid_bytes: int | None = None
    first_invalid_offset: int | None = None
    delimiter: str | None = None
    quotechar: str | None = None
    line_terminator: str | None = None
    has_header: bool | None = None
    columns: list[str] | None = None
    column_count: int | None = None
    row_count: int | None = None
    ragged_rows: int | None = None
    checkpoints: list[tuple[int, int]] = field(default_factory=list)
    # Dialect (issue 17): see CsvProfile.
    preamble_lines: int | None = None
    skip_initial_space: bool | None = None
    comment_char: str | None = None
    duplicate_columns: list[str] | None = None
    footer_lines: int | None = None
    escape_char: str | None = None
    header_rule: bool | None = None


class UploadAnalysis:
    """Feed every chunk in order; :meth:`finish` returns the facts or raises NotACsv."""

    def __init__(
        self, *, enabled: bool = True, checkpoint_every: int = 10_000, encoding: str | None = None
    ) -> None:
        self._check = CsvContentCheck(encoding)
        self._enabled = enabled
        self._checkpoint_every = checkpoint_every
        self._hash = hashlib.sha256() if enabled else None
        self._profiler: CsvProfiler | None = None
        self._profile_failed = False
        self._waiting: list[bytes] = []  # bytes seen before the encoding family is known
        self._head = bytearray()

    def feed(self, chunk: bytes) -> None:
        self.profile(self.check(chunk))
        self.digest(chunk)

    def digest(self, chunk: bytes) -> None:
        """The hashing part of :meth:`feed`, which may run in a worker thread."""
        if self._hash is not None:
            self._hash.update(chunk)

    def check(self, chunk: bytes) -> list[bytes]:
        """The content check, on the caller's thread: what :meth:`profile` is to count next."""
        self._check.feed(chunk)
        if self._hash is None or self._profile_failed:
            return []
        if len(self._head) < _HEAD_KEPT:
            self._head += chunk[: _HEAD_KEPT - len(self._head)]
        if self._profiler is not None:
            return [chunk]
        self._waiting.append(chunk)
        if not self._check.started:
            return []
        return self._start_profiler(self._check.encoding or "utf-8")

    def profile(self, chunks: list[bytes]) -> None:
        """The profiling part of :meth:`feed`: may run in a worker thread, one call at a time."""
        for chunk in chunks:
            self._profile(chunk)

    def finish(self) -> FileFacts:
        verdict = self._check.finish()
        encoding = verdict.encoding

        def facts(**more: Any) -> FileFacts:
            # One FileFacts built, not three (dataclasses.replace is costly per small upload).
            return FileFacts(
                encoding=encoding,
                encoding_source=verdict.source,
                encoding_confidence=verdict.confidence,
                invalid_bytes=verdict.invalid_bytes,
                first_invalid_offset=verdict.first_invalid_offset,
                **more,
            )

        if self._hash is None:
            return facts()
        sha256 = self._hash.hexdigest()
        if self._profiler is None and not self._profile_failed:
            self.profile(self._start_profiler(encoding))
        profile = self._finish_profile(encoding)
        if profile is None:
            return facts(sha256=sha256)
        return facts(
            sha256=sha256,
            delimiter=profile.delimiter,
            quotechar=profile.quotechar,
            line_terminator=profile.line_terminator,
            has_header=profile.has_header,
            columns=profile.columns,
            column_count=profile.column_count,
            row_count=profile.row_count,
            ragged_rows=profile.ragged_rows,
            checkpoints=profile.checkpoints,
            preamble_lines=profile.preamble_lines,
            skip_initial_space=profile.skip_initial_space,
            comment_char=profile.comment_char,
            duplicate_columns=profile.duplicate_columns,
            footer_lines=profile.footer_lines,
            escape_char=profile.escape_char,
            header_rule=profile.header_rule,
        )

    def _start_profiler(self, encoding: str) -> list[bytes]:
        # Undeclared: counted as UTF-8 meanwhile (the specials are ASCII in every detected
        # code page); only the header is decoded again.
        waiting, self._waiting = self._waiting, []
        if not profilable(encoding):
            self._profile_failed = True  # declared codecs such as UTF-32: stored unprofiled
            return []
        self._profiler = CsvProfiler(encoding=encoding, checkpoint_every=self._checkpoint_every)
        return waiting

    def _profile(self, chunk: bytes) -> None:
        if self._profile_failed or self._profiler is None:
            return
        try:
            self._profiler.feed(chunk)
        except Exception:
            self._give_up()

    def _finish_profile(self, encoding: str) -> CsvProfile | None:
        if self._profile_failed or self._profiler is None:
            return None
        try:
            profile = self._profiler.finish()
        except Exception:
            self._give_up()
            return None
        if profile.encoding != encoding:
            columns = self._header_in(encoding, profile) if profile.has_header else []
            profile = dataclasses.replace(profile, encoding=encoding, columns=columns)
        return profile

    def _header_in(self, encoding: str, profile: CsvProfile) -> list[str]:
        head = bytes(self._head)[profile.table_offset :]
        text = io.StringIO(head.decode(encoding, errors="replace"), newline="")
        reader = csv.reader(
            text,
            delimiter=profile.delimiter,
            quotechar=profile.quotechar,
            skipinitialspace=profile.skip_initial_space,
            escapechar=profile.escape_char,
        )
        for record in reader:
            if record:
                record[0] = record[0].removeprefix("\ufeff")  # GB18030's BOM, decoded
                if len(profile.columns) == len(record) + 1:  # a header one name short
                    record.insert(0 if profile.columns[0] == "" else len(record), "")
                return record
        return profile.columns

    def _give_up(self) -> None:
        # A profile is a description, not a verdict: such a file is stored unprofiled.
        self._profile_failed = True
        log.warning("could not profile an upload; storing it without a profile", exc_info=True)
