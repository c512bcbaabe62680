"""``python -m csvstore``: flags, then ``CSVSTORE_*`` variables, then defaults -> run the app."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import fields, replace

from csvstore import __version__
from csvstore.config import Settings, convert
from csvstore.security import check_bind_is_safe, load_keys
from csvstore.server import serve


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
    return parser


def settings_from(argv: Sequence[str], environ: Mapping[str, str]) -> Settings:
    parser = build_parser()
    args = parser.parse_args(argv)
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


def main(argv: Sequence[str] | None = None) -> None:
    settings = settings_from(sys.argv[1:] if argv is None else argv, os.environ)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    keys = load_keys(settings)
    read_only = sum(key.read_only for key in keys)
    access = (
        f"{len(keys)} API key(s), {read_only} read-only"
        if keys
        else "no API keys: open to anyone who can reach " + settings.host
    )
    logging.getLogger("csvstore").info(
        "csvstore %s listening on http://%s:%d with %d worker(s); data in %s; "
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
    serve(settings)


if __name__ == "__main__":
    main()
