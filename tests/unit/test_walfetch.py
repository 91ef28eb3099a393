"""wal-fetch (PostgreSQL's restore_command) against an in-process socket server, and the fetch
server against the in-memory store: OK, MISSING and ERROR answers, atomic writes, name-to-key
mapping, prefetch and verification."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import zstandard

from services.blobstore import MemoryStore, crc32c_of_bytes
from services.engines.postgres import walfetch
from services.engines.postgres.fetchserver import FetchServer, serve_wal, wal_key
from services.engines.postgres.oscmd import check_stdlib_only
from tests.doubles.wal_segments import SEGMENT_SIZE, segment_bytes, segment_name

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def scripted(path: Path, handler: Handler) -> AsyncIterator[list[bytes]]:
    """A unix socket server answering with ``handler``; yields the request lines it got."""
    requests: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        requests.append(await reader.readline())
        try:
            await handler(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_unix_server(handle, path=str(path))
    try:
        yield requests
    finally:
        server.close()
        await server.wait_closed()


def answer(data: bytes) -> Handler:
    async def handler(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(data)
        await writer.drain()

    return handler


async def run_fetch(sock: Path, name: str, dest: Path) -> int:
    return await asyncio.to_thread(walfetch.main, ["--socket", str(sock), name, str(dest)])


@pytest.fixture
def sock(tmp_path: Path) -> Path:
    return tmp_path / "f.sock"


NAME = "000000010000000000000003"


async def test_ok_writes_the_file_atomically_beside_the_destination(
    sock: Path, tmp_path: Path
) -> None:
    body = os.urandom(300_000)
    dest = tmp_path / "pg_wal" / "RECOVERYXLOG"
    dest.parent.mkdir()
    async with scripted(sock, answer(b"OK %d\n" % len(body) + body)) as requests:
        assert await run_fetch(sock, NAME, dest) == walfetch.EXIT_OK
    assert requests == [f"FETCH {NAME}\n".encode()]
    assert dest.read_bytes() == body
    assert os.listdir(dest.parent) == ["RECOVERYXLOG"], "no temporary file left behind"


async def test_missing_exits_1_and_writes_nothing(sock: Path, tmp_path: Path) -> None:
    dest = tmp_path / "RECOVERYXLOG"
    async with scripted(sock, answer(b"MISSING\n")):
        assert await run_fetch(sock, "00000002.history", dest) == walfetch.EXIT_MISSING
    assert not dest.exists()


async def test_error_exits_2_with_the_reason_on_stderr(
    sock: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    dest = tmp_path / "RECOVERYXLOG"
    async with scripted(sock, answer(b"ERROR store unreachable: 503\n")):
        assert await run_fetch(sock, NAME, dest) == walfetch.EXIT_ERROR
    assert "store unreachable: 503" in capfd.readouterr().err
    assert not dest.exists()


async def test_a_short_transfer_leaves_the_previous_file_untouched(
    sock: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    dest = tmp_path / "RECOVERYXLOG"
    dest.write_bytes(b"previous")
    async with scripted(sock, answer(b"OK 1000\n" + b"x" * 400)):
        assert await run_fetch(sock, NAME, dest) == walfetch.EXIT_ERROR
    assert "after 400 of 1000 bytes" in capfd.readouterr().err
    assert dest.read_bytes() == b"previous"
    assert sorted(os.listdir(tmp_path)) == ["RECOVERYXLOG", "f.sock"]


async def test_more_bytes_than_announced_is_an_error(sock: Path, tmp_path: Path) -> None:
    dest = tmp_path / "RECOVERYXLOG"
    async with scripted(sock, answer(b"OK 3\nabcdef")):
        assert await run_fetch(sock, NAME, dest) == walfetch.EXIT_ERROR
    assert not dest.exists()


@pytest.mark.parametrize("reply", [b"", b"HELLO\n", b"OK many\n"])
async def test_garbled_answers_are_errors(sock: Path, tmp_path: Path, reply: bytes) -> None:
    async with scripted(sock, answer(reply)):
        assert await run_fetch(sock, NAME, tmp_path / "x") == walfetch.EXIT_ERROR


async def test_no_server_is_an_error(sock: Path, tmp_path: Path) -> None:
    assert await run_fetch(sock, NAME, tmp_path / "x") == walfetch.EXIT_ERROR


def test_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    assert walfetch.parse_args(["--socket", "/s", NAME, "p"]) == ("/s", NAME, "p")
    assert walfetch.parse_args([NAME, "p", "--socket=/s"]) == ("/s", NAME, "p")
    monkeypatch.setenv(walfetch.SOCKET_ENV, "/env.sock")
    assert walfetch.parse_args([NAME, "p"]) == ("/env.sock", NAME, "p")
    for bad in ([NAME], ["--socket", "/s", "a b\nFETCH x", "p"], ["--socket", "/s", "../x", "p"]):
        with pytest.raises(walfetch.Failed):
            walfetch.parse_args(bad)


def test_walfetch_is_standard_library_only() -> None:
    source = Path(walfetch.__file__).read_text(encoding="utf-8")
    assert check_stdlib_only(source) <= {"__future__", "_socket", "posix", "sys"}


# -- the fetch server ----------------------------------------------------------------------------

UID = "db1"


def test_names_map_to_the_archivers_keys() -> None:
    assert wal_key("p", UID, NAME) == f"p/{UID}/tl-00000001/logs/1/{NAME}"
    assert wal_key("", UID, "0000000A.history") == f"{UID}/tl-0000000A/history/0000000A.history"
    assert wal_key("p", UID, NAME + ".partial") is None


async def put_wal(store: MemoryStore, name: str, data: bytes, *, zstd: bool = False) -> str:
    key = wal_key("p", UID, name)
    assert key is not None
    stored = zstandard.ZstdCompressor().compress(data) if zstd else data
    metadata = {
        "crc32c": crc32c_of_bytes(data),
        "size": str(len(data)),
        "compression": "zstd" if zstd else "none",
    }
    await store.put_stream(key, stored, metadata)
    return key


@contextlib.asynccontextmanager
async def fetch_server(
    store: MemoryStore, tmp_path: Path, prefetch: int = 2
) -> AsyncIterator[FetchServer]:
    async with serve_wal(
        store,
        prefix="p",
        uid=UID,
        socket_path=tmp_path / "fetch.sock",
        cache_dir=tmp_path / "cache",
        prefetch=prefetch,
    ) as server:
        yield server


async def test_server_serves_segments_and_history_and_prefetches(tmp_path: Path) -> None:
    store = MemoryStore()
    segments = {n: segment_bytes(1, n) for n in range(3, 8)}
    for number, data in segments.items():
        await put_wal(store, segment_name(1, number), data, zstd=number % 2 == 0)
    history = b"1\t0/5000000\tno recovery target specified\n"
    await put_wal(store, "00000002.history", history)

    async with fetch_server(store, tmp_path) as server:
        sock = server.socket_path
        assert os.stat(sock).st_mode & 0o777 == 0o600
        dest = tmp_path / "RECOVERYXLOG"
        for number in range(3, 8):
            assert await run_fetch(sock, segment_name(1, number), dest) == 0
            assert dest.read_bytes() == segments[number]
        assert await run_fetch(sock, segment_name(1, 8), dest) == walfetch.EXIT_MISSING
        assert await run_fetch(sock, "00000002.history", dest) == 0
        assert dest.read_bytes() == history
        assert await run_fetch(sock, "00000003.history", dest) == walfetch.EXIT_MISSING
        assert await run_fetch(sock, NAME + ".partial", dest) == walfetch.EXIT_MISSING

        stats = server.stats
        assert (stats.served, stats.errors, stats.missing) == (6, 0, 3)
        assert stats.prefetch_hits >= 3, "segments after the first came from the prefetch"
        assert stats.served_bytes == 5 * SEGMENT_SIZE + len(history)
        assert stats.fetch_mib_s > 0
    assert not any((tmp_path / "cache").iterdir()), "the cache holds nothing after the restore"


async def test_a_corrupt_log_is_an_error_never_missing(tmp_path: Path) -> None:
    store = MemoryStore()
    data = segment_bytes(1, 3)
    key = wal_key("p", UID, segment_name(1, 3))
    assert key is not None
    # Stored intact as an object, but its metadata describes other bytes: a wrong log.
    await store.put_stream(key, data, {"crc32c": crc32c_of_bytes(b"other"), "size": str(len(data))})
    async with fetch_server(store, tmp_path) as server:
        dest = tmp_path / "RECOVERYXLOG"
        assert await run_fetch(server.socket_path, segment_name(1, 3), dest) == 2
        assert server.stats.errors == 1
        assert "crc32c" in server.stats.last_error
    assert not dest.exists()


async def test_bad_requests_are_errors(tmp_path: Path) -> None:
    async with fetch_server(MemoryStore(), tmp_path) as server:
        for line in (b"GET x\n", b"FETCH not-a-wal-name\n"):
            reader, writer = await asyncio.open_unix_connection(str(server.socket_path))
            writer.write(line)
            assert (await reader.readline()).startswith(b"ERROR ")
            writer.close()
        assert server.stats.errors == 2
