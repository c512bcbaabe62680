"""The command-line client: ``python -m csvstore sessions|upload|files ...`` against a server."""

from csvstore.cli.main import COMMANDS, run_client

__all__ = ["COMMANDS", "run_client"]
