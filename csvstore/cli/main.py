"""The client's command line: parse, run one command against the server, return the exit code."""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

from csvstore.cli.fetch import get_file
from csvstore.cli.http import Api, CliFailure, ExitCode, path
from csvstore.cli.output import (
    Output,
    fields_table,
    files_table,
    result_table,
    sessions_table,
    summary_columns_table,
)
from csvstore.cli.resumable import RESUMABLE_FROM, ResumableWhenLarge
from csvstore.cli.upload import (
    MultipartUpload,
    UploadOptions,
    already_held,
    collect_sources,
    summary_table,
    upload_all,
)
from csvstore.config_values import parse_duration

COMMANDS = frozenset({"sessions", "upload", "files", "query"})

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_PARALLEL = 4  # enough to hide per-request latency without hogging a shared server
LIST_PAGE_SIZE = 1000  # the server's maximum: fewest round trips

EXIT_CODES = """\
exit status:
  0  success
  1  the server refused (4xx) at least one item: unknown session or file, not a CSV, ...
  2  usage error: bad arguments, local files missing or unreadable or unwritable
  3  cannot connect, the connection broke, or a server error (5xx)
  4  integrity failure: downloaded bytes do not match the file's recorded sha256
When several items fail differently, the largest code wins."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(ExitCode.USAGE, f"{self.prog}: error: {message}\n")


def _common_options(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("connection and output")
    group.add_argument(
        "--url",
        default=environ.get("CSVSTORE_URL") or DEFAULT_URL,
        help=f"the server (env CSVSTORE_URL; default {DEFAULT_URL})",
    )
    keys = group.add_mutually_exclusive_group()
    keys.add_argument(
        "--api-key",
        default=environ.get("CSVSTORE_API_KEY") or None,
        help="sent as 'Authorization: Bearer KEY'; a flag shows in ps, so prefer the "
        "environment variable CSVSTORE_API_KEY or --api-key-file",
    )
    keys.add_argument(
        "--api-key-file",
        type=Path,
        metavar="FILE",
        help="read the API key from the first line of FILE",
    )
    group.add_argument(
        "--json",
        action="store_true",
        help="print one JSON document on stdout, no progress bars, no colour",
    )
    group.add_argument("-q", "--quiet", action="store_true", help="no progress bars and no chatter")
    return common


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _ttl(text: str) -> int:
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if seconds < 1:
        raise argparse.ArgumentTypeError("a TTL is at least 1 second")
    return math.ceil(seconds)


def build_client_parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    common = _common_options(environ)
    parser = _Parser(
        prog="python -m csvstore",
        description="The csvstore command-line client: sessions, uploads and files on a server.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def leaf(
        group: argparse._SubParsersAction[Any], name: str, help_text: str
    ) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = group.add_parser(
            name,
            help=help_text,
            description=help_text,
            parents=[common],
            epilog=EXIT_CODES,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        return sub

    sessions = commands.add_parser("sessions", help="create, list, show and delete sessions")
    sessions_commands = sessions.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = leaf(sessions_commands, "create", "create a session")
    create.add_argument("session_id", metavar="ID")
    create.add_argument(
        "--ttl",
        type=_ttl,
        metavar="SECONDS",
        help="delete the session and its files this long after creation (90, 15m, 24h, 7d)",
    )
    listing = leaf(sessions_commands, "list", "list every session (follows every page)")
    listing.add_argument(
        "--page-size",
        type=_positive_int,
        default=LIST_PAGE_SIZE,
        metavar="N",
        help=f"sessions asked for per request (default {LIST_PAGE_SIZE}, the server's maximum)",
    )
    show = leaf(sessions_commands, "show", "show a session and its files")
    show.add_argument("session_id", metavar="ID")
    delete = leaf(sessions_commands, "delete", "delete a session and all its files")
    delete.add_argument("session_id", metavar="ID")

    upload = leaf(
        commands,
        "upload",
        "upload CSV files into a session: files as given, and every *.csv in each folder",
    )
    upload.add_argument("session_id", metavar="SESSION")
    upload.add_argument("paths", metavar="FILE_OR_DIR", nargs="+")
    upload.add_argument(
        "--parallel",
        type=_positive_int,
        default=DEFAULT_PARALLEL,
        metavar="N",
        help=f"files uploaded at the same time (default {DEFAULT_PARALLEL})",
    )
    upload.add_argument(
        "--sha256",
        action="store_true",
        help="send each file's SHA-256 so the server refuses bytes that differ",
    )
    upload.add_argument(
        "--dedupe",
        action="store_true",
        help="ask the server not to store a file whose bytes the session already has (it "
        "answers with the stored file; covers files another client sends meanwhile)",
    )
    upload.add_argument(
        "--encoding",
        metavar="CODEC",
        help="the files' encoding (e.g. cp1251, shift_jis): the server checks every byte "
        "in it instead of detecting one",
    )
    upload.add_argument(
        "--resend",
        action="store_true",
        help="send every file; by default files whose SHA-256 the session already holds "
        "are skipped (said so in the summary)",
    )
    upload.add_argument(
        "--no-resume",
        dest="resume",
        action="store_false",
        help=(
            f"send every file in one multipart POST; by default files of "
            f"{RESUMABLE_FROM // (1024 * 1024)} MiB and more go by the resumable (tus) "
            "protocol and survive dropped connections"
        ),
    )

    files = commands.add_parser("files", help="show, download and delete stored files")
    files_commands = files.add_subparsers(dest="action", required=True, metavar="ACTION")
    file_show = leaf(files_commands, "show", "show a file's metadata")
    file_show.add_argument("file_id", metavar="FILE_ID")
    get = leaf(
        files_commands,
        "get",
        "download a file (resumes a partial PATH, verifies the sha256)",
    )
    get.add_argument("file_id", metavar="FILE_ID")
    get.add_argument(
        "-o",
        "--output",
        metavar="PATH",
        help="where to write it: a file, a folder, or - for stdout "
        "(default: the original name in the current folder)",
    )
    get.add_argument(
        "--force",
        action="store_true",
        help="replace a different file that has the original name (by default that is "
        "refused; a PATH given with -o is resumed into, as ever)",
    )
    rm = leaf(files_commands, "rm", "delete a stored file")
    rm.add_argument("file_id", metavar="FILE_ID")
    summary = leaf(files_commands, "summary", "per-column summary of a file (types, counts, ...)")
    summary.add_argument("file_id", metavar="FILE_ID")

    query = leaf(commands, "query", "run one read-only SQL statement over a session's files")
    query.add_argument("session_id", metavar="SESSION")
    query.add_argument("sql", metavar="SQL", help="each file is a table: see 'sessions show'")
    query.add_argument(
        "--csv", action="store_true", help="the whole result as CSV on stdout (no row limit)"
    )
    query.add_argument(
        "--limit", type=_positive_int, default=1000, metavar="N", help="rows shown (default 1000)"
    )
    return parser


Command = Callable[[Api, argparse.Namespace, Output], Awaitable[ExitCode]]


async def _sessions_create(api: Api, args: argparse.Namespace, out: Output) -> ExitCode:
    body: dict[str, Any] = {"session_id": args.session_id}
    if args.ttl is not None:
        body["ttl_seconds"] = args.ttl
    created = await api.call("POST", path("sessions"), json_body=body)
    if out.json_mode:
        out.document(created)
    out.say(f"session {args.session_id} created")
    return ExitCode.OK


async def _sessions_list(api: Api, args: argparse.Namespace, out: Output) -> ExitCode:
    sessions: list[Any] = []
    async for page in api.pages(path("sessions"), limit=args.page_size):
        sessions.extend(page)
    if out.json_mode:
        out.document(sessions)
    elif sessions:
        out.show(sessions_table(sessions))
    else:
        out.say("no sessions")
    return ExitCode.OK


async def _sessions_show(api: Api, args: argparse.Namespace, out: Output) -> ExitCode:
    session = await api.call("GET", path("sessions", args.session_id))
    if out.json_mode:
        out.document(session)
        return ExitCode.OK
    out.show(fields_table(session, skip=["csv_files"]))
    files = session.get("csv_files") or []
    if files:
        out.console.print()
        out.show(files_table(files))
    else:
        out.say("no files")
    return ExitCode.OK


async def _sessions_delete(api: Api, args: argparse.Namespace, out: Output) -> ExitCode:
    answer = await api.call("DELETE", path("sessions", args.session_id))
    if out.json_mode:
        out.document(answer)
    out.say(f"session {args.session_id} deleted, with its files")
    return ExitCode.OK


async def _upload(api: Api, args: argparse.Namespace, out: Output) -> ExitCode:
    sources = collect_sources(args.paths)
    # One request first: an unknown session, a wrong key or a server that is down is one
    # clear message instead of one per file.
    session = await api.call("GET", path("sessions", args.session_id))
    # Files the session holds already (same SHA-256) are not sent again: running the same
    # upload twice, or again after a partial failure, sends only what is missing.
    held = {} if args.resend else await already_held(sources, session["csv_files"], args.parallel)
    outcomes = await upload_all(
        api,
        args.session_id,
        sources,
        options=UploadOptions(sha256=args.sha256, dedupe=args.dedupe, encoding=args.encoding),
        parallel=args.parallel,
        out=out,
        strategy=ResumableWhenLarge() if args.resume else MultipartUpload(),
        held=held,
    )
    for outcome in outcomes:  # after the bars are gone, so they don't garble the messages
        if outcome.failure is not None:
            out.error(f"{outcome.source.path}: {outcome.failure.detail}")
    if out.json_mode:
        out.document(
            {
                "session_id": args.session_id,
                "uploaded": sum(o.failure is None and not o.skipped for o in outcomes),
                "skipped": sum(o.skipped for o in outcomes),
                "failed": sum(o.failure is not None for o in outcomes),
                "files": [o.as_json() for o in outcomes],
            }
        )
    elif not out.quiet:
        out.show(summary_table(outcomes))
    codes = [o.failure.exit_code for o in outcomes if o.failure is not None]
    return max(codes, default=ExitCode.OK)


async def _files_show(api: Api, args: argparse.Namespace, out: Output) -> ExitCode:
    file = await api.call("GET", path("files", args.file_id))
    if out.json_mode:
        out.document(file)
    else:
        out.show(fields_table(file))
    return ExitCode.OK


async def _files_get(api: Api, args: argparse.Namespace, out: Output) -> ExitCode:
    if args.output == "-" and args.json:
        raise CliFailure(ExitCode.USAGE, "--json and -o - both want stdout; choose one")
    document = await get_file(api, args.file_id, args.output, out, force=args.force)
    if out.json_mode:
        out.document(document)
    return ExitCode.OK


async def _files_rm(api: Api, args: argparse.Namespace, out: Output) -> ExitCode:
    answer = await api.call("DELETE", path("files", args.file_id))
    if out.json_mode:
        out.document(answer)
    out.say(f"file {args.file_id} deleted")
    return ExitCode.OK


async def _files_summary(api: Api, args: argparse.Namespace, out: Output) -> ExitCode:
    summary = await api.call("GET", path("files", args.file_id, "summary"))
    if out.json_mode:
        out.document(summary)
    else:
        out.show(summary_columns_table(summary["columns"]))
    return ExitCode.OK


async def _query(api: Api, args: argparse.Namespace, out: Output) -> ExitCode:
    url = api.url(path("sessions", args.session_id, "query"))
    if args.csv:
        if args.json:
            raise CliFailure(ExitCode.USAGE, "--json and --csv both want stdout; choose one")
        headers = {"Accept": "text/csv"}
        async with api.request("POST", url, json={"sql": args.sql}, headers=headers) as response:
            async for chunk in response.content.iter_any():
                sys.stdout.buffer.write(chunk)
        sys.stdout.buffer.flush()
        return ExitCode.OK
    body = {"sql": args.sql, "limit": args.limit}
    result = await api.call("POST", path("sessions", args.session_id, "query"), json_body=body)
    if out.json_mode:
        out.document(result)
        return ExitCode.OK
    out.show(result_table(result))
    more = " (more rows: raise --limit or use --csv)" if result["truncated"] else ""
    out.say(f"{result['row_count']} row(s) in {result['elapsed_ms']:.0f} ms{more}")
    return ExitCode.OK


COMMAND_TABLE: dict[tuple[str, str | None], Command] = {
    ("sessions", "create"): _sessions_create,
    ("sessions", "list"): _sessions_list,
    ("sessions", "show"): _sessions_show,
    ("sessions", "delete"): _sessions_delete,
    ("upload", None): _upload,
    ("files", "show"): _files_show,
    ("files", "get"): _files_get,
    ("files", "rm"): _files_rm,
    ("files", "summary"): _files_summary,
    ("query", None): _query,
}


def _api_key(args: argparse.Namespace) -> str | None:
    if args.api_key_file is None:
        return str(args.api_key) if args.api_key else None
    try:
        lines = args.api_key_file.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not text"
        raise CliFailure(
            ExitCode.USAGE, f"cannot read the API key file {args.api_key_file}: {reason}"
        ) from None
    key = lines[0].strip() if lines else ""
    if not key:
        raise CliFailure(ExitCode.USAGE, f"the API key file {args.api_key_file} is empty")
    return key


async def _run(command: Command, args: argparse.Namespace, out: Output) -> ExitCode:
    connections = args.parallel if args.command == "upload" else 2
    async with Api(args.url, _api_key(args), connections=connections) as api:
        return await command(api, args, out)


def run_client(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> int:
    """``python -m csvstore sessions|upload|files ...``; the exit code."""
    parser = build_client_parser(os.environ if environ is None else environ)
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # --help (0) or a usage error (2): a code, like every outcome
        return stop.code if isinstance(stop.code, int) else int(ExitCode.USAGE)
    command = COMMAND_TABLE[(args.command, getattr(args, "action", None))]
    out = Output(json_mode=args.json, quiet=args.quiet)
    try:
        return int(asyncio.run(_run(command, args, out)))
    except (KeyError, TypeError, ValueError) as exc:
        # An answer without csvstore's fields (another server): one line, not a traceback.
        failure = CliFailure(
            ExitCode.UNAVAILABLE,
            f"unexpected answer from {args.url}: is it a csvstore server? ({exc!r})",
        )
        out.error(failure.detail)
        if out.json_mode:
            out.document({"error": failure.as_json()})
        return int(failure.exit_code)
    except CliFailure as failure:
        out.error(failure.detail)
        if out.json_mode:
            out.document({"error": failure.as_json()})
        return int(failure.exit_code)
    except KeyboardInterrupt:
        print("csvstore: interrupted", file=sys.stderr)
        return 130
