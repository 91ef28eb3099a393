"""A fault-injecting HTTP/1.1 proxy, put between the services and the GCS emulator.

Clients keep their connection to the proxy alive (HTTP/1.1, as `requests` does); each request is
forwarded upstream on a connection of its own (the emulator answers HTTP/1.0 and closes) and the
answer relayed with an exact Content-Length. With probability `FaultSettings.rate` a request meets
one fault instead, chosen uniformly among `FaultSettings.kinds`:

| kind             | what the client sees                                  | upstream saw it? |
|------------------|-------------------------------------------------------|------------------|
| `error_503`      | 503 with a GCS JSON error                             | no               |
| `throttle_429`   | 429 with `Retry-After`                                | no               |
| `reset_request`  | RST while it is still sending (part of the body read) | no               |
| `reset_response` | a prefix of the answer, then RST                      | yes              |
| `truncate`       | a prefix of the answer (full Content-Length), then FIN| yes              |
| `delay`          | the whole answer, late                                | yes              |

The last three are the hazardous ones: the operation happened in the store but the client cannot
tell, so whatever it does next (retry, settle, give up) must leave exactly one correct object.

    proxy = FaultProxy("http://127.0.0.1:9023", FaultSettings(rate=0.1), seed=7)
    with BackgroundProxy(proxy):            # its own loop in a thread
        ... point clients at proxy.url ...
        proxy.settings.rate = 0.0           # stop injecting (read on every request)
    print(proxy.counts)                     # Counter of FaultKind
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import random
import socket
import struct
import threading
from collections import Counter
from dataclasses import dataclass, field
from types import TracebackType
from urllib.parse import urlsplit

__all__ = ["BackgroundProxy", "FaultKind", "FaultProxy", "FaultSettings"]

_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "content-length", "te"}
)
_UPSTREAM_TIMEOUT_S = 120.0


class FaultKind(enum.StrEnum):
    ERROR_503 = "error_503"
    THROTTLE_429 = "throttle_429"
    RESET_REQUEST = "reset_request"
    RESET_RESPONSE = "reset_response"
    TRUNCATE = "truncate"
    DELAY = "delay"


@dataclass
class FaultSettings:
    """Read on every request, so a caller may change them while the proxy runs."""

    rate: float = 0.0
    kinds: tuple[FaultKind, ...] = tuple(FaultKind)
    delay_s: tuple[float, float] = (0.2, 2.0)
    retry_after_s: int = 1


@dataclass
class _Message:
    """A request (`start` = request line) or a response (`start` = status line) and its body."""

    start: str
    headers: list[tuple[str, str]]
    body: bytes = b""

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((v for k, v in self.headers if k.lower() == name), None)

    def end_to_end(self) -> list[tuple[str, str]]:
        return [(k, v) for k, v in self.headers if k.lower() not in _HOP_BY_HOP]


def _parse_head(head: bytes) -> _Message:
    lines = head.decode("latin-1").split("\r\n")
    headers = []
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers.append((name.strip(), value.strip()))
    return _Message(lines[0], headers)


async def _read_head(reader: asyncio.StreamReader) -> _Message | None:
    """The next request's head; None when the client closed between requests."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial.strip():
            return None
        raise
    return _parse_head(head)


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
        if size == 0:
            # Trailers, if any, end with an empty line.
            while (await reader.readuntil(b"\r\n")) != b"\r\n":
                pass
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)


async def _read_body(reader: asyncio.StreamReader, message: _Message) -> bytes:
    if (message.header("transfer-encoding") or "").lower() == "chunked":
        return await _read_chunked(reader)
    length = int(message.header("content-length") or 0)
    return await reader.readexactly(length) if length else b""


def _decode_chunked(data: bytes) -> bytes:
    out: list[bytes] = []
    while True:
        line, _, data = data.partition(b"\r\n")
        size = int(line.split(b";")[0].strip() or b"0", 16)
        if size == 0:
            return b"".join(out)
        out.append(data[:size])
        data = data[size + 2 :]


