"""``python -m csvstore``: flags, then ``CSVSTORE_*`` variables, then defaults -> run the app."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import fields, replace

from csvstore import __version__
from csvstore.app import open_store
from csvstore.check import TEMP_MIN_AGE, CheckReport, reconcile
from csvstore.config import Settings, convert
from csvstore.identity import StoreMismatch, check_placement
from csvstore.observability import ClientProtocolErrors, PoolReconnects
from csvstore.profiling import native_counter
from csvstore.security import check_bind_is_safe, load_keys
from csvstore.server import serve

# The exit status when the database and the storage are not one store's (csvstore/identity.py).
REFUSED = 2
# The client's sub-commands (csvstore/cli); anything else starts the server as always.
CLIENT_COMMANDS = frozenset({"sessions", "upload", "files"})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m csvstore",
        description=(
            "csvstore: an HTTP service that stores CSV files grouped by client-chosen "
            "sessions. Every setting is a flag or a CSVSTORE_* environment variable; "
            "a flag wins over the variable, the variable over the default."
        ),
    )
    parser.add_argument("--version", action="version", version=f"csvstore {__version__}")
    parser.epilog = (
        "Sub-command: 'python -m csvstore check [--repair] [--no-verify]' reconciles the "
        "stored files with the database (see 'check --help'); 'python -m csvstore "
        "migrate-to --from-data-dir DIR ...' copies a deployment to another database and "
        "storage (see 'migrate-to --help'). "
        "Client: 'python -m csvstore sessions|upload|files ...' talks to a running server "
        "(see 'python -m csvstore upload --help')."
    )
    add_settings_arguments(parser)
    return parser


def add_settings_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = Settings()
    for f in fields(Settings):
        flag = "--" + f.name.replace("_", "-")
        is_switch = isinstance(getattr(defaults, f.name), bool)
        parser.add_argument(
            flag,
            dest=f.name,
            metavar=f.name.upper(),
            default=None,
            # a boolean is a switch (--insecure) that also takes an explicit value
            nargs="?" if is_switch else None,
            const="true" if is_switch else None,
            help=(
                f"{f.metadata['help']} "
                f"(env {f.metadata['env']}; default: {getattr(defaults, f.name)})"
            ),
        )


def build_check_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m csvstore check",
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
    args, _ = parser.parse_known_args(argv)
    parser.parse_args(argv)  # unknown arguments are an error, reported by argparse
    try:
        settings = Settings.from_mapping(environ)
        overrides = {
            f.name: convert(f.name, value)
            for f in fields(Settings)
            if (value := getattr(args, f.name)) is not None
        }
        settings = replace(settings, **overrides)
        check_bind_is_safe(settings, load_keys(settings))
    except (ValueError, OSError) as exc:
        parser.error(str(exc))
    return settings


def run_check(argv: Sequence[str]) -> int:
    parser = build_check_parser()
    args = parser.parse_args(argv)
    settings = settings_from(argv, os.environ, parser)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

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
        from csvstore.migrate import run_migrate

        sys.exit(run_migrate(argv[1:]))
    if argv and argv[0] in CLIENT_COMMANDS:
        from csvstore.cli import run_client  # only the client needs rich

        sys.exit(run_client(argv))
    settings = settings_from(argv, os.environ)
    configure_logging(settings)
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
        settings.host,
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


if __name__ == "__main__":
    main()
