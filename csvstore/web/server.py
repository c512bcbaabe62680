"""Running the app: one process, or a supervisor forking workers that share the port
(``SO_REUSEPORT``) and the database. See docs/scaling.md."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import logging.handlers
import mmap
import os
import queue
import resource
import select
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMethod
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from csvstore import metrics
from csvstore.config import Settings
from csvstore.maintenance.reconcile import startup_check
from csvstore.web.app import create_app
from csvstore.web.keys import INFLIGHT_KEY
from csvstore.web.observability import REQUEST_ID_HEADER, REQUEST_IDS_KEY, RequestIds
from csvstore.web.problems import INVALID_HTTP, problem_response
from csvstore.web.security import PROTECTED_PREFIX, security_headers
from csvstore.wiring import open_store

log = logging.getLogger("csvstore")


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is optional off Linux
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def run_worker(
    settings: Settings,
    *,
    startup_check: bool,
    reuse_port: bool,
    restarts: Callable[[], int] | None = None,
) -> None:
    loop = _loop_factory()()
    asyncio.set_event_loop(loop)
    loop.set_default_executor(
        ThreadPoolExecutor(settings.io_threads, thread_name_prefix="csvstore-io")
    )
    try:
        with _logs_written_off_the_loop():
            loop.run_until_complete(
                _serve(
                    create_app(settings, startup_check=startup_check, worker_restarts=restarts),
                    settings,
                    reuse_port,
                )
            )
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()


class _HandOff(logging.handlers.QueueHandler):
    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        # Formatted on the listener's thread; its arguments are immutable, so none is lost.
        return record


@contextlib.contextmanager
def _logs_written_off_the_loop() -> Iterator[None]:
    """Log records are formatted and written by a thread of their own while serving (per
    worker: threads do not survive fork); stopping drains the queue, so no line is lost."""
    root = logging.getLogger()
    handlers = root.handlers[:]
    if not handlers:
        yield
        return
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    listener = logging.handlers.QueueListener(records, *handlers, respect_handler_level=True)
    root.handlers = [_HandOff(records)]
    listener.start()
    try:
        yield
    finally:
        root.handlers = handlers
        listener.stop()


class _RequestHandler(RequestHandler):
    """Answers aiohttp's protocol errors without echoing the client's bytes."""

    ids = RequestIds()

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status >= 500 or request.writer.output_size > 0:
            return super().handle_error(request, status, exc, message)
        # A made-up method is mostly TLS or a scanner on the port: info.
        level = logging.INFO if isinstance(exc, BadHttpMethod) else logging.WARNING
        detail = " ".join(str(exc).split())  # one line: aiohttp's message spans several
        request_id = self.ids.of(request)
        log.log(
            level, "malformed request from %s refused: %s id=%s", request.remote, detail, request_id
        )
        # No app hook runs for these.
        headers = {**security_headers(PROTECTED_PREFIX), REQUEST_ID_HEADER: request_id}
        response = problem_response(
            status,
            INVALID_HTTP,
            "the request is not valid HTTP/1.1: see the server's log for what was wrong",
            headers=headers,
        )
        response.force_close()
        return response


class _Server(web.Server):
    ids = RequestIds()  # the app's, set by the runner

    def __call__(self) -> RequestHandler:
        handler = _RequestHandler(self, loop=self._loop, **self._kwargs)
        handler.ids = self.ids
        return handler


class _AppRunner(web.AppRunner):
    async def _make_server(self) -> web.Server:
        made = await super()._make_server()
        kwargs: dict[str, Any] = self._kwargs
        server = _Server(
            made.request_handler,
            request_factory=made.request_factory,
            loop=asyncio.get_running_loop(),
            **kwargs,
        )
        server.ids = self.app[REQUEST_IDS_KEY]
        return server


async def _serve(app: web.Application, settings: Settings, reuse_port: bool) -> None:
    """Serve until SIGINT/SIGTERM/SIGHUP; then stop accepting and give the requests in flight
    ``shutdown_grace`` seconds (aiohttp's own shutdown would stop reading uploads at once)."""
    runner = _AppRunner(
        app,
        access_log=None,
        shutdown_timeout=_CANCEL_WAIT,
        # From a connection's opening to a complete request: the header and idle timeout.
        keepalive_timeout=settings.idle_timeout,
    )
    await runner.setup()
    # Before listening: a stop that arrives while the site starts is a graceful one.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in _STOP_SIGNALS:
        loop.add_signal_handler(signum, stop.set)
    site = web.TCPSite(runner, settings.host, settings.port, reuse_port=reuse_port)
    try:
        await site.start()
    except OSError as exc:
        # Port taken, address not local: one line, and the app shut down, no traceback.
        await runner.cleanup()
        log.error("cannot listen on %s:%d: %s", settings.host, settings.port, exc.strerror or exc)
        raise SystemExit(1) from None
    host = f"[{settings.host}]" if ":" in settings.host else settings.host  # IPv6, as in a URL
    log.info("listening on http://%s:%d (pid %d)", host, settings.port, os.getpid())
    try:
        await stop.wait()
        log.info("stopping: no new connections; waiting for requests in flight")
        await site.stop()
        inflight = app[INFLIGHT_KEY]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(settings.shutdown_grace):
                await inflight.idle()
        if inflight.count:
            log.warning("grace period over: aborting %d request(s) in flight", inflight.count)
    finally:
        await runner.cleanup()


# After the grace period, how long cancelled handlers get to clean up after themselves.
_CANCEL_WAIT = 5.0
# SIGHUP too: the terminal a server was started from closing stops it as gracefully.
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


async def _prepare(settings: Settings) -> None:
    async with open_store(settings) as store:
        await startup_check(store)


def _raise_open_file_limit() -> None:
    """Every connection is a file descriptor: a soft limit of 1,024 turns clients away early."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else 1 << 16
    if soft != resource.RLIM_INFINITY and soft < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def _port_taken(settings: Settings) -> OSError | None:
    """Whatever listens on the port (another server's SO_REUSEPORT workers would share it)."""
    if not settings.port:
        return None
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            settings.host, settings.port, type=socket.SOCK_STREAM
        )[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the workers do
            probe.bind(address)
    except OSError as exc:
        return exc
    return None


def serve(settings: Settings) -> None:
    _raise_open_file_limit()
    if settings.workers <= 1:
        run_worker(settings, startup_check=True, reuse_port=False)
        return
    taken = _port_taken(settings)
    if taken is not None:
        log.error(
            "cannot listen on %s:%d: %s", settings.host, settings.port, taken.strerror or taken
        )
        sys.exit(1)
    asyncio.run(_prepare(settings))
    with metrics.summed_over_workers(settings.data_dir / "tmp" / "metrics"):
        code = Supervisor(settings).run()
    sys.exit(code)


# A dead worker restarts after a pause doubling with each death in RESTART_WINDOW, so a
# crash that repeats at once does not spin; past RESTART_LIMIT deaths the supervisor gives
# up, and the process manager above it sees the failure.
RESTART_FIRST_PAUSE = 0.1
RESTART_MAX_PAUSE = 10.0
RESTART_WINDOW = 60.0
RESTART_LIMIT = 5


class RestartCounter:
    """Workers restarted: an integer mapped before the fork, so every worker reports it."""

    def __init__(self) -> None:
        self._cell = mmap.mmap(-1, 8)

    def add(self) -> None:
        self._cell[:8] = struct.pack("q", self.value() + 1)

    def value(self) -> int:
        return int(struct.unpack("q", self._cell[:8])[0])


class Supervisor:
    """Forks the workers, restarts one that dies (with back-off), forwards SIGINT/SIGTERM/SIGHUP."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.restarts = RestartCounter()
        self.workers: set[int] = set()
        self.deaths: list[float] = []  # monotonic times of the recent deaths
        self.due: list[float] = []  # monotonic times at which a worker is to be started
        self.stopping: int | None = None  # the signal that asked the workers to stop
        self._wake = (-1, -1)  # signals write a byte here, waking the loop

    def run(self) -> int:
        wake_read, wake_write = self._wake = os.pipe()
        os.set_blocking(wake_read, False)
        os.set_blocking(wake_write, False)
        signal.set_wakeup_fd(wake_write)
        for signum in _STOP_SIGNALS:
            signal.signal(signum, self._on_stop)
        # A default SIGCHLD is ignored without writing the wake-up byte.
        signal.signal(signal.SIGCHLD, lambda _signum, _frame: None)
        for _ in range(self.settings.workers):
            self._start_worker()
        log.info(
            "started %d workers: %s", len(self.workers), ", ".join(map(str, sorted(self.workers)))
        )
        failed = False
        while self.workers or (self.due and self.stopping is None):
            timeout = max(0.0, min(self.due) - time.monotonic()) if self.due else None
            with contextlib.suppress(InterruptedError):
                select.select([wake_read], [], [], timeout)
            with contextlib.suppress(BlockingIOError):
                os.read(wake_read, 512)
            failed = self._reap() or failed
            now = time.monotonic()
            while self.stopping is None and self.due and min(self.due) <= now:
                self.due.remove(min(self.due))
                self._start_worker(restart=True)
        signal.set_wakeup_fd(-1)
        os.close(wake_read)
        os.close(wake_write)
        return 1 if failed else 0

    def _on_stop(self, signum: int, _frame: object) -> None:
        self.stopping = signum
        self.due.clear()
        self._signal_all(signum)

    def _signal_all(self, signum: int) -> None:
        for pid in self.workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def _reap(self) -> bool:
        """Collect the workers that ended; True if the supervisor gave up on them."""
        gave_up = False
        while self.workers:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            self.workers.discard(pid)
            metrics.worker_died(pid)
            code = os.waitstatus_to_exitcode(status)
            if self.stopping is not None:
                # Killed by the stop we forwarded before it could handle it: it was starting.
                if code != 0 and code != -self.stopping:
                    log.warning("worker %d exited with status %d while stopping", pid, code)
                    gave_up = True
                continue
            how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
            now = time.monotonic()
            self.deaths = [t for t in self.deaths if now - t < RESTART_WINDOW] + [now]
            if len(self.deaths) > RESTART_LIMIT:
                log.error(
                    "worker %d %s: %d workers died in the last %.0f s; giving up, stopping "
                    "the others",
                    pid, how, len(self.deaths), RESTART_WINDOW,
                )  # fmt: skip
                self.stopping = signal.SIGTERM
                self.due.clear()
                self._signal_all(signal.SIGTERM)
                gave_up = True
                continue
            pause = min(RESTART_FIRST_PAUSE * 2 ** (len(self.deaths) - 1), RESTART_MAX_PAUSE)
            log.error("worker %d %s; starting a new worker in %.1f s", pid, how, pause)
            self.due.append(now + pause)
        return gave_up

    def _start_worker(self, *, restart: bool = False) -> None:
        # Blocked across the fork: a stop must neither run the supervisor's handler in the
        # child (which would swallow it) nor reach the parent before the pid is known.
        signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        pid = os.fork()
        if pid == 0:  # the worker
            code = 0
            try:
                for signum in (*_STOP_SIGNALS, signal.SIGCHLD):
                    signal.signal(signum, signal.SIG_DFL)
                signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
                signal.set_wakeup_fd(-1)
                os.close(self._wake[0])
                os.close(self._wake[1])
                metrics.use_multiprocess()
                run_worker(
                    self.settings,
                    startup_check=False,
                    reuse_port=True,
                    restarts=self.restarts.value,
                )
            except BaseException:
                log.exception("worker failed")
                code = 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        self.workers.add(pid)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
        if restart:
            self.restarts.add()
            log.warning("started worker %d in place of the one that died", pid)
