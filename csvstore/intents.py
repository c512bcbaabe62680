"""Upload intents' owners: who is about to publish a stored name, and whether they still
can (docs/design/intents.md)."""

from __future__ import annotations

import functools
import os
import socket
from datetime import UTC, datetime

# Another host's intent older than this is abandoned: its process cannot be asked.
INTENT_TIMEOUT = 3600.0
REMOVING = "removing"


@functools.cache
def _machine() -> str:
    """Where a pid means one process: this boot, this pid namespace, this host name."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as boot:
            boot_id = boot.read().strip()
        namespace = os.readlink("/proc/self/ns/pid").removeprefix("pid:").strip("[]")
    except OSError:
        return "-"  # no /proc: never the same machine, so intents age out instead
    host = socket.gethostname().replace(" ", "_") or "localhost"
    return f"{boot_id}/{namespace}/{host}"


def _start_time(pid: int) -> str | None:
    """The process's start time (/proc/<pid>/stat field 22): names it across pid reuse."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[19].decode() if len(fields) > 19 else None


def this_owner() -> str:
    """This process, as an intent's owner: ``"<machine> <pid> <start time>"``."""
    pid = os.getpid()
    owner = _owners.get(pid)
    if owner is None:  # asked once per process (by pid: a forked worker is another owner)
        started = _start_time(pid)
        owner = f"{_machine()} {pid} {started or '-'}"
        if started is not None:
            _owners[pid] = owner
    return owner


_owners: dict[int, str] = {}


def owner_alive(owner: str, created_at: str, *, now: datetime | None = None) -> bool:
    """Whether the process that wrote an intent may still publish its name (a delete: never)."""
    if owner == REMOVING:
        return False
    machine, _, rest = owner.partition(" ")
    pid_text, _, started = rest.partition(" ")
    here = _machine()
    if machine == here != "-" and pid_text.isascii() and pid_text.isdigit() and started != "-":
        return _start_time(int(pid_text)) == started
    try:
        written = datetime.fromisoformat(created_at)
    except ValueError:
        return False
    return ((now or datetime.now(UTC)) - written).total_seconds() < INTENT_TIMEOUT
