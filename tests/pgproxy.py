"""A TCP proxy in front of PostgreSQL that loses one connection around a COMMIT.

The first connection that sends an ``INSERT INTO files`` (or ``statement``) and then a
``COMMIT`` is cut: with ``after=True`` once the server has answered the COMMIT (it
committed; the client never hears so), with ``after=False`` before the COMMIT reaches the
server (it rolls back). Every other connection, and everything before the cut, passes
unchanged. asyncpg sends the statement's text on its first use (a Parse message) and
``COMMIT;`` as a simple query, both readable in the stream: no TLS here (the test server
has none).
"""

from __future__ import annotations

import contextlib
import socket
import threading
from types import TracebackType
from urllib.parse import urlsplit, urlunsplit


class CommitCuttingProxy:
    def __init__(
        self, server_url: str, *, after: bool, statement: bytes = b"INSERT INTO files"
    ) -> None:
        parts = urlsplit(server_url)
        self._upstream = (parts.hostname or "127.0.0.1", parts.port or 5432)
        self.after = after
        self.statement = statement
        self.cut = False  # a connection was cut
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        port = int(self._listener.getsockname()[1])
        netloc = parts.netloc.rsplit("@", 1)
        host = f"127.0.0.1:{port}"
        self._netloc = f"{netloc[0]}@{host}" if len(netloc) == 2 else host
        self._sockets: list[socket.socket] = []
        self._closed = False

    def url(self, database_url: str) -> str:
        """``database_url`` (a database of the proxied server) through the proxy."""
        return urlunsplit(urlsplit(database_url)._replace(netloc=self._netloc))

    def __enter__(self) -> CommitCuttingProxy:
        threading.Thread(target=self._accept_loop, daemon=True).start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._closed = True
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                _shut(sock)

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self._upstream)
            with self._lock:
                self._sockets += [client, upstream]
            armed = threading.Event()  # this connection's COMMIT is through: cut on the answer
            threading.Thread(
                target=self._pump_up, args=(client, upstream, armed), daemon=True
            ).start()
            threading.Thread(
                target=self._pump_back, args=(upstream, client, armed), daemon=True
            ).start()

    def _pump_up(
        self, client: socket.socket, upstream: socket.socket, armed: threading.Event
    ) -> None:
        inserted = False
        with contextlib.suppress(OSError):
            while chunk := client.recv(65536):
                inserted = inserted or self.statement in chunk
                if inserted and b"COMMIT" in chunk:
                    with self._lock:
                        ours, self.cut = not self.cut, True
                    if ours and not self.after:
                        break
                    if ours:
                        armed.set()
                upstream.sendall(chunk)
        _shut(client)
        _shut(upstream)

    def _pump_back(
        self, upstream: socket.socket, client: socket.socket, armed: threading.Event
    ) -> None:
        with contextlib.suppress(OSError):
            while chunk := upstream.recv(65536):
                if armed.is_set():
                    break  # the server's answer to the COMMIT: it committed, nobody is told
                client.sendall(chunk)
        _shut(client)
        _shut(upstream)


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()
