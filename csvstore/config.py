"""Settings: one frozen dataclass, built from flags and ``CSVSTORE_*`` variables.

Tests build :class:`Settings` directly; ``__main__`` builds it from the command line,
falling back to the environment, falling back to the defaults below.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

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


def check_storage(value: str) -> str:
    """An ``s3://`` URL or a path; another URL scheme is an error."""
    if value.startswith(S3_SCHEME):
        parse_s3_url(value)
        return value
    if "://" in value:
        raise ValueError(f"unsupported storage {value!r}: use a folder path or s3://BUCKET/PREFIX")
    return value


_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")


def parse_duration(text: str) -> float:
    """``"90"`` or ``"90s"`` -> 90.0; ``"15m"``, ``"24h"``, ``"7d"`` likewise."""
    match = _DURATION_RE.match(text.lower())
    if match is None:
        raise ValueError(f"not a duration: {text!r} (use seconds or 30s, 15m, 24h, 7d)")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2)]


def _help(text: str, env: str, flag: str | None = None) -> dict[str, Any]:
    return {"help": text, "env": env, "flag": flag}


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the service can be told. Each field is a flag and a ``CSVSTORE_*`` variable."""

    host: str = field(
        default="127.0.0.1",
        metadata=_help(
            "address to listen on; loopback by default so a fresh start is never public",
            "CSVSTORE_HOST",
        ),
    )
    port: int = field(default=8000, metadata=_help("TCP port to listen on", "CSVSTORE_PORT"))
    data_dir: Path = field(
        default=Path("."),
        metadata=_help(
            "folder holding the SQLite database (csvstore.db), the stored files (uploads/) "
            "and in-progress uploads (tmp/)",
            "CSVSTORE_DATA_DIR",
        ),
    )
    # 1 GiB: large enough for real exports, small enough that one client cannot fill a disk
    # by accident. Checked while streaming, so a bigger upload costs nothing to refuse.
    max_upload_size: int = field(
        default=GiB,
        metadata=_help(
            "largest accepted CSV file (bytes, or with a unit: 512MiB, 2GiB); larger -> 413",
            "CSVSTORE_MAX_UPLOAD_SIZE",
        ),
    )
    log_level: str = field(
        default="info",
        metadata=_help("logging level: debug, info, warning, error", "CSVSTORE_LOG_LEVEL"),
    )
    # None by default: sessions live until deleted, as in the original service.
    session_ttl: float = field(
        default=0.0,
        metadata=_help(
            "default lifetime of a new session (seconds, or 30m, 24h, 7d); 0 = forever; "
            "a client may ask for its own with ttl_seconds",
            "CSVSTORE_SESSION_TTL",
        ),
    )
    # A minute: expired data goes soon after its time, and an idle server does little work.
    sweep_interval: float = field(
        default=60.0,
        metadata=_help(
            "seconds between sweeps that delete expired sessions and their files",
            "CSVSTORE_SWEEP_INTERVAL",
        ),
    )
    # A day: a client whose connection dropped has the night to come back, and the partial
    # bytes of one that never does are not kept for long.
    tus_expiry: float = field(
        default=24 * 3600.0,
        metadata=_help(
            "how long a resumable (tus) upload may sit idle before it expires and its partial "
            "bytes are removed (seconds, or 30m, 24h, 7d); every received byte restarts it",
            "CSVSTORE_TUS_EXPIRY",
        ),
    )
    # Half a minute: after an instance dies mid-PATCH its upload answers 423 that long at
    # most; the holder renews its lease every third of it (one small PUT).
    tus_lease: float = field(
        default=30.0,
        metadata=_help(
            "S3 storage: how long a request's hold on a resumable (tus) upload outlives the "
            "request's process if it dies (seconds); the upload answers 423 meanwhile",
            "CSVSTORE_TUS_LEASE",
        ),
    )
    log_format: str = field(
        default="text",
        metadata=_help(
            "text (readable) or json (one object per line, for log shippers)",
            "CSVSTORE_LOG_FORMAT",
        ),
    )
    # 1 MiB chunks: aiohttp's default 8 KiB read_chunk costs a thread hop per 8 KiB written;
    # 1 MiB keeps hops rare while memory stays bounded at one chunk per upload in flight.
    upload_chunk_size: int = field(
        default=MiB,
        metadata=_help(
            "bytes read from the request and written to disk per step",
            "CSVSTORE_UPLOAD_CHUNK_SIZE",
        ),
    )
    # A client that sends nothing for this long is cut off, so a stalled upload cannot hold
    # a connection and a temp file forever.
    body_read_timeout: float = field(
        default=60.0,
        metadata=_help(
            "seconds to wait for the next piece of a request body before giving up",
            "CSVSTORE_BODY_READ_TIMEOUT",
        ),
    )

    # One process uses one core; on a multi-core machine more workers share the port
    # (SO_REUSEPORT) and the one SQLite database.
    workers: int = field(
        default=1,
        metadata=_help(
            "server processes sharing the port; 0 means one per CPU core",
            "CSVSTORE_WORKERS",
        ),
    )

    # The worker threads behind file writes, fsyncs, renames and hashes. Python's default
    # (cores + 4) suits CPU work; these threads mostly wait in fsync. With 6 of them, small
    # uploads at 64 connections waited ~45 ms for a thread; with 32 the wait moves into the
    # disk's queue (no clear change in uploads/s here, bench/RESULTS.md), but a slow fsync
    # no longer holds up unrelated file work such as downloads' reads.
    io_threads: int = field(
        default=32,
        metadata=_help(
            "worker threads per process for blocking file work (writes, fsync, renames, "
            "hashing); most of their time is spent waiting for the disk",
            "CSVSTORE_IO_THREADS",
        ),
    )

    # Hashing and profiling cost a little CPU per byte; switching them off exists only so
    # the benchmark can measure that cost. Digest checks and dedupe need them on.
    analyse_uploads: bool = field(
        default=True,
        metadata=_help(
            "compute sha256 and the CSV profile while streaming (true/false)",
            "CSVSTORE_ANALYSE_UPLOADS",
        ),
    )

    # /rows costs what it parses, not what a file's rows or cells hold (README, "Profiling").
    rows_max_bytes: int = field(
        default=8 * MiB,
        metadata=_help(
            "bytes one /rows request parses at most, from its first row (64KiB-16MiB); "
            "longer rows make shorter pages",
            "CSVSTORE_ROWS_MAX_BYTES",
        ),
    )
    rows_cell_limit: int = field(
        default=65_536,
        metadata=_help(
            "characters of a cell /rows returns: a longer cell comes back cut, listed in truncated",
            "CSVSTORE_ROWS_CELL_LIMIT",
        ),
    )

    # "full": a 201 survives a crash or power cut (fsync of file, folder and database).
    # "fast": no fsync; a 201 survives the process being killed, not the machine losing power.
    durability: str = field(
        default="full",
        metadata=_help(
            "full (fsync before every 201) or fast (no fsync: survives a process crash, "
            "not a power cut)",
            "CSVSTORE_DURABILITY",
        ),
    )
    # Small uploads' bytes wait in the database's journal until the uploads folder is synced
    # (storage.py); a sync per second is cheap, and the journal stays about that big.
    journal_interval: float = field(
        default=1.0,
        metadata=_help(
            "seconds between syncs of the uploads folder that let small uploads' bytes leave "
            "the database's journal (durability full, local storage)",
            "CSVSTORE_JOURNAL_INTERVAL",
        ),
    )
    # Refusing an upload that would leave less than this free keeps room for the database,
    # the logs and the uploads already in flight.
    min_free_space: int = field(
        default=64 * MiB,
        metadata=_help(
            "uploads are refused with 507 when the disk would have less free space than this",
            "CSVSTORE_MIN_FREE_SPACE",
        ),
    )
    # nginx's choice: long enough for a keep-alive client between requests, short enough
    # that a connection which never finishes its headers (slowloris) is dropped.
    idle_timeout: float = field(
        default=75.0,
        metadata=_help(
            "seconds a connection may stay without a complete request (headers that never "
            "finish, or an idle keep-alive) before it is closed",
            "CSVSTORE_IDLE_TIMEOUT",
        ),
    )
    # A load balancer's probe waits a few seconds at most; a dependency that takes longer
    # than 2 s to answer a trivial query is not fit for traffic anyway.
    ready_timeout: float = field(
        default=2.0,
        metadata=_help(
            "seconds each of /readyz's checks (database, storage) may take before it "
            "counts as failing",
            "CSVSTORE_READY_TIMEOUT",
        ),
    )
    # Long enough for a typical upload to finish, short enough for a deploy to proceed.
    shutdown_grace: float = field(
        default=30.0,
        metadata=_help(
            "seconds in-flight requests may take to finish after SIGTERM before they are "
            "aborted (their partial uploads removed)",
            "CSVSTORE_SHUTDOWN_GRACE",
        ),
    )
    api_keys: str = field(
        default="",
        metadata=_help(
            "comma-separated API keys; 'ro:KEY' makes a read-only (GET) key; when any key is "
            "configured every /api route needs 'Authorization: Bearer KEY'",
            "CSVSTORE_API_KEYS",
        ),
    )
    api_keys_file: Path | None = field(
        default=None,
        metadata=_help(
            "file with one API key per line: KEY, sha256:HEX (stored hashed), "
            "prefix 'ro:' for read-only; '#' starts a comment",
            "CSVSTORE_API_KEYS_FILE",
        ),
    )
    insecure: bool = field(
        default=False,
        metadata=_help(
            "allow listening on a non-loopback address without API keys (true/false)",
            "CSVSTORE_INSECURE",
        ),
    )
    cors_origins: str = field(
        default="",
        metadata=_help(
            "comma-separated origins allowed to call the API from a browser (CORS); "
            "empty = CORS off",
            "CSVSTORE_CORS_ORIGINS",
        ),
    )
    # SQLite in data_dir needs no set-up; PostgreSQL lets several instances share the
    # metadata (README, "Scaling out"). A URL, so one setting names engine and place.
    database_url: str = field(
        default="",
        metadata=_help(
            "metadata database: empty for SQLite at DATA_DIR/csvstore.db; a path, "
            "sqlite:///relative/path.db or sqlite:////absolute/path.db for another SQLite "
            "file; postgresql://USER[:PASSWORD]@HOST[:PORT]/DB for PostgreSQL",
            "CSVSTORE_DATABASE_URL",
        ),
    )

    # A local folder needs no set-up; an S3-compatible bucket lets several instances share
    # the bytes (README, "Scaling out"). A URL, so one setting names the kind and the place.
    storage: str = field(
        default="",
        metadata=_help(
            "where stored files go: empty for DATA_DIR/uploads; a path for another local "
            "folder; s3://BUCKET/PREFIX for an S3-compatible bucket (credentials from the "
            "standard AWS settings: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, ...)",
            "CSVSTORE_STORAGE",
        ),
    )
    s3_endpoint_url: str = field(
        default="",
        metadata=_help(
            "S3 endpoint for MinIO, Ceph, R2, SeaweedFS and the like (http://host:port); "
            "empty for AWS itself",
            "CSVSTORE_S3_ENDPOINT_URL",
        ),
    )
    s3_region: str = field(
        default="",
        metadata=_help(
            "S3 region; empty to take it from AWS_REGION / AWS_DEFAULT_REGION / the profile",
            "CSVSTORE_S3_REGION",
        ),
    )
    # 8 MiB: S3's minimum part is 5 MiB; a little more halves the requests of a large upload
    # while memory stays at two parts per upload in flight.
    s3_part_size: int = field(
        default=8 * MiB,
        metadata=_help(
            "multipart upload part size for S3 storage (at least 5MiB); an upload holds at "
            "most two parts in memory; uploads smaller than one part are a single PUT",
            "CSVSTORE_S3_PART_SIZE",
        ),
    )

    @property
    def uses_s3(self) -> bool:
        return self.storage.startswith(S3_SCHEME)

    @property
    def uses_postgres(self) -> bool:
        return self.database_url.startswith(POSTGRES_SCHEMES)

    @property
    def database_path(self) -> Path:
        """The SQLite file: the one database_url names, else DATA_DIR/csvstore.db."""
        url = self.database_url
        if not url or self.uses_postgres:
            return self.data_dir / "csvstore.db"
        return Path(url.removeprefix(SQLITE_SCHEME))

    @property
    def uploads_dir(self) -> Path:
        """The local folder of stored files: the one ``storage`` names, else DATA_DIR/uploads."""
        if self.storage and not self.uses_s3:
            return Path(self.storage)
        return self.data_dir / "uploads"

    @property
    def temp_dir(self) -> Path:
        # On the same filesystem as the stored files, so publishing is an atomic rename.
        if self.storage and not self.uses_s3:
            return Path(self.storage) / ".tmp"
        return self.data_dir / "tmp"

    @classmethod
    def from_mapping(cls, values: Mapping[str, str]) -> Settings:
        """Build settings from ``CSVSTORE_*`` style strings (the environment, or a test's dict)."""
        kwargs: dict[str, Any] = {}
        for f in fields(cls):
            raw = values.get(f.metadata["env"])
            if raw is not None and raw != "":
                kwargs[f.name] = convert(f.name, raw)
        return cls(**kwargs)


def convert(name: str, raw: str) -> Any:
    """Turn the text of one setting into its typed value; ``ValueError`` says what is wrong."""
    if name in {"max_upload_size", "upload_chunk_size", "min_free_space"}:
        return parse_size(raw)
    if name in {"analyse_uploads", "insecure"}:
        lowered = raw.strip().lower()
        if lowered not in {"true", "false", "1", "0", "yes", "no", "on", "off"}:
            raise ValueError(f"expected true or false, got {raw!r}")
        return lowered in {"true", "1", "yes", "on"}
    if name == "tus_lease":
        lease = parse_duration(raw)
        if lease < 1:
            raise ValueError(f"the tus lease is at least 1 second, got {raw!r}")
        return lease
    if name in {"session_ttl", "sweep_interval", "tus_expiry"}:
        return parse_duration(raw)
    if name == "journal_interval":
        interval = parse_duration(raw)
        if not 0.01 <= interval <= 86400:
            raise ValueError(f"the journal interval is 0.01 s to 1 day, got {raw!r}")
        return interval
    if name == "log_format":
        if raw not in {"text", "json"}:
            raise ValueError(f"log format is text or json, got {raw!r}")
        return raw
    if name == "durability":
        if raw not in {"full", "fast"}:
            raise ValueError(f"durability is full or fast, got {raw!r}")
        return raw
    if name in {"shutdown_grace", "idle_timeout"}:
        return float(raw)
    if name == "ready_timeout":
        seconds = float(raw)
        if not seconds > 0:
            raise ValueError(f"ready timeout must be more than 0 seconds, got {raw}")
        return seconds
    if name == "api_keys_file":
        return Path(raw)
    if name == "workers":
        workers = int(raw)
        if workers < 0:
            raise ValueError(f"workers must be 0 (one per core) or more, got {workers}")
        return workers or (os.cpu_count() or 1)
    if name == "io_threads":
        threads = int(raw)
        if not 1 <= threads <= 1024:
            raise ValueError(f"io threads must be between 1 and 1024, got {threads}")
        return threads
    if name == "port":
        port = int(raw)
        if not 0 <= port <= 65535:
            raise ValueError(f"port out of range: {port}")
        return port
    if name == "body_read_timeout":
        return float(raw)
    if name == "data_dir":
        return Path(raw)
    if name == "database_url":
        return check_database_url(raw)
    if name == "storage":
        return check_storage(raw)
    if name == "rows_max_bytes":
        size = parse_size(raw)
        if not 64 * KiB <= size <= 16 * MiB:  # 16 MiB: profiling.READ_FIELD_LIMIT
            raise ValueError(f"the /rows byte bound is between 64KiB and 16MiB, got {raw!r}")
        return size
    if name == "rows_cell_limit":
        limit = int(raw)
        if limit < 1:
            raise ValueError(f"the /rows cell limit is at least 1 character, got {raw!r}")
        return limit
    if name == "s3_part_size":
        size = parse_size(raw)
        if not S3_MIN_PART_SIZE <= size <= S3_MAX_PART_SIZE:
            raise ValueError(f"the S3 part size is between 5MiB and 5GiB, got {raw!r}")
        return size
    if name == "log_level":
        if raw.lower() not in {"debug", "info", "warning", "error", "critical"}:
            raise ValueError(f"unknown log level: {raw}")
        return raw.lower()
    return raw
