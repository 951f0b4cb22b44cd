"""Limits on every request, for cheroot: what it lacks against hostile or slow clients.

:class:`Server` is cheroot's WSGI server with these added:

* a request body is read here, before the app, with a deadline for the whole body and at most
  ``max_body_bytes`` of it ever read (chunked bodies included); the app gets it in memory. An
  invalid ``Content-Length`` is 400, a body over the cap 413, a late one 408; each closes the
  connection. cheroot alone takes ``Content-Length: -1`` as "read to the end of the stream" and,
  after the app answers without reading a body, reads whatever length was declared;
* the request line and headers must arrive within a deadline too (cheroot's timeout is per read,
  so a client sending a byte every few seconds would hold a worker thread for ever);
* with TLS, the handshake happens here, in the connection's worker thread and within a deadline
  of its own, not in cheroot's one accept thread, where a client that connects and stays silent
  would hold up every new connection behind it;
* one client (an address; IPv6 addresses by /64) may have only a few requests being served at
  once, whatever their stage (TLS handshakes included), so it cannot take every worker thread or
  every slot. A connection over that share is answered 503 with ``Retry-After``, over TLS as over
  plain HTTP, by :mod:`servicekit.refusal` on a thread of its own, never by a worker thread; a
  client speaking plain HTTP to the TLS port gets a 400 saying so, the same way;
* behind a trusted reverse proxy (:mod:`servicekit.proxies`) the share is counted per client the
  proxy names, once the request head is read, not per connection from the proxy.
"""

from __future__ import annotations

import _pyio
import contextlib
import re
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any, Callable, Literal, Protocol, runtime_checkable

from cheroot import errors as cheroot_errors
from cheroot import server as cheroot_server
from cheroot import wsgi
from cheroot.makefile import MakeFile, StreamReader

from servicekit.limiter import address_key
from servicekit.proxies import TrustedProxies
from servicekit.refusal import Refusals
from servicekit.responses import JSON, WSGIApp, json_error_body
from servicekit.tls import PlainHttpError

DEFAULT_MAX_REQUESTS_PER_CLIENT = 8
MAX_BODY_BYTES = 4096  # no endpoint of either service takes a bigger body
MAX_HEAD_BYTES = 64 * 1024  # request line and headers; cheroot has no limit of its own
HEAD_TIMEOUT = 5.0  # seconds for the request line and headers, once the first byte is in
BODY_TIMEOUT = 5.0  # seconds for the whole body, once the headers are in
HANDSHAKE_TIMEOUT = 3.0  # seconds for the whole TLS handshake, from the accepted connection
REFUSAL_TIMEOUT = 5.0  # seconds for a refused connection to take its answer: handshake, head

_DIGITS = re.compile(r"[0-9]+")
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,8}")
_MAX_CHUNK_LINE = 256  # a size, maybe an extension; longer is not a client we serve
_MAX_TRAILER_LINES = 16


# The client an address counts as: itself for IPv4, its /64 for IPv6 (one host has many); the
# same key the password limiter uses, so the two can never disagree on who a client is.
client_of = address_key


class ClientSlots:
    """How many requests each client has being served; refuses one over ``limit``."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}

    def acquire(self, client: str) -> bool:
        with self._lock:
            count = self._counts.get(client, 0)
            if count >= self._limit:
                return False
            self._counts[client] = count + 1
            return True

    def release(self, client: str) -> None:
        with self._lock:
            count = self._counts[client] - 1
            if count:
                self._counts[client] = count
            else:
                del self._counts[client]


@dataclass(frozen=True)
class RequestLimits:
    """What one request may cost the server: time, bytes and, per client, worker threads."""

    clients: ClientSlots
    proxies: TrustedProxies = field(default_factory=TrustedProxies)
    max_body_bytes: int = MAX_BODY_BYTES
    head_timeout: float = HEAD_TIMEOUT
    body_timeout: float = BODY_TIMEOUT
    handshake_timeout: float = HANDSHAKE_TIMEOUT


@runtime_checkable
class DeferredHandshake(Protocol):
    """A TLS adapter whose ``wrap`` leaves the handshake to the connection (servicekit.tls)."""

    def finish_handshake(self, sock: Any, *, timeout: float) -> dict[str, Any]:
        """Complete the handshake within ``timeout``; the connection's WSGI environ entries."""


# ---- reading with a deadline --------------------------------------------------------------------


class _DeadlineSocketIO(socket.SocketIO):
    """Socket reads that fail once a deadline has passed, however slowly the bytes trickle in."""

    def __init__(self, sock: socket.socket, mode: Literal["rb"], *, idle_timeout: float) -> None:
        super().__init__(sock, mode)
        self.deadline: float | None = None
        self._idle_timeout = idle_timeout

    def readinto(self, buffer: Any) -> int | None:
        if self.deadline is None:
            return super().readinto(buffer)
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout("timed out")  # cheroot answers 408 to this message
        self._sock.settimeout(min(left, self._idle_timeout))  # type: ignore[attr-defined]
        try:
            return super().readinto(buffer)
        finally:
            self._sock.settimeout(self._idle_timeout)  # type: ignore[attr-defined]


