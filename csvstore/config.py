"""Settings: one frozen dataclass. Each field owns its parser, help and group, and is both
the flag ``--name`` and the variable ``CSVSTORE_NAME`` (docs/settings.md)."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import Field, dataclass, field, fields
from pathlib import Path
from typing import Any

from csvstore.config_values import (
    POSTGRES_SCHEMES,
    S3_MAX_PART_SIZE,
    S3_MIN_PART_SIZE,
    S3_SCHEME,
    SQLITE_SCHEME,
    GiB,
    KiB,
    MiB,
    RateLimit,
    check_database_url,
    check_networks,
    check_origins,
    check_storage,
    format_duration,
    format_rate_limit,
    format_size,
    parse_bool,
    parse_duration,
    parse_host,
    parse_int,
    parse_rate_limit,
    parse_size,
    parse_workers,
)

ENV_PREFIX = "CSVSTORE_"
GROUPS = (
    "server",
    "storage and database",
    "uploads and limits",
    "resumable uploads (tus)",
    "retention",
    "queries",
    "security",
    "observability",
)
SERVER, STORAGE, UPLOADS, TUS, RETENTION, QUERIES, SECURITY, OBSERVABILITY = GROUPS


def _checked(
    parse: Callable[[str], Any], ok: Callable[[Any], bool], expected: str
) -> Callable[[str], Any]:
    def check(text: str) -> Any:
        value = parse(text)
        if not ok(value):
            raise ValueError(f"{expected}, got {text!r}")
        return value

    return check


def _one_of(*choices: str) -> Callable[[str], str]:
    def check(text: str) -> str:
        if text.lower() not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {text!r}")
        return text.lower()

    return check


_positive = _checked(parse_int, lambda n: n >= 1, "expected 1 or more")


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return "" if value is None else str(value)


@dataclass(frozen=True, slots=True)
class Spec:
    """How one setting is read from text and explained."""

    help: str
    group: str
    parse: Callable[[str], Any]
    show: Callable[[Any], str] = _show
    metavar: str = ""
    choices: tuple[str, ...] = ()


def _setting(
    help: str, group: str, parse: Callable[[str], Any] = str, **more: Any
) -> dict[str, Spec]:
    return {"spec": Spec(help, group, parse, **more)}


def _size(help: str, group: str, parse: Callable[[str], Any] = parse_size) -> dict[str, Spec]:
    return _setting(help, group, parse, show=format_size, metavar="SIZE")


def _duration(
    help: str, group: str, parse: Callable[[str], Any] = parse_duration
) -> dict[str, Spec]:
    return _setting(help, group, parse, show=format_duration, metavar="DURATION")


def _choice(help: str, group: str, *choices: str) -> dict[str, Spec]:
    return _setting(help, group, _one_of(*choices), choices=choices)


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the service can be told; tests build it directly."""

    host: str = field(
        default="127.0.0.1",
        metadata=_setting(
            "address to listen on; loopback by default so a fresh start is never public",
            SERVER,
            parse_host,
        ),
    )
    port: int = field(
        default=8000,
        metadata=_setting(
            "TCP port to listen on",
            SERVER,
            _checked(parse_int, lambda p: 0 <= p <= 65535, "expected a port from 0 to 65535"),
        ),
    )
    # One process uses one core; more workers share the port (SO_REUSEPORT) and the database.
    workers: int = field(
        default=1,
        metadata=_setting(
            "server processes sharing the port; 0 means one per CPU core", SERVER, parse_workers
        ),
    )
    # These threads mostly wait in fsync, so more than Python's default (cores + 4): a slow
    # fsync then does not hold up unrelated file work such as downloads' reads.
    io_threads: int = field(
        default=32,
        metadata=_setting(
            "worker threads per process for blocking file work (writes, fsync, renames, "
            "hashing); most of their time is spent waiting for the disk",
            SERVER,
            _checked(parse_int, lambda n: 1 <= n <= 1024, "io threads must be between 1 and 1024"),
        ),
    )
    # nginx's choice: long enough for a keep-alive client between requests, short enough
    # that a connection which never finishes its headers (slowloris) is dropped.
    idle_timeout: float = field(
        default=75.0,
        metadata=_duration(
            "how long a connection may stay without a complete request (headers that never "
            "finish, or an idle keep-alive) before it is closed",
            SERVER,
        ),
    )
    # Long enough for a typical upload to finish, short enough for a deploy to proceed.
    shutdown_grace: float = field(
        default=30.0,
        metadata=_duration(
            "how long in-flight requests may take to finish after SIGTERM before they are "
            "aborted (their partial uploads removed)",
            SERVER,
        ),
    )

    data_dir: Path = field(
        default=Path("."),
        metadata=_setting(
            "folder holding the SQLite database (csvstore.db), the stored files (uploads/) "
            "and in-progress uploads (tmp/)",
            STORAGE,
            Path,
        ),
    )
    database_url: str = field(
        default="",
        metadata=_setting(
            "metadata database: empty for SQLite at DATA_DIR/csvstore.db; a path, "
            "sqlite:///relative/path.db or sqlite:////absolute/path.db for another SQLite "
            "file; postgresql://USER[:PASSWORD]@HOST[:PORT]/DB for PostgreSQL",
            STORAGE,
            check_database_url,
        ),
    )
    storage: str = field(
        default="",
        metadata=_setting(
            "where stored files go: empty for DATA_DIR/uploads; a path for another local "
            "folder; s3://BUCKET/PREFIX for an S3-compatible bucket (credentials from the "
            "standard AWS settings: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, ...)",
            STORAGE,
            check_storage,
        ),
    )
    s3_endpoint_url: str = field(
        default="",
        metadata=_setting(
            "S3 endpoint for MinIO, Ceph, R2, SeaweedFS and the like (http://host:port); "
            "empty for AWS itself",
            STORAGE,
        ),
    )
    s3_region: str = field(
        default="",
        metadata=_setting(
            "S3 region; empty to take it from AWS_REGION / AWS_DEFAULT_REGION / the profile",
            STORAGE,
        ),
    )
    # A little over S3's 5 MiB minimum halves a large upload's requests; memory stays at two
    # parts per upload in flight.
    s3_part_size: int = field(
        default=8 * MiB,
        metadata=_size(
            "multipart upload part size for S3 storage (at least 5MiB); an upload holds at "
            "most two parts in memory; uploads smaller than one part are a single PUT",
            STORAGE,
            _checked(
                parse_size,
                lambda s: S3_MIN_PART_SIZE <= s <= S3_MAX_PART_SIZE,
                "the S3 part size is between 5MiB and 5GiB",
            ),
        ),
    )
    durability: str = field(
        default="full",
        metadata=_choice(
            "full: fsync before every 201, which then survives a power cut; fast: no fsync, "
            "a 201 survives a killed process but not a power cut",
            STORAGE,
            "full",
            "fast",
        ),
    )
    # Small uploads' bytes wait in the database's journal until the uploads folder is synced;
    # a sync per second is cheap, and the journal stays about that big.
    journal_interval: float = field(
        default=1.0,
        metadata=_duration(
            "time between syncs of the uploads folder that let small uploads' bytes leave "
            "the database's journal (durability full, local storage)",
            STORAGE,
            _checked(
                parse_duration,
                lambda s: 0.01 <= s <= 86400,
                "the journal interval is 0.01 s to 1 day",
            ),
        ),
    )

    # Large enough for real exports, small enough that one client cannot fill a disk by
    # accident; checked while streaming, so a bigger upload costs nothing to refuse.
    max_upload_size: int = field(
        default=GiB,
        metadata=_size(
            "largest accepted CSV file; larger -> 413",
            UPLOADS,
            _checked(parse_size, lambda s: s > 0, "max upload size must be more than 0 bytes"),
        ),
    )
    # aiohttp's default 8 KiB read costs a thread hop per 8 KiB written; 1 MiB keeps hops
    # rare while memory stays at one chunk per upload in flight.
    upload_chunk_size: int = field(
        default=MiB,
        metadata=_size(
            "bytes read from the request and written to disk per step (at least 4KiB)",
            UPLOADS,
            _checked(parse_size, lambda n: n >= 4096, "the upload chunk size is at least 4KiB"),
        ),
    )
    # A client that sends nothing for this long is cut off, so a stalled upload cannot hold
    # a connection and a temp file forever.
    body_read_timeout: float = field(
        default=60.0,
        metadata=_duration(
            "how long to wait for the next piece of a request body before giving up (408)",
            UPLOADS,
        ),
    )
    # Room for the database, the logs and the uploads already in flight.
    min_free_space: int = field(
        default=64 * MiB,
        metadata=_size(
            "uploads are refused with 507 when the disk would have less free space than this",
            UPLOADS,
        ),
    )
    # Off exists only so the benchmark can measure the cost; digest checks and dedupe need it.
    analyse_uploads: bool = field(
        default=True,
        metadata=_setting(
            "compute sha256 and the CSV profile while streaming",
            UPLOADS,
            parse_bool,
            metavar="BOOL",
        ),
    )
    # /rows costs what it parses, not what a file's rows or cells hold.
    rows_max_bytes: int = field(
        default=8 * MiB,
        metadata=_size(
            "bytes one /rows request parses at most, from its first row (64KiB-16MiB); "
            "longer rows make shorter pages",
            UPLOADS,
            _checked(
                parse_size,
                lambda s: 64 * KiB <= s <= 16 * MiB,  # 16 MiB: profile.READ_FIELD_LIMIT
                "the /rows byte bound is between 64KiB and 16MiB",
            ),
        ),
    )
    rows_cell_limit: int = field(
        default=65_536,
        metadata=_setting(
            "characters of a cell /rows returns: a longer cell comes back cut, listed in truncated",
            UPLOADS,
            _checked(parse_int, lambda n: n >= 1, "the /rows cell limit is at least 1 character"),
        ),
    )

    max_concurrent_uploads: int = field(
        default=0,
        metadata=_setting(
            "uploads (multipart, tus creation and PATCH) one API key, or one client address "
            "without keys, may have in progress at once; more -> 429; 0 = no limit",
            UPLOADS,
            _checked(parse_int, lambda n: n >= 0, "expected 0 (no limit) or more"),
        ),
    )
    rate_limit: RateLimit | None = field(
        default=None,
        metadata=_setting(
            "requests to /api one API key, or one client address without keys, may send: "
            "N/s, N/m or N/h (a token bucket holding N); more -> 429 with Retry-After; "
            "0 = no limit; counted per process",
            UPLOADS,
            parse_rate_limit,
            show=format_rate_limit,
            metavar="RATE",
        ),
    )

    # A client whose connection dropped has the night to come back, and the partial bytes of
    # one that never does are not kept for long.
    tus_expiry: float = field(
        default=24 * 3600.0,
        metadata=_duration(
            "how long a resumable (tus) upload may sit idle before it expires and its partial "
            "bytes are removed; every received byte restarts it",
            TUS,
            _checked(parse_duration, lambda s: s > 0, "the tus expiry must be more than 0"),
        ),
    )
    # After an instance dies mid-PATCH its upload answers 423 that long at most; the holder
    # renews its lease every third of it (one small PUT).
    tus_lease: float = field(
        default=30.0,
        metadata=_duration(
            "S3 storage: how long a request's hold on a resumable (tus) upload outlives the "
            "request's process if it dies; the upload answers 423 meanwhile",
            TUS,
            _checked(parse_duration, lambda s: s >= 1, "the tus lease is at least 1 second"),
        ),
    )

    session_ttl: float = field(
        default=0.0,
        metadata=_duration(
            "default lifetime of a new session; 0 = forever; a client may ask for its own "
            "with ttl_seconds",
            RETENTION,
        ),
    )
    # Expired data goes soon after its time, and an idle server does little work.
    sweep_interval: float = field(
        default=60.0,
        metadata=_duration(
            "time between sweeps that delete expired sessions and their files",
            RETENTION,
            _checked(parse_duration, lambda s: s > 0, "the sweep interval must be more than 0"),
        ),
    )

    query_timeout: float = field(
        default=10.0,
        metadata=_duration("time one SQL query may run before it is stopped (422)", QUERIES),
    )
    query_memory: int = field(
        default=256 * MiB, metadata=_size("memory one SQL query may use (more -> 422)", QUERIES)
    )
    query_max_rows: int = field(
        default=1_000_000,
        metadata=_setting("rows a text/csv query result streams at most", QUERIES, _positive),
    )
    query_concurrency: int = field(
        default=4,
        metadata=_setting("SQL queries run at once per process; more -> 429", QUERIES, _positive),
    )
    # DuckDB reads local files: S3 objects, and files it cannot decode, are copied first.
    query_cache_size: int = field(
        default=GiB,
        metadata=_size("query copies of files (S3, or made UTF-8) kept at most (LRU)", QUERIES),
    )

    api_keys: str = field(
        default="",
        metadata=_setting(
            "comma-separated API keys; 'ro:KEY' makes a read-only key (GET, HEAD, SQL "
            "queries); when any key is configured every /api route needs 'Authorization: "
            "Bearer KEY'",
            SECURITY,
        ),
    )
    api_keys_file: Path | None = field(
        default=None,
        metadata=_setting(
            "file with one API key per line: KEY, sha256:HEX (stored hashed), "
            "prefix 'ro:' for read-only; '#' starts a comment",
            SECURITY,
            Path,
        ),
    )
    insecure: bool = field(
        default=False,
        metadata=_setting(
            "allow listening on a non-loopback address without API keys",
            SECURITY,
            parse_bool,
            metavar="BOOL",
        ),
    )
    cors_origins: str = field(
        default="",
        metadata=_setting(
            "comma-separated origins allowed to call the API from a browser (CORS); "
            "empty = CORS off",
            SECURITY,
            check_origins,
        ),
    )
    trusted_proxies: str = field(
        default="",
        metadata=_setting(
            "comma-separated addresses or networks (127.0.0.1, 10.0.0.0/8) of reverse proxies "
            "whose X-Forwarded-For and X-Forwarded-Proto give the client's address and scheme; "
            "empty = the headers are ignored",
            SECURITY,
            check_networks,
        ),
    )

    log_level: str = field(
        default="info",
        metadata=_choice(
            "logging level", OBSERVABILITY, "debug", "info", "warning", "error", "critical"
        ),
    )
    log_format: str = field(
        default="text",
        metadata=_choice(
            "text (readable) or json (one object per line, for log shippers)",
            OBSERVABILITY,
            "text",
            "json",
        ),
    )
    # A load balancer's probe waits a few seconds at most; a dependency that takes longer
    # than 2 s to answer a trivial query is not fit for traffic anyway.
    ready_timeout: float = field(
        default=2.0,
        metadata=_duration(
            "how long each of /readyz's checks (database, storage) may take before it counts "
            "as failing",
            OBSERVABILITY,
            _checked(parse_duration, lambda s: s > 0, "ready timeout must be more than 0 seconds"),
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
        """Build settings from ``CSVSTORE_*`` strings; a bad value's error names its variable."""
        kwargs: dict[str, Any] = {}
        for f in fields(cls):
            raw = values.get(env_name(f))
            if raw is not None and raw != "":
                try:
                    kwargs[f.name] = spec(f).parse(raw)
                except ValueError as exc:
                    raise ValueError(f"{env_name(f)}: {exc}") from None
        return cls(**kwargs)


# CSVSTORE_* variables that are not settings: the client's, the test hooks and test sizes.
_OTHER_VARIABLES = frozenset({
    "URL", "API_KEY", "CRASH_AT", "PAUSE_AT", "FAULTS", "FAULTS_SEED", "KILL_ROUNDS",
    "FUZZ_EXAMPLES", "TUS_STRESS_SIZE", "TUS_KILL_ROUNDS", "ROWS_LINE_SIZE", "SCREENSHOT",
    "QUERY_SCREENSHOT", "REQUIRE_BROWSER", "REQUIRE_NGINX", "CHROMIUM",
})  # fmt: skip


def unknown_variables(values: Mapping[str, str]) -> list[str]:
    """A warning for each ``CSVSTORE_*`` name that sets nothing (a misspelled setting)."""
    known = {env_name(f) for f in fields(Settings)}
    found: list[str] = []
    for name in sorted(values):
        rest = name.removeprefix(ENV_PREFIX)
        if rest == name or name in known or rest in _OTHER_VARIABLES or rest.startswith("TEST_"):
            continue
        close = difflib.get_close_matches(name.upper(), known, n=1, cutoff=0.75)
        hint = f" (did you mean {close[0]}?)" if close else ""
        found.append(f"{name} is not a setting and is ignored{hint}")
    return found


def spec(f: Field[Any]) -> Spec:
    found: Spec = f.metadata["spec"]
    return found


def env_name(f: Field[Any]) -> str:
    return ENV_PREFIX + f.name.upper()


def flag_name(f: Field[Any]) -> str:
    return "--" + f.name.replace("_", "-")


def shown_default(f: Field[Any]) -> str:
    """The default as people write it (``1GiB``, ``24h``); empty when there is none."""
    return spec(f).show(f.default)


def convert(name: str, raw: str) -> Any:
    """Turn the text of one setting into its typed value; ``ValueError`` says what is wrong."""
    [found] = [f for f in fields(Settings) if f.name == name]
    return spec(found).parse(raw)


def settings_reference() -> str:
    """The Markdown tables of docs/settings.md, one per group (scripts/settings-doc)."""
    out: list[str] = []
    for group in GROUPS:
        out += [f"## {group.capitalize()}", ""]
        out += ["| flag | variable | default | meaning |", "| --- | --- | --- | --- |"]
        for f in fields(Settings):
            if spec(f).group == group:
                meaning = spec(f).help
                if spec(f).choices:
                    meaning += "; one of " + ", ".join(f"`{c}`" for c in spec(f).choices)
                default = f"`{shown_default(f)}`" if shown_default(f) else "(none)"
                out.append(f"| `{flag_name(f)}` | `{env_name(f)}` | {default} | {meaning} |")
        out.append("")
    return "\n".join(out)


def settings_summary() -> str:
    """The README's table: every flag, its default, and its help up to the first clause."""
    out = ["| flag | default | what |", "| --- | --- | --- |"]
    for group in GROUPS:
        for f in fields(Settings):
            if spec(f).group == group:
                what = spec(f).help.split("; ", 1)[0]
                default = f"`{shown_default(f)}`" if shown_default(f) else "-"
                out.append(f"| `{flag_name(f)}` | {default} | {what} |")
    return "\n".join(out) + "\n"
