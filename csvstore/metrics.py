"""Prometheus metrics of one process (a registry per application), and the database and
storage wrappers that time every operation into them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from csvstore.db.sqlite import Database, Operation
from csvstore.storage.local import Storage, StorageWriter

T = TypeVar("T")

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
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
            "csvstore_uploads_in_flight", "uploads being received right now", registry=r
        )
        self.uploads_rejected = Counter(
            "csvstore_uploads_rejected", "uploads refused or failed, by reason", ["reason"],
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
        self.disk_free = Gauge(
            "csvstore_disk_free_bytes", "free bytes where uploads are written", registry=r
        )
        self.sessions_expired = Counter(
            "csvstore_sessions_expired", "sessions removed by the retention sweeper", registry=r
        )
        self.files_expired = Counter(
            "csvstore_files_expired", "files removed with expired sessions", registry=r
        )

    def watch_worker_restarts(self, read: Callable[[], int]) -> None:
        self.registry.register(_WorkerRestarts(read))

    def watch_disk(self, storage: Storage) -> None:
        def free() -> float:
            value = storage.free_bytes()
            return float("nan") if value is None else float(value)

        self.disk_free.set_function(free)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


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
    def journal(self) -> bytes | None:
        return self._inner.journal

    async def write(self, chunk: bytes) -> None:
        await self._inner.write(chunk)

    async def commit(self) -> None:
        with self._commit_latency.time():
            await self._inner.commit()

    async def abort(self) -> None:
        await self._inner.abort()
