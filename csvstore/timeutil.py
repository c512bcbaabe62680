"""Timestamps as the API shows them: RFC 3339, UTC, millisecond precision, ``Z`` suffix."""

from __future__ import annotations

from datetime import UTC, datetime


def format_utc(moment: datetime) -> str:
    """``2024-01-01T12:00:00.123Z``: sorts as text, and matches SQLite's ``%Y-%m-%dT%H:%M:%fZ``."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def utc_now() -> str:
    return format_utc(datetime.now(UTC))