def _split_response(raw: bytes) -> _Message:
    """An upstream answer read to EOF: its head, and its body de-chunked and cut to length."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        raise ConnectionError("the upstream closed before a whole response head")
    response = _parse_head(head + sep)
    if (response.header("transfer-encoding") or "").lower() == "chunked":
        body = _decode_chunked(body)
    elif (length := response.header("content-length")) is not None:
        body = body[: int(length)]
    response.body = body
    return response


def _serialize(response: _Message, *, head_only: bool) -> tuple[bytes, int]:
    """The bytes to send the client (HTTP/1.1, keep-alive) and where the body starts."""
    status = response.start.split(" ", 1)[1] if " " in response.start else "502 Bad Gateway"
    headers = response.end_to_end()
    if head_only:
        # A HEAD answer names the length of the body it does not carry.
        length = response.header("content-length")
        if length is not None:
            headers.append(("Content-Length", length))
    else:
        headers.append(("Content-Length", str(len(response.body))))
    lines = [f"HTTP/1.1 {status}"] + [f"{k}: {v}" for k, v in headers] + ["", ""]
    head = "\r\n".join(lines).encode("latin-1")
    return head + (b"" if head_only else response.body), len(head)


def _error(status: int, reason: str, extra: list[tuple[str, str]] | None = None) -> _Message:
    body = json.dumps(
        {"error": {"code": status, "message": f"chaos: {reason}", "errors": [{"reason": reason}]}}
    ).encode()
    headers = [("Content-Type", "application/json"), *(extra or [])]
    return _Message(f"HTTP/1.1 {status} {reason}", headers, body)


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST, not FIN: linger 0 makes the kernel drop the connection on the spot."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@dataclass
class FaultProxy:
    upstream: str
    settings: FaultSettings = field(default_factory=FaultSettings)
    seed: int | None = None
    host: str = "127.0.0.1"
    port: int = 0
    counts: Counter[FaultKind] = field(default_factory=Counter)
    requests: int = 0
    _server: asyncio.Server | None = field(default=None, repr=False)
    _clients: set[asyncio.StreamWriter] = field(default_factory=set, repr=False)
    _rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        parts = urlsplit(self.upstream)
        if parts.scheme != "http" or parts.hostname is None or parts.port is None:
            raise ValueError(f"{self.upstream}: the upstream must be http://host:port")
        self._up_host, self._up_port = parts.hostname, parts.port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def faults(self) -> int:
        return sum(self.counts.values())

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for writer in list(self._clients):
            writer.transport.abort()
        await self._server.wait_closed()
        self._server = None

    def _choose(self) -> FaultKind | None:
        settings = self.settings
        if settings.rate <= 0 or not settings.kinds or self._rng.random() >= settings.rate:
            return None
        return self._rng.choice(settings.kinds)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._clients.add(writer)
        try:
            while await self._one(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self._clients.discard(writer)
            writer.close()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; whether the connection stays open for another."""
        request = await _read_head(reader)
        if request is None:
            return False
        self.requests += 1
        fault = self._choose()
        if fault is FaultKind.RESET_REQUEST:
            length = int(request.header("content-length") or 0)
            if length > 1:
                await reader.readexactly(self._rng.randrange(1, length))
            self.counts[fault] += 1
            _reset(writer)
            return False
        request.body = await _read_body(reader, request)
        if fault is FaultKind.ERROR_503:
            self.counts[fault] += 1
            await self._send(writer, _error(503, "Service Unavailable"))
            return True
        if fault is FaultKind.THROTTLE_429:
            self.counts[fault] += 1
            retry_after = [("Retry-After", str(self.settings.retry_after_s))]
            await self._send(writer, _error(429, "Too Many Requests", retry_after))
            return True
        try:
            response = await self._forward(request)
        except (OSError, TimeoutError) as exc:
            await self._send(writer, _error(502, f"Bad Gateway ({exc})"))
            return False
        head_only = request.start.split(" ", 1)[0].upper() == "HEAD"
        data, body_at = _serialize(response, head_only=head_only)
        if fault is FaultKind.DELAY:
            self.counts[fault] += 1
            await asyncio.sleep(self._rng.uniform(*self.settings.delay_s))
        elif fault in (FaultKind.RESET_RESPONSE, FaultKind.TRUNCATE):
            self.counts[fault] += 1
            # Inside the body when there is one (a short read the client must notice), else
            # inside the head.
            cut = (
                self._rng.randrange(body_at, len(data))
                if len(data) > body_at
                else self._rng.randrange(1, body_at)
            )
            writer.write(data[:cut])
            await writer.drain()
            if fault is FaultKind.RESET_RESPONSE:
                _reset(writer)
            else:
                writer.close()
            return False
        writer.write(data)
        await writer.drain()
        return (request.header("connection") or "").lower() != "close"

    async def _send(self, writer: asyncio.StreamWriter, response: _Message) -> None:
        writer.write(_serialize(response, head_only=False)[0])
        await writer.drain()

    async def _forward(self, request: _Message) -> _Message:
        reader, writer = await asyncio.open_connection(self._up_host, self._up_port)
        received = bytearray()

        async def collect() -> None:
            # Read while the request is still being sent: an upstream may answer (the emulator's
            # 404 for a finished upload session) and close before reading a large body, and
            # what it answered is the answer, not a gateway failure.
            with contextlib.suppress(ConnectionError):
                while chunk := await reader.read(1 << 16):
                    received.extend(chunk)

        reading = asyncio.create_task(collect())
        try:
            headers = request.end_to_end()
            method = request.start.split(" ", 1)[0].upper()
            if request.body or method in ("POST", "PUT", "PATCH"):
                headers.append(("Content-Length", str(len(request.body))))
            headers.append(("Connection", "close"))
            lines = [request.start] + [f"{k}: {v}" for k, v in headers] + ["", ""]
            writer.write("\r\n".join(lines).encode("latin-1") + request.body)
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            # A stuck upstream is an upstream failure, not a proxy that hangs forever.
            await asyncio.wait_for(reading, _UPSTREAM_TIMEOUT_S)
            return _split_response(bytes(received))
        finally:
            reading.cancel()
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


class BackgroundProxy:
    """A `FaultProxy` on an event loop of its own in a daemon thread, so the proxy keeps answering
    while the caller's loop is busy (or blocked in a worker-thread join)."""

    def __init__(self, proxy: FaultProxy) -> None:
        self.proxy = proxy
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="chaos-proxy")
        self._thread.daemon = True

    def start(self) -> FaultProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.proxy.start(), self._loop).result(10)
        return self.proxy

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self.proxy.close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
