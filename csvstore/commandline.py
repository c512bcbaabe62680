"""The ``csvstore`` command: serve (flags, then ``CSVSTORE_*`` variables, then defaults),
``check``, ``migrate-to``, and the client's sub-commands."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from csvstore import __version__, config
from csvstore.analysis.counter import native_counter
from csvstore.config import GROUPS, Settings, unknown_variables
from csvstore.config_values import check_database_url, check_storage
from csvstore.identity import StoreMismatch, check_placement
from csvstore.maintenance.migrate import MigrationError, migrate, shared_storage
from csvstore.maintenance.reconcile import TEMP_MIN_AGE, CheckReport, reconcile
from csvstore.timeutil import format_utc
from csvstore.web.observability import ClientProtocolErrors, PoolReconnects
from csvstore.web.security import check_bind_is_safe, load_keys
from csvstore.web.server import serve
from csvstore.wiring import open_store

# The exit status when the database and the storage are not one store's (csvstore/identity.py).
REFUSED = 2
# The client's sub-commands (csvstore/cli); anything else starts the server as always.
CLIENT_COMMANDS = frozenset({"sessions", "upload", "files", "query"})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m csvstore",
        usage="%(prog)s [-h] [--version] [--SETTING VALUE ...]",
        description=(
            "csvstore: an HTTP service that stores CSV files grouped by client-chosen "
            "sessions. Every setting is a flag or a CSVSTORE_* environment variable "
            "(docs/settings.md); a flag wins over the variable, the variable over the default. "
            "Sizes are bytes or 64KiB, 8MiB, 1GiB (binary units); durations are seconds or "
            "30s, 15m, 24h, 7d; switches take true/false."
        ),
    )
    parser.add_argument("--version", action="version", version=f"csvstore {__version__}")
    parser.epilog = (
        "Sub-command: 'python -m csvstore check [--repair] [--no-verify]' reconciles the "
        "stored files with the database (see 'check --help'); 'python -m csvstore "
        "migrate-to --from-data-dir DIR ...' copies a deployment to another database and "
        "storage (see 'migrate-to --help'). "
        "Client: 'python -m csvstore sessions|upload|files|query ...' talks to a running server "
        "(see 'python -m csvstore upload --help')."
    )
    add_settings_arguments(parser)
    return parser


def _flag_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:  # argparse shows an ArgumentTypeError's text after the flag
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


def add_settings_arguments(parser: argparse.ArgumentParser) -> None:
    groups = {name: parser.add_argument_group(name) for name in GROUPS}
    for f in fields(Settings):
        spec = config.spec(f)
        is_switch = isinstance(f.default, bool)
        default = config.shown_default(f) or "none"
        groups[spec.group].add_argument(
            config.flag_name(f),
            dest=f.name,
            metavar=("{" + ",".join(spec.choices) + "}" if spec.choices else "")
            or spec.metavar
            or f.name.upper(),
            type=_flag_type(spec.parse),
            default=None,
            # a boolean is a switch (--insecure) that also takes an explicit value
            nargs="?" if is_switch else None,
            const=True if is_switch else None,
            help=f"{spec.help} [{config.env_name(f)}; default: {default}]",
        )


def build_check_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m csvstore check",
        usage="%(prog)s [-h] [--repair] [--no-verify] [--SETTING VALUE ...]",
        description=(
            "Reconcile the stored files with the database: remove temp files and stored "
            "files without a row (temp files older than an hour and stored files older than "
            "a minute, so a running server's uploads in flight are spared), report rows "
            "whose bytes are missing or whose size or SHA-256 no longer matches, run the "
            "database's integrity check. Only names csvstore gives stored files (<uuid>.csv) "
            "are ever removed, and none while the database lists no files. Refused (exit "
            "status 2, nothing changed) when the database and the storage are not one "
            "store's (their store ids differ, or the storage folder holds the database). "
            "Exit status 0 when nothing is left wrong, 1 otherwise."
        ),
    )
    parser.add_argument(
        "--repair",
        action="store_true",
        help="also remove the rows whose bytes are missing or wrong; when the database "
        "lists no files, remove the stored files; record a database and storage without "
        "store ids as one store even when they do not look like one (look first)",
    )
    parser.add_argument(
        "--no-verify",
        dest="verify",
        action="store_false",
        help="skip reading every file to compare its size and SHA-256 (only check presence)",
    )
    add_settings_arguments(parser)
    return parser


def settings_from(
    argv: Sequence[str], environ: Mapping[str, str], parser: argparse.ArgumentParser | None = None
) -> Settings:
    parser = parser or build_parser()
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_mapping(environ)
        given = {
            f.name: value for f in fields(Settings) if (value := getattr(args, f.name)) is not None
        }
        settings = replace(settings, **given)
        check_bind_is_safe(settings, load_keys(settings))
        _check_data_dir(settings)
    except (ValueError, OSError) as exc:
        parser.error(str(exc))
    return settings


def _check_data_dir(settings: Settings) -> None:
    """One line, not a traceback, for a data dir the server could not use."""
    path = settings.data_dir
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    where = "" if existing == path else f" ({existing})"
    if not existing.is_dir():
        raise ValueError(f"--data-dir {path}: not a directory{where}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"--data-dir {path}: not writable by uid {os.getuid()}{where}")
    database = settings.database_path
    if not settings.uses_postgres and database.exists() and not os.access(database, os.W_OK):
        raise ValueError(f"--data-dir {path}: {database.name} is not writable by uid {os.getuid()}")


def run_check(argv: Sequence[str]) -> int:
    parser = build_check_parser()
    args = parser.parse_args(argv)
    settings = settings_from(argv, os.environ, parser)
    configure_logging(settings)
    logging.getLogger().setLevel(max(logging.getLogger().level, logging.WARNING))

    async def go() -> CheckReport:
        async with open_store(settings, repair=args.repair) as store:
            return await reconcile(
                store,
                repair=args.repair,
                verify=args.verify,
                temp_min_age=TEMP_MIN_AGE,
            )

    try:
        check_placement(settings)
        if not settings.uses_postgres and not settings.database_path.exists():
            # Rather than create an empty one: a check of that could only find strangers.
            raise StoreMismatch(
                f"no database at {settings.database_path.resolve()} (--data-dir or --database-url?)"
            )
        report = asyncio.run(go())
    except StoreMismatch as exc:
        print(f"check refused: {exc}", file=sys.stderr)
        return REFUSED
    print(report.summary())
    for file_id in report.missing_files:
        print(f"missing bytes: file {file_id}")
    for file_id in report.mismatched_files:
        print(f"size or sha256 differs: file {file_id}")
    return 1 if report.problems else 0


def _rfc3339_utc(record: logging.LogRecord, datefmt: str | None = None) -> str:
    return format_utc(datetime.fromtimestamp(record.created, UTC))


def configure_logging(settings: Settings) -> None:
    handler = logging.StreamHandler()
    if settings.log_format == "json":
        from pythonjsonlogger.json import JsonFormatter

        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            )
        )
        handler.formatter.formatTime = _rfc3339_utc  # type: ignore[union-attr,method-assign]
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=settings.log_level.upper(), handlers=[handler], force=True)
    logging.getLogger("aiohttp.server").addFilter(ClientProtocolErrors())
    logging.getLogger("asyncpg.pool").addFilter(PoolReconnects())


def main(argv: Sequence[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "check":
        sys.exit(run_check(argv[1:]))
    if argv and argv[0] == "migrate-to":
        sys.exit(run_migrate(argv[1:]))
    if argv and argv[0] in CLIENT_COMMANDS:
        from csvstore.cli import run_client  # only the client needs rich

        sys.exit(run_client(argv))
    settings = settings_from(argv, os.environ)
    configure_logging(settings)
    for warning in unknown_variables(os.environ):
        logging.getLogger("csvstore").warning("%s", warning)
    keys = load_keys(settings)
    read_only = sum(key.read_only for key in keys)
    access = (
        f"{len(keys)} API key(s), {read_only} read-only"
        if keys
        else "no API keys: open to anyone who can reach " + settings.host
    )
    logging.getLogger("csvstore").info(
        "csvstore %s starting on http://%s:%d with %d worker(s); data in %s; "
        "max upload %d bytes; durability %s; %s",
        __version__,
        f"[{settings.host}]" if ":" in settings.host else settings.host,
        settings.port,
        settings.workers,
        settings.data_dir.resolve(),
        settings.max_upload_size,
        settings.durability,
        access,
    )
    if settings.analyse_uploads and not native_counter():
        logging.getLogger("csvstore").warning(
            "csvstore._scan is not built (no C compiler at install time): CSV profiles are "
            "counted by the pure-Python counter, same results, about 3x the CPU per byte"
        )
    try:
        serve(settings)
    except StoreMismatch as exc:
        logging.getLogger("csvstore").error("refusing to start: %s", exc)
        sys.exit(REFUSED)


def build_migrate_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m csvstore migrate-to",
        usage="%(prog)s [-h] --from-data-dir DIR [--from-... VALUE] [--SETTING VALUE ...]",
        description=(
            "Copy every session, file row and stored file of a deployment (the source: "
            "--from-data-dir, by default SQLite and the uploads folder there) into the "
            "database and storage named by the usual settings (the target, e.g. "
            "--database-url postgresql://... --storage s3://bucket/prefix). The source is "
            "only read; the target's schema is created. Bytes are checked against each "
            "row's size and SHA-256 on the way. Running it again copies only what is "
            "missing, and copies again the bytes of files the target lists without them. "
            "The target's storage must not be the source's. Stop the source server first. "
            "Exit status 0 when everything was copied, 1 when something could not be."
        ),
    )
    parser.add_argument(
        "--from-data-dir", required=True, type=Path, help="the source deployment's data folder"
    )
    parser.add_argument(
        "--from-database-url",
        default="",
        type=_flag_type(check_database_url),
        help="the source database if not FROM_DATA_DIR/csvstore.db: a path, sqlite:///PATH "
        "or postgresql://...",
    )
    parser.add_argument(
        "--from-storage",
        default="",
        type=_flag_type(check_storage),
        help="the source storage if not FROM_DATA_DIR/uploads: a folder or s3://BUCKET/PREFIX",
    )
    parser.add_argument(
        "--drop-uploads-in-progress",
        action="store_true",
        help="copy even though the source has resumable (tus) uploads in progress; their "
        "acknowledged bytes are not copied (without it, migrate-to refuses and lists them)",
    )
    add_settings_arguments(parser)
    return parser


def run_migrate(argv: Sequence[str]) -> int:
    parser = build_migrate_parser()
    args = parser.parse_args(argv)
    target = settings_from(argv, os.environ, parser)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    source = replace(
        target,
        data_dir=args.from_data_dir,
        database_url=args.from_database_url,
        storage=args.from_storage,
    )
    if source.database_path == target.database_path and not target.uses_postgres:
        parser.error("the source and target databases are the same")
    if source.uses_postgres and source.database_url == target.database_url:
        parser.error("the source and target databases are the same")
    if not source.uses_postgres and not source.database_path.exists():
        parser.error(f"no source database at {source.database_path}")
    if (shared := shared_storage(source, target)) is not None:
        parser.error(
            f"the source and target storage are the same ({shared}): migrate-to copies the "
            "stored files, so the target needs a storage of its own"
        )
    try:
        report = asyncio.run(
            migrate(source, target, drop_uploads_in_progress=args.drop_uploads_in_progress)
        )
    except (MigrationError, StoreMismatch) as exc:
        print(f"migrate-to: {exc}")
        return 1
    print(report.summary())
    for file_id in report.bad_files:
        print(f"not copied: file {file_id} (see 'python -m csvstore check' on the source)")
    for file_id, why in report.failed:
        print(f"not copied: file {file_id} ({why}); run migrate-to again")
    for upload_id in report.dropped_uploads:
        print(f"not copied: resumable upload {upload_id} in progress")
    return 1 if report.bad_files or report.failed else 0