class DeadlineReader(StreamReader):
    """cheroot's buffered socket reader, with :meth:`set_deadline` over all reads that follow."""

    def __init__(self, sock: socket.socket, bufsize: int, *, idle_timeout: float) -> None:
        # StreamReader builds its own plain SocketIO; the buffered reader under it takes ours.
        _pyio.BufferedReader.__init__(
            self, _DeadlineSocketIO(sock, "rb", idle_timeout=idle_timeout), bufsize
        )
        self.bytes_read = 0

    def set_deadline(self, seconds: float | None) -> None:
        """Reads fail with a timeout ``seconds`` from now; None: only cheroot's per-read timeout."""
        deadline = None if seconds is None else time.monotonic() + seconds
        self.raw.deadline = deadline  # type: ignore[attr-defined]


class BodyError(Exception):
    """A request body refused: the HTTP status line and a message for the client."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def declared_length(value: str | None, *, limit: int) -> int | None:
    """The Content-Length header as a number; BodyError unless it is plain digits within ``limit``.

    Python's ``int`` (and so cheroot) also takes "-1", "+5", " 5" and "1_000"; a negative length
    would read the stream to its end.
    """
    if value is None:
        return None
    if not _DIGITS.fullmatch(value):
        raise BodyError("400 Bad Request", f"invalid Content-Length {value[:40]!r}: not digits")
    if len(value) > len(str(limit)) or int(value) > limit:
        raise BodyError("413 Content Too Large", f"request body over {limit} bytes")
    return int(value)


def read_chunked(stream: Any, *, limit: int) -> bytes:
    """A chunked body, reading no chunk that would take it over ``limit`` bytes."""
    body = bytearray()
    while True:
        size_text = _read_line(stream, "chunk size").split(b";", 1)[0].strip()
        if not _CHUNK_SIZE.fullmatch(size_text):
            raise BodyError("400 Bad Request", f"invalid chunk size {size_text[:20]!r}")
        size = int(size_text, 16)
        if size == 0:
            break
        if len(body) + size > limit:
            raise BodyError("413 Content Too Large", f"request body over {limit} bytes")
        chunk = stream.read(size)
        if len(chunk) < size or stream.read(2) != b"\r\n":
            raise BodyError("400 Bad Request", "chunked body cut short or not framed by CRLF")
        body += chunk
    for _ in range(_MAX_TRAILER_LINES):  # read the trailers, so the next request starts clean
        if _read_line(stream, "trailer") in (b"\r\n", b"\n"):
            return bytes(body)
    raise BodyError("400 Bad Request", f"more than {_MAX_TRAILER_LINES} trailer lines")


def _read_line(stream: Any, what: str) -> bytes:
    line = stream.readline(_MAX_CHUNK_LINE + 1)
    if not line.endswith(b"\n"):
        problem = "too long" if len(line) > _MAX_CHUNK_LINE else "cut short"
        raise BodyError("400 Bad Request", f"chunked body: {what} line {problem}")
    return bytes(line)


class _Gateway(wsgi.Gateway_10):
    """Reads the request body under the limits before the app runs; the app gets it in memory."""

    def respond(self) -> None:
        limits: RequestLimits = self.req.server.limits
        if not getattr(self.req.conn, "from_trusted_proxy", False):
            self._respond(limits)
            return
        # A proxy's connection took no slot: the client it names takes one now.
        limits.proxies.apply(self.env)
        client = client_of(self.env.get("REMOTE_ADDR") or "")
        if not limits.clients.acquire(client):
            self._refuse("503 Service Unavailable", _BUSY_MESSAGE, [("Retry-After", "1")])
            return
        try:
            self._respond(limits)
        finally:
            limits.clients.release(client)

    def _respond(self, limits: RequestLimits) -> None:
        request = self.req
        try:
            body = self._read_body(limits)
        except BodyError as error:
            self._refuse(error.status, error.message)
            return
        except socket.timeout:
            self._refuse(
                "408 Request Timeout",
                f"request body not received within {limits.body_timeout:g} s",
            )
            return
        finally:
            request.conn.rfile.set_deadline(None)  # the head's deadline too: nothing more to read
        environ = self.env
        environ["wsgi.input"] = BytesIO(body)
        environ["wsgi.input_terminated"] = True
        if body or "CONTENT_LENGTH" in environ or request.chunked_read:
            environ["CONTENT_LENGTH"] = str(len(body))
        environ.pop("HTTP_TRANSFER_ENCODING", None)  # the app must not decode it a second time
        super().respond()

    def _read_body(self, limits: RequestLimits) -> bytes:
        request = self.req
        length = declared_length(self.env.get("CONTENT_LENGTH"), limit=limits.max_body_bytes)
        if request.chunked_read and length is not None:  # which one frames it? smuggling
            raise BodyError("400 Bad Request", "both Content-Length and chunked Transfer-Encoding")
        if not request.chunked_read and not length:
            return b""
        reader: DeadlineReader = request.conn.rfile
        reader.set_deadline(limits.body_timeout)
        if request.chunked_read:
            return read_chunked(reader, limit=limits.max_body_bytes)
        body = request.rfile.read(length)  # through cheroot's file: nothing is left to drain
        if len(body) < length:  # type: ignore[operator]
            raise BodyError("400 Bad Request", f"body ended at {len(body)} of {length} bytes")
        return body

    def _refuse(self, status: str, message: str, extra: Sequence[tuple[str, str]] = ()) -> None:
        self.req.close_connection = True  # the rest of the body is never read
        body = json_error_body(message)
        headers = [("Content-Type", JSON), ("Content-Length", str(len(body))), *extra]
        self.start_response(status, headers)
        if self.env.get("REQUEST_METHOD") != "HEAD":
            self.write(body)
        self.req.ensure_headers_sent()


_BUSY_MESSAGE = "too many requests from this address in flight, retry shortly"
_BUSY = json_error_body(_BUSY_MESSAGE)
_BUSY_RESPONSE = (
    f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: {JSON}\r\n"
    f"Content-Length: {len(_BUSY)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"
).encode() + _BUSY


class _Connection(cheroot_server.HTTPConnection):
    """A connection whose requests count against their client and read under deadlines."""

    def __init__(self, server: Any, sock: socket.socket, makefile: Callable = MakeFile) -> None:
        def files(sock: socket.socket, mode: str = "r", bufsize: int = 8192) -> Any:
            if "r" in mode:
                return DeadlineReader(sock, bufsize, idle_timeout=server.timeout)
            return makefile(sock, mode, bufsize)

        super().__init__(server, sock, files)
        adapter = server.ssl_adapter
        self._handshake = adapter if isinstance(adapter, DeferredHandshake) else None
        self._handed_off = False  # the socket now belongs to the server's Refusals
        self.from_trusted_proxy = False

    def communicate(self) -> bool:
        limits: RequestLimits = self.server.limits
        peer = self.remote_addr or ""
        if limits.proxies and limits.proxies.trusts(peer):
            # Its clients take their slots one by one once their heads are read (_Gateway).
            self.from_trusted_proxy = True
            return self._communicate(limits)
        client = client_of(peer)
        if not limits.clients.acquire(client):
            # Refused before reading a byte (waiting for its request would hold a thread), but
            # answered: the handshake, the head and the 503 are done by the refusals thread.
            self._hand_off(client, _BUSY_RESPONSE)
            return False
        try:
            return self._communicate(limits)
        finally:
            limits.clients.release(client)

    def _communicate(self, limits: RequestLimits) -> bool:
        try:
            if self._handshake is not None and not self._finish_handshake(limits):
                return False
            self.rfile.set_deadline(limits.head_timeout)
            return bool(super().communicate())
        finally:
            self.rfile.set_deadline(None)

    def _hand_off(self, client: str, answer: bytes) -> None:
        """Give the socket to the refusals thread; closed at once when it is full."""
        handshake = self._handshake is not None
        self._handshake = None
        self._handed_off = self.server.refusals.take(
            self.socket, client=client, answer=answer, handshake=handshake
        )
        if not self._handed_off and not handshake:  # full: the answer, unread head or not
            with contextlib.suppress(OSError):
                self.wfile.write(answer)

    def close(self) -> None:
        if self._handed_off:
            self.rfile.close()  # the socket itself is the refusals thread's to close
            return
        super().close()

    def _finish_handshake(self, limits: RequestLimits) -> bool:
        """The TLS handshake, once per connection; whether the connection may go on."""
        adapter = self._handshake
        assert adapter is not None
        sock: Any = self.socket
        try:
            # The environ needs the handshake done: protocol, cipher, the client's certificate.
            self.ssl_env = adapter.finish_handshake(sock, timeout=limits.handshake_timeout)
        except PlainHttpError:
            # Answered "400, this is HTTPS" after its request head: see servicekit.refusal.
            self._hand_off(client_of(self.remote_addr or ""), b"")
            return False
        except cheroot_errors.FatalSSLAlert as error:
            self.server.error_log(f"Client {self.remote_addr} lost during TLS handshake: {error}")
            return False
        finally:
            self._handshake = None
            if not self._handed_off:
                with contextlib.suppress(OSError):
                    sock.settimeout(self.server.timeout)
        return True


class Server(wsgi.Server):
    """cheroot's WSGI server with :class:`RequestLimits` on every request."""

    ConnectionClass = _Connection

    def __init__(self, bind_addr: tuple, app: WSGIApp, *, limits: RequestLimits, **options: Any):
        super().__init__(bind_addr, app, **options)
        self.gateway = _Gateway
        self.limits = limits
        self.max_request_header_size = MAX_HEAD_BYTES
        self.refusals = Refusals(timeout=REFUSAL_TIMEOUT)

    def stop(self) -> None:
        super().stop()
        self.refusals.stop()
