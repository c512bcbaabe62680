"""Upload intents: who is about to publish a stored name, and whether they still can.

An intent row (sql/intents.sql) is committed before an upload's bytes appear under their
final name and goes with the commit of the file's row; reconcile spares every name with a
live intent. The long story is in docs/design/intents.md.
"""

from __future__ import annotations

import functools
import os
import socket
from dataclasses import dataclass
from datetime import UTC, datetime

# An intent covers one publish and one commit. Another host's intent older than this is
# taken for an abandoned one (its process cannot be asked whether it lives); a publish
# still waiting on its commit after an hour has long been answered with an error.
INTENT_TIMEOUT = 3600.0


@dataclass(frozen=True, slots=True)
class Intent:
    storage_key: str
    owner: str
    created_at: str


@functools.cache
def _host() -> str:
    return socket.gethostname().replace(" ", "_") or "localhost"


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc/<pid>/stat, field 22):
    with the pid it names one process, even after the pid is reused."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[19].decode() if len(fields) > 19 else None


def this_owner() -> str:
    """This process, as an intent's owner: ``"<host> <pid> <start time>"``."""
    pid = os.getpid()
    return f"{_host()} {pid} {_start_time(pid) or '-'}"


def owner_alive(owner: str, created_at: str, *, now: datetime | None = None) -> bool:
    """Whether the process that wrote an intent may still publish its name."""
    host, _, rest = owner.partition(" ")
    pid_text, _, started = rest.partition(" ")
    if host == _host() and pid_text.isascii() and pid_text.isdigit():
        running = _start_time(int(pid_text))
        if started != "-":
            return running == started
        if running is None:
            return False
    try:
        written = datetime.fromisoformat(created_at)
    except ValueError:
        return False
    return ((now or datetime.now(UTC)) - written).total_seconds() < INTENT_TIMEOUT
