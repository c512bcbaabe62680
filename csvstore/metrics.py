"""Prometheus metrics (a registry per application; with --workers, summed over the workers
through prometheus-client's multiprocess files), and the database and storage wrappers that
time every operation into them."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from prometheus_client import (
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
    values,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from csvstore import __version__
from csvstore.db.sqlite import Database, Operation
from csvstore.storage.local import Storage, StorageWriter

T = TypeVar("T")

disable_created_metrics()  # type: ignore[no-untyped-call]
_MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_multiprocess_dir: str | None = None


@contextlib.contextmanager
def summed_over_workers(path: Path) -> Iterator[None]:
    """In the supervisor, around the workers' lives: an empty folder for their value files,
    removed when they have all stopped (a figure does not outlive its server)."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    os.environ[_MULTIPROC_ENV] = str(path)
    try:
        yield
    finally:
        del os.environ[_MULTIPROC_ENV]
        shutil.rmtree(path, ignore_errors=True)


def use_multiprocess() -> None:
    """In a worker, before its Metrics: values go to files every worker's scrape sums."""
    global _multiprocess_dir
    _multiprocess_dir = os.environ[_MULTIPROC_ENV]
    values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]


def worker_died(pid: int) -> None:
    """Its live gauges leave the sum; its counters stay in it."""
    if path := os.environ.get(_MULTIPROC_ENV):
        multiprocess.mark_process_dead(pid, path)  # type: ignore[no-untyped-call]


