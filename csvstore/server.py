"""Running the app: one process, or a supervisor with several worker processes.

Workers each bind the port with ``SO_REUSEPORT`` so the kernel spreads connections over
them, and all write the one SQLite database (WAL; SQLite's own locking serialises their
transactions). The supervisor runs migrations and the start-up check once, before any
worker accepts an upload, forwards SIGINT/SIGTERM to the workers and waits for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable

from aiohttp import web

from csvstore.app import create_app, open_store
from csvstore.config import Settings

log = logging.getLogger("csvstore")


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is optional off Linux
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def run_worker(settings: Settings, *, startup_check: bool, reuse_port: bool) -> None:
    web.run_app(
        create_app(settings, startup_check=startup_check),
        host=settings.host,
        port=settings.port,
        print=None,
        access_log=None,
        reuse_port=reuse_port,
        # SIGTERM: stop accepting, give in-flight requests this long, then cancel them
        # (their partial uploads are removed as they unwind).
        shutdown_timeout=settings.shutdown_grace,
        loop=_loop_factory()(),
    )


async def _prepare(settings: Settings) -> None:
    async with open_store(settings) as store:
        await store.startup_check()


def serve(settings: Settings) -> None:
    if settings.workers <= 1:
        run_worker(settings, startup_check=True, reuse_port=False)
        return
    asyncio.run(_prepare(settings))
    children: list[int] = []
    for _ in range(settings.workers):
        pid = os.fork()
        if pid == 0:  # the worker
            code = 0
            try:
                run_worker(settings, startup_check=False, reuse_port=True)
            except BaseException:
                log.exception("worker failed")
                code = 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        children.append(pid)
    log.info("started %d workers: %s", len(children), ", ".join(map(str, children)))
    _supervise(children)


def _supervise(children: list[int]) -> None:
    def forward(signum: int, _frame: object) -> None:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    failed = False
    remaining = set(children)
    while remaining:
        pid, status = os.wait()
        remaining.discard(pid)
        if os.waitstatus_to_exitcode(status) != 0 and remaining:
            # One worker dying leaves a service that fails some requests: stop them all
            # and let the process manager restart the whole.
            log.error("worker %d exited with status %d; stopping the others", pid, status)
            failed = True
            forward(signal.SIGTERM, None)
    sys.exit(1 if failed else 0)
