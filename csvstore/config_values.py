"""How settings are written: sizes, durations, switches, URLs, addresses and rates. Each
parser returns the value or raises ValueError saying what it expected (docs/settings.md)."""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

_SIZE_UNITS = {"": 1, "b": 1, "k": KiB, "kb": KiB, "kib": KiB, "m": MiB, "mb": MiB, "mib": MiB}
_SIZE_UNITS |= {"g": GiB, "gb": GiB, "gib": GiB, "t": 1024 * GiB, "tb": 1024 * GiB}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str) -> int:
    """``"1GiB"`` -> 1073741824; plain numbers are bytes. Units are binary (1k = 1024)."""
    match = _SIZE_RE.match(text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _SIZE_UNITS:
        raise ValueError(f"not a size: {text!r} (use bytes or a unit such as 64KiB, 1GiB)")
    return int(float(match.group(1)) * _SIZE_UNITS[unit])


def format_size(size: int) -> str:
    for unit, name in ((GiB, "GiB"), (MiB, "MiB"), (KiB, "KiB")):
        if size and size % unit == 0:
            return f"{size // unit}{name}"
    return str(size)


_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")


def parse_duration(text: str) -> float:
    """``"90"`` or ``"90s"`` -> 90.0; ``"15m"``, ``"24h"``, ``"7d"`` likewise."""
    match = _DURATION_RE.match(text.lower())
    if match is None:
        raise ValueError(f"not a duration: {text!r} (use seconds or 30s, 15m, 24h, 7d)")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2)]


def format_duration(seconds: float) -> str:
    if seconds == 0:
        return "0"
    for unit, name in ((86400, "d"), (3600, "h"), (60, "m")):
        if seconds % unit == 0 and seconds >= 2 * unit:
            return f"{int(seconds // unit)}{name}"
    return f"{seconds:g}s"


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered not in {"true", "false", "1", "0", "yes", "no", "on", "off"}:
        raise ValueError(f"expected true or false, got {text!r}")
    return lowered in {"true", "1", "yes", "on"}


def parse_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"expected an integer, got {text!r}") from None


POSTGRES_SCHEMES = ("postgresql://", "postgres://")
# SQLAlchemy's form: three slashes then the path, so an absolute path makes four.
SQLITE_SCHEME = "sqlite:///"
S3_SCHEME = "s3://"
S3_MIN_PART_SIZE = 5 * MiB  # S3's own minimum for every part but the last
S3_MAX_PART_SIZE = 5 * GiB


def check_database_url(url: str) -> str:
    """A PostgreSQL URL, a ``sqlite:///`` URL or a plain path; anything else is an error."""
    if url.startswith(POSTGRES_SCHEMES):
        return url
    if url.startswith(SQLITE_SCHEME) and len(url) > len(SQLITE_SCHEME):
        return url
    if "://" in url or url.startswith("sqlite:"):
        raise ValueError(
            f"unsupported database URL {url!r}: use postgresql://USER@HOST:PORT/DB, "
            "sqlite:///PATH or a path"
        )
    return url


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> ``("bucket", "some/prefix/")``; the prefix may be empty."""
    if not url.startswith(S3_SCHEME):
        raise ValueError(f"not an S3 URL: {url!r} (use s3://BUCKET/PREFIX)")
    bucket, _, prefix = url.removeprefix(S3_SCHEME).partition("/")
    if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", bucket):
        raise ValueError(
            f"not an S3 bucket name: {bucket!r} in {url!r} (3-63 characters of a-z 0-9 . -)"
        )
    prefix = prefix.strip("/")
    return bucket, f"{prefix}/" if prefix else ""


def check_networks(text: str) -> str:
    items = [item.strip() for item in text.split(",") if item.strip()]
    for item in items:
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise ValueError(f"not an IP address or network: {item!r}") from None
    return ",".join(items)


def parse_host(text: str) -> str:
    """An address or name to listen on; ``[::1]``, as URLs write IPv6, is ``::1``."""
    host = text.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"not an IPv6 address in brackets: {text!r}") from None
    if not host or any(ch in host for ch in "/[] "):
        raise ValueError(f"not an address or host name: {text!r}")
    return host


_ORIGIN_RE = re.compile(r"https?://[^/?#\s]+")


def check_origins(text: str) -> str:
    """Origins as browsers send them: scheme://host[:port], no path (a trailing / is dropped)."""
    origins = [item.strip().removesuffix("/") for item in text.split(",") if item.strip()]
    for origin in origins:
        if origin != "*" and not _ORIGIN_RE.fullmatch(origin):  # *: any origin
            raise ValueError(
                f"not an origin: {origin!r} (an origin is scheme://host[:port], with no path, "
                "as browsers send it: https://app.example.com)"
            )
    return ",".join(origins)


def check_storage(value: str) -> str:
    """An ``s3://`` URL or a path; another URL scheme is an error."""
    if value.startswith(S3_SCHEME):
        parse_s3_url(value)
        return value
    if "://" in value:
        raise ValueError(f"unsupported storage {value!r}: use a folder path or s3://BUCKET/PREFIX")
    return value


def parse_workers(text: str) -> int:
    workers = parse_int(text)
    if workers < 0:
        raise ValueError(f"workers must be 0 (one per core) or more, got {text!r}")
    return workers or (os.cpu_count() or 1)


@dataclass(frozen=True, slots=True)
class RateLimit:
    """At most ``count`` requests in any ``period`` seconds."""

    count: int
    period: float

    @property
    def per_second(self) -> float:
        return self.count / self.period


_PERIODS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def parse_rate_limit(text: str) -> RateLimit | None:
    """``"10"`` or ``"10/s"``, ``"600/m"``, ``"5000/h"``; ``"0"`` is no limit."""
    count, slash, unit = text.strip().lower().partition("/")
    count, unit = count.strip(), unit.strip() if slash else "s"
    if not (count.isascii() and count.isdigit()) or unit not in _PERIODS:
        raise ValueError(f"not a rate: {text!r} (use 0 for none, or N/s, N/m, N/h)")
    return RateLimit(int(count), _PERIODS[unit]) if int(count) else None


def format_rate_limit(limit: RateLimit | None) -> str:
    if limit is None:
        return "0"
    unit = next(u for u, seconds in _PERIODS.items() if seconds == limit.period)
    return f"{limit.count}/{unit}"