_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        # Read at each scrape by the process that answers: not summed over workers.
        live: list[Collector] = [PROCESS_COLLECTOR, PLATFORM_COLLECTOR, _BuildInfo()]
        self._live = live
        self._summed: CollectorRegistry | None = None
        if _multiprocess_dir is not None:
            self._summed = CollectorRegistry(auto_describe=True)
            multiprocess.MultiProcessCollector(self._summed, _multiprocess_dir)  # type: ignore[no-untyped-call]
        for collector in live:
            self._add_live(collector)
        self.requests = Counter(
            "csvstore_http_requests", "HTTP requests answered", ["method", "route", "status"],
            registry=r,
        )  # fmt: skip
        self.latency = Histogram(
            "csvstore_http_request_duration_seconds", "time to answer, by route",
            ["method", "route"], buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.uploaded_bytes = Counter(
            "csvstore_uploaded_bytes", "bytes of CSV files stored", registry=r
        )
        self.downloaded_bytes = Counter(
            "csvstore_downloaded_bytes", "bytes of stored files sent back", registry=r
        )
        self.uploads_in_flight = Gauge(
            "csvstore_uploads_in_flight", "uploads being received right now", registry=r,
            multiprocess_mode="livesum",
        )  # fmt: skip
        self.uploads_rejected = Counter(
            "csvstore_uploads_rejected", "uploads refused or failed, by reason", ["reason"],
            registry=r,
        )  # fmt: skip
        self.queries = Counter(
            "csvstore_queries", "SQL queries answered, ok or refused", ["outcome"], registry=r
        )
        self.query_duration = Histogram(
            "csvstore_query_duration_seconds", "time to answer an SQL query",
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.queries_refused = Counter(
            "csvstore_queries_refused", "SQL queries refused or failed, by reason", ["reason"],
            registry=r,
        )  # fmt: skip
        self.db_latency = Histogram(
            "csvstore_db_operation_duration_seconds", "database operations, reads and writes",
            ["kind"], buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.storage_latency = Histogram(
            "csvstore_storage_operation_duration_seconds", "storage operations",
            ["operation"], buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.sessions_expired = Counter(
            "csvstore_sessions_expired", "sessions removed by the retention sweeper", registry=r
        )
        self.files_expired = Counter(
            "csvstore_files_expired", "files removed with expired sessions", registry=r
        )
        self.tus = TusMetrics(r)

    def _add_live(self, collector: Collector) -> None:
        self.registry.register(collector)
        if self._summed is not None:
            self._summed.register(collector)

    def watch_worker_restarts(self, read: Callable[[], int]) -> None:
        self._add_live(_WorkerRestarts(read))

    def watch_disk(self, storage: Storage) -> None:
        def free() -> float:
            value = storage.free_bytes()
            return float("nan") if value is None else float(value)

        doc = "free bytes where uploads are written"
        self._add_live(_Reading("csvstore_disk_free_bytes", doc, free))

    def exposition(self) -> bytes:
        return generate_latest(self._summed or self.registry)


class TusMetrics:
    """The tus engine's events (resumable.events.TusEvents) as counters, like tusd's."""

    def __init__(self, r: CollectorRegistry) -> None:
        def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
            return Counter(f"csvstore_tus_{name}", doc, labels, registry=r)

        self._created = counter("uploads_created", "tus uploads created")
        self._finished = counter("uploads_finished", "tus uploads complete and stored")
        self._terminated = counter("uploads_terminated", "tus uploads deleted by a client")
        self._expired = counter("uploads_expired", "tus uploads removed unfinished at expiry")
        self._received = counter("received_bytes", "bytes appended to tus uploads")
        self._patches = counter(
            "patches", "tus PATCH requests by outcome: partial, completed or the error's reason",
            ("outcome",),
        )  # fmt: skip

    def created(self) -> None:
        self._created.inc()

    def finished(self) -> None:
        self._finished.inc()

    def terminated(self) -> None:
        self._terminated.inc()

    def expired(self, count: int) -> None:
        self._expired.inc(count)

    def received(self, size: int) -> None:
        self._received.inc(size)

    def patched(self, outcome: str) -> None:
        self._patches.labels(outcome.replace("-", "_")).inc()


class _BuildInfo(Collector):
    def collect(self) -> Iterable[Metric]:
        info = GaugeMetricFamily("csvstore_build_info", "the running version", labels=["version"])
        info.add_metric([__version__], 1)
        yield info


class _Reading(Collector):
    def __init__(self, name: str, doc: str, read: Callable[[], float]) -> None:
        self._name, self._doc, self._read = name, doc, read

    def collect(self) -> Iterable[Metric]:
        yield GaugeMetricFamily(self._name, self._doc, value=self._read())


class _WorkerRestarts(Collector):
    """The supervisor's count, read when /metrics is scraped (a Counter cannot be set)."""

    def __init__(self, read: Callable[[], int]) -> None:
        self._read = read

    def collect(self) -> Iterable[Metric]:
        yield CounterMetricFamily(
            "csvstore_worker_restarts",
            "worker processes started again after one died (with --workers N; the same "
            "figure from every worker)",
            value=self._read(),
        )


class TimedDatabase:
    """A Database that reports how long each read and write took."""

    def __init__(self, inner: Database, metrics: Metrics) -> None:
        self.inner = inner
        self.queries = inner.queries
        self._read = metrics.db_latency.labels("read")
        self._write = metrics.db_latency.labels("write")

    async def read(self, op: Operation[T]) -> T:
        with self._read.time():
            return await self.inner.read(op)

    async def write(self, op: Operation[T], *, durable: bool = True) -> T:
        with self._write.time():
            return await self.inner.write(op, durable=durable)

    async def integrity_check(self) -> list[str]:
        return await self.inner.integrity_check()

    async def close(self) -> None:
        await self.inner.close()


class TimedStorage:
    """A Storage that reports how long publishing, deleting and opening reads took."""

    def __init__(self, inner: Storage, metrics: Metrics) -> None:
        self.inner = inner
        self._latency = metrics.storage_latency

    async def prepare(
        self, *, temp_min_age: float = 0.0, abandoned: frozenset[str] = frozenset()
    ) -> int:
        return await self.inner.prepare(temp_min_age=temp_min_age, abandoned=abandoned)

    async def begin(self, key: str) -> StorageWriter:
        with self._latency.labels("begin").time():
            writer = await self.inner.begin(key)
        return _TimedWriter(writer, self._latency.labels("commit"))

    def read(self, key: str, start: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        return self.inner.read(key, start, length)

    async def delete(self, keys: list[str]) -> None:
        with self._latency.labels("delete").time():
            await self.inner.delete(keys)

    async def sync(self) -> None:
        with self._latency.labels("sync").time():
            await self.inner.sync()

    async def restore(self, key: str, data: bytes) -> None:
        await self.inner.restore(key, data)

    async def keys(self) -> set[str]:
        return await self.inner.keys()

    async def read_store_id(self) -> str | None:
        return await self.inner.read_store_id()

    async def create_store_id(self, store_id: str) -> str:
        return await self.inner.create_store_id(store_id)

    async def stat(self, key: str) -> tuple[int, float] | None:
        return await self.inner.stat(key)

    def free_bytes(self) -> int | None:
        return self.inner.free_bytes()

    async def probe_writable(self) -> None:
        await self.inner.probe_writable()


class _TimedWriter:
    def __init__(self, inner: StorageWriter, commit_latency: Any) -> None:
        self._inner = inner
        self._commit_latency = commit_latency

    @property
    def key(self) -> str:
        return self._inner.key

    @property
    def size(self) -> int:
        return self._inner.size

    @property
    def holds_parts(self) -> bool:
        return self._inner.holds_parts

    @property
    def holds_upload(self) -> bool:
        return self._inner.holds_upload

    @property
    def journal(self) -> bytes | None:
        return self._inner.journal

    async def write(self, chunk: bytes) -> None:
        await self._inner.write(chunk)

    async def commit(self) -> None:
        with self._commit_latency.time():
            await self._inner.commit()

    async def abort(self) -> None:
        await self._inner.abort()
