"""A TCP proxy for the tus tests that cuts connections, like a network that drops.

Every byte a client sends through it is counted (all connections together); when the count
reaches the next of the ``cut_at`` marks, the connection carrying that byte is closed in
both directions right there, mid-request. Everything else is passed through unchanged.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from types import TracebackType


class DroppingProxy:
    def __init__(self, target_port: int, cut_at: list[int]) -> None:
        self.target_port = target_port
        self.cut_at = sorted(cut_at)
        self.cuts = 0  # connections cut so far
        self.sent = 0  # client bytes passed on so far
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._closed = False

    def __enter__(self) -> DroppingProxy:
        self._spawn(self._accept_loop)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                _shut(sock)
        for thread in self._threads:
            thread.join(timeout=5)

    def _spawn(self, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                _shut(client)  # the server is down: so is the connection
                continue
            with self._lock:
                self._sockets += [client, upstream]
            self._spawn(self._pump_upstream, client, upstream)
            self._spawn(self._pump_back, upstream, client)

    def _allowance(self, wanted: int) -> int:
        """How many of ``wanted`` bytes may pass before the next cut; counts them."""
        with self._lock:
            if self.cuts < len(self.cut_at):
                wanted = min(wanted, self.cut_at[self.cuts] - self.sent)
            self.sent += wanted
            return wanted

    def _pump_upstream(self, client: socket.socket, upstream: socket.socket) -> None:
        try:
            while data := client.recv(65536):
                allowed = self._allowance(len(data))
                upstream.sendall(data[:allowed])
                if allowed < len(data):
                    with self._lock:
                        self.cuts += 1
                    break
        except OSError:
            pass
        _shut(client)
        _shut(upstream)

    def _pump_back(self, upstream: socket.socket, client: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := upstream.recv(65536):
                client.sendall(data)
        _shut(client)
        _shut(upstream)


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()
