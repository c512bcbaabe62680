"""What the tus engine reports as it goes, for the metrics (csvstore.metrics.TusMetrics)."""

from __future__ import annotations

from typing import Protocol


class TusEvents(Protocol):
    """What the engine reports as it goes (csvstore.metrics.TusMetrics counts them)."""

    def created(self) -> None: ...
    def finished(self) -> None: ...
    def terminated(self) -> None: ...
    def expired(self, count: int) -> None: ...
    def received(self, size: int) -> None: ...
    def patched(self, outcome: str) -> None: ...


class Unobserved:
    """No one counts: the engine of a command or a test."""

    def created(self) -> None:
        pass

    def finished(self) -> None:
        pass

    def terminated(self) -> None:
        pass

    def expired(self, count: int) -> None:
        pass

    def received(self, size: int) -> None:
        pass

    def patched(self, outcome: str) -> None:
        pass
