"""A TCP proxy in front of a test server that can cut a response off mid-stream, as a PACS that stops does.

Every connection is forwarded to ``target`` byte for byte. While :attr:`CuttingProxy.cut` names a string, a
request whose request line contains it gets only the first ``keep`` bytes of its response (headers and part of
the body); then both sockets are closed. Clients here send one request at a time on a connection (no
pipelining), so the bytes sent back after a request are its response. :attr:`CuttingProxy.cuts` counts the cuts.
:attr:`CuttingProxy.pattern` finds what ``cut`` is looked for in (HTTP request lines by default; :data:`UIDS`
finds the UIDs a DIMSE client sends, as the StudyInstanceUID of a C-GET or C-MOVE identifier).
"""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

_REQUEST_LINE = re.compile(rb"(?:^|\r\n)(?:GET|POST|PUT|DELETE|HEAD) (\S+) HTTP/1\.[01]\r\n")
UIDS = re.compile(rb"[0-9][0-9.]{8,63}")


@dataclass
class CuttingProxy:
    port: int
    cut: str = ""
    keep: int = 0
    cuts: int = 0
    pattern: re.Pattern[bytes] = _REQUEST_LINE
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@dataclass
class _Connection:
    down: int = 0  # bytes sent back to the client so far
    limit: int | None = None  # close once ``down`` reaches this


def _close(*sockets: socket.socket) -> None:
    for s in sockets:
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _requests(client: socket.socket, upstream: socket.socket, proxy: CuttingProxy, conn: _Connection) -> None:
    try:
        while data := client.recv(65536):
            for path in proxy.pattern.findall(data):
                with proxy.lock:
                    if proxy.cut and proxy.cut in path.decode("latin-1"):
                        proxy.cuts += 1
                        conn.limit = conn.down + proxy.keep
            upstream.sendall(data)
    except OSError:
        pass
    finally:
        _close(client, upstream)


def _responses(upstream: socket.socket, client: socket.socket, conn: _Connection) -> None:
    try:
        while data := upstream.recv(65536):
            if conn.limit is not None and conn.down + len(data) >= conn.limit:
                client.sendall(data[: conn.limit - conn.down])
                break  # the server "stops" in the middle of this response
            client.sendall(data)
            conn.down += len(data)
    except OSError:
        pass
    finally:
        _close(client, upstream)


def _serve(client: socket.socket, target: tuple[str, int], proxy: CuttingProxy) -> None:
    upstream = socket.create_connection(target, timeout=120)
    conn = _Connection()
    up = threading.Thread(target=_requests, args=(client, upstream, proxy, conn), daemon=True)
    up.start()
    _responses(upstream, client, conn)
    up.join(timeout=10)
    client.close()
    upstream.close()


@contextmanager
def start(target_port: int) -> Iterator[CuttingProxy]:
    """A proxy on a free loopback port in front of ``127.0.0.1:target_port``, closed when the block ends."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(32)
    proxy = CuttingProxy(port=int(listener.getsockname()[1]))
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                client, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=_serve, args=(client, ("127.0.0.1", target_port), proxy), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        stop.set()
        listener.close()
        thread.join(timeout=10)
