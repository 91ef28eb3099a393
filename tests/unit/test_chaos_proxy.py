"""The chaos soak's fault-injecting proxy, against a tiny upstream on loopback: each fault kind
does to a client what its table row says, and is counted once. The soak itself (`make chaos`)
runs for minutes; here it only has to import."""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator

import pytest

from tests.chaos.proxy import BackgroundProxy, FaultKind, FaultProxy, FaultSettings

pytestmark = pytest.mark.unit

BODY = b"0123456789" * 100


class Upstream:
    """Answers every request as the GCS emulator does: HTTP/1.0, Content-Length, then close."""

    def __init__(self) -> None:
        self.seen: list[bytes] = []
        self.server: asyncio.Server | None = None

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            (
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            ),
            0,
        )
        self.seen.append(head.split(b"\r\n")[0] + b" " + await reader.readexactly(length))
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % len(BODY) + BODY)
        await writer.drain()
        writer.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    up = Upstream()
    up.server = await asyncio.start_server(up.serve, "127.0.0.1", 0)
    try:
        yield up
    finally:
        up.server.close()


async def _proxy(upstream: Upstream, kind: FaultKind | None) -> FaultProxy:
    settings = FaultSettings(
        rate=0.0 if kind is None else 1.0,
        kinds=(kind,) if kind else tuple(FaultKind),
        delay_s=(0.1, 0.1),
    )
    proxy = FaultProxy(upstream.url, settings, seed=1)
    await proxy.start()
    return proxy


async def _exchange(
    proxy: FaultProxy, body: bytes = b"", requests: int = 1
) -> list[tuple[int, dict[str, str], bytes] | str]:
    """Send `requests` requests on one connection; each answer (status, headers, body) or, once
    the connection breaks, what broke it."""
    reader, writer = await asyncio.open_connection(proxy.host, proxy.port)
    out: list[tuple[int, dict[str, str], bytes] | str] = []
    try:
        for _ in range(requests):
            writer.write(b"POST /o HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body))
            writer.write(body)
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode().split("\r\n")
            headers = {
                k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:] if x)
            }
            data = await reader.readexactly(int(headers["content-length"]))
            out.append((int(lines[0].split()[1]), headers, data))
    except (ConnectionError, asyncio.IncompleteReadError) as exc:
        out.append(type(exc).__name__)
    finally:
        writer.close()
    return out


async def test_without_faults_requests_pass_through_on_one_kept_alive_connection(
    upstream: Upstream,
) -> None:
    proxy = await _proxy(upstream, None)
    try:
        answers = await _exchange(proxy, b"abc", requests=3)
    finally:
        await proxy.close()
    assert answers == [(200, {"content-length": str(len(BODY))}, BODY)] * 3
    assert upstream.seen == [b"POST /o HTTP/1.1 abc"] * 3
    assert (proxy.requests, proxy.faults) == (3, 0)


@pytest.mark.parametrize(
    ("kind", "forwarded"),
    [
        (FaultKind.ERROR_503, False),
        (FaultKind.THROTTLE_429, False),
        (FaultKind.RESET_REQUEST, False),
        (FaultKind.RESET_RESPONSE, True),
        (FaultKind.TRUNCATE, True),
        (FaultKind.DELAY, True),
    ],
)
async def test_each_fault_reaches_the_client_and_is_counted(
    upstream: Upstream, kind: FaultKind, forwarded: bool
) -> None:
    proxy = await _proxy(upstream, kind)
    started = time.monotonic()
    try:
        (answer,) = await _exchange(proxy, b"x" * 5000)
    finally:
        await proxy.close()
    assert proxy.counts == {kind: 1}
    assert bool(upstream.seen) is forwarded, "the upstream saw the request"
    if kind is FaultKind.ERROR_503:
        assert isinstance(answer, tuple)
        assert answer[0] == 503
    elif kind is FaultKind.THROTTLE_429:
        assert isinstance(answer, tuple)
        assert answer[0] == 429
        assert answer[1]["retry-after"] == "1"
    elif kind is FaultKind.DELAY:
        assert answer == (200, {"content-length": str(len(BODY))}, BODY)
        assert time.monotonic() - started >= 0.1
    else:
        # A broken connection: reset, or a short read against the announced length.
        assert answer in ("ConnectionResetError", "IncompleteReadError"), answer


def test_the_background_proxy_answers_from_its_own_thread_and_stops(upstream: Upstream) -> None:
    # Only the proxy's construction is shared with the async tests; the loop here is its own.
    proxy = FaultProxy("http://127.0.0.1:9", FaultSettings(rate=1.0, kinds=(FaultKind.ERROR_503,)))
    with BackgroundProxy(proxy) as running:
        assert running.port != 0
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{running.url}/x", timeout=5)  # noqa: S310 (loopback)
        assert refused.value.code == 503
        refused.value.close()
    assert proxy.counts == {FaultKind.ERROR_503: 1}


def test_the_soak_imports_and_reads_its_settings_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tests.chaos.__main__ import settings_from_env

    for name in ("CHAOS_MINUTES", "CHAOS_RESTORES", "CHAOS_SEED", "CHAOS_KEEP"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CHAOS_RESTORES", "3")
    monkeypatch.setenv("CHAOS_SEED", "42")
    got = settings_from_env()
    assert (got.minutes, got.restores, got.seed, got.keep) == (5.0, 3, 42, False)


async def test_an_answer_sent_before_the_body_was_read_is_relayed_not_turned_into_a_502() -> None:
    # The emulator answers a PUT to a finished upload session with 404 and closes without
    # reading the chunk; the client must see that 404, as it would from GCS, not a gateway error.
    async def early(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(early, "127.0.0.1", 0)
    proxy = FaultProxy(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}")
    await proxy.start()
    try:
        (answer,) = await _exchange(proxy, b"x" * (8 << 20))
    finally:
        await proxy.close()
        server.close()
    assert isinstance(answer, tuple)
    assert answer[0] == 404
