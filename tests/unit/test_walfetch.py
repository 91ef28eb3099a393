"""wal-fetch (PostgreSQL's restore_command) against an in-process socket server, and the fetch
server against the in-memory store: READY, OK, MISSING and ERROR answers, atomic writes,
name-to-key mapping, prefetch and verification, files taken from the cache by restore_command."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import zstandard

from services.blobstore import MemoryStore, crc32c_of_bytes
from services.engines.postgres import fetchserver, walfetch
from services.engines.postgres.fetchserver import FetchServer, serve_wal, wal_key
from services.engines.postgres.oscmd import check_stdlib_only
from services.engines.postgres.recovery_conf import FetchRig
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
    # Built-in modules only (no file to find and load): every import is start-up time.
    assert check_stdlib_only(source) <= {"__future__", "_socket", "posix", "sys", "time"}


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


# -- READY: a verified file handed over by rename ------------------------------------------------

OTHER_FS = Path("/dev/shm")  # tmpfs: usually another filesystem than tmp_path's


def other_filesystem(tmp_path: Path) -> Path:
    if not OTHER_FS.is_dir() or OTHER_FS.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip(f"{OTHER_FS} is not another filesystem here")
    return OTHER_FS


async def test_ready_renames_the_servers_file_into_place(sock: Path, tmp_path: Path) -> None:
    body = os.urandom(300_000)
    ready = tmp_path / "cache" / NAME
    ready.parent.mkdir()
    ready.write_bytes(body)
    dest = tmp_path / "pg_wal" / "RECOVERYXLOG"
    dest.parent.mkdir()
    async with scripted(sock, answer(b"READY %d %s\n" % (len(body), bytes(ready)))):
        assert await run_fetch(sock, NAME, dest) == walfetch.EXIT_OK
    assert dest.read_bytes() == body
    assert not ready.exists(), "moved, not copied"
    assert os.listdir(dest.parent) == ["RECOVERYXLOG"]


async def test_ready_with_another_size_is_an_error(
    sock: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    ready = tmp_path / NAME
    ready.write_bytes(b"x" * 100)
    dest = tmp_path / "RECOVERYXLOG"
    dest.write_bytes(b"previous")
    async with scripted(sock, answer(b"READY 1000 %s\n" % bytes(ready))):
        assert await run_fetch(sock, NAME, dest) == walfetch.EXIT_ERROR
    assert "is 100 bytes, not 1000" in capfd.readouterr().err
    assert dest.read_bytes() == b"previous"


@pytest.mark.parametrize("reply", [b"READY 3\n", b"READY 3 relative/path\n", b"READY x /p\n"])
async def test_garbled_ready_answers_are_errors(sock: Path, tmp_path: Path, reply: bytes) -> None:
    async with scripted(sock, answer(reply)):
        assert await run_fetch(sock, NAME, tmp_path / "x") == walfetch.EXIT_ERROR
    assert not (tmp_path / "x").exists()


async def test_ready_across_filesystems_is_copied(sock: Path, tmp_path: Path) -> None:
    body = os.urandom(300_000)
    ready = other_filesystem(tmp_path) / f"tidemark-test-{os.getpid()}-{NAME}"
    ready.write_bytes(body)
    dest = tmp_path / "RECOVERYXLOG"
    try:
        async with scripted(sock, answer(b"READY %d %s\n" % (len(body), bytes(ready)))):
            assert await run_fetch(sock, NAME, dest) == walfetch.EXIT_OK
    finally:
        leftover = ready.exists()
        ready.unlink(missing_ok=True)
    assert dest.read_bytes() == body
    assert not leftover, "the server's file is removed once copied"
    assert sorted(os.listdir(tmp_path)) == ["RECOVERYXLOG", "f.sock"]


@contextlib.asynccontextmanager
async def handing_server(
    store: MemoryStore, tmp_path: Path, pg_wal: Path, prefetch: int = 2
) -> AsyncIterator[FetchServer]:
    pg_wal.mkdir(exist_ok=True)
    async with serve_wal(
        store,
        prefix="p",
        uid=UID,
        socket_path=tmp_path / "fetch.sock",
        cache_dir=tmp_path / "cache",
        prefetch=prefetch,
        hand_over_to=pg_wal,
    ) as server:
        yield server


async def test_server_hands_verified_segments_over_by_rename(tmp_path: Path) -> None:
    store = MemoryStore()
    segments = {n: segment_bytes(1, n) for n in range(3, 8)}
    for number, data in segments.items():
        await put_wal(store, segment_name(1, number), data, zstd=number % 2 == 0)
    pg_wal = tmp_path / "pg_wal"
    async with handing_server(store, tmp_path, pg_wal) as server:
        assert server.hands_over
        dest = pg_wal / "RECOVERYXLOG"
        for number in range(3, 8):
            assert await run_fetch(server.socket_path, segment_name(1, number), dest) == 0
            assert dest.read_bytes() == segments[number]
            assert dest.stat().st_mode & 0o777 == 0o600
        assert (server.stats.served, server.stats.handed_over) == (5, 5)
        assert server.stats.prefetch_hits >= 3
        assert server.stats.answer_seconds >= server.stats.waited_seconds > 0
        assert (tmp_path / "cache").stat().st_mode & 0o777 == 0o700
    assert not any((tmp_path / "cache").iterdir()), "prefetched files are removed at the end"


async def test_server_streams_when_pg_wal_is_on_another_filesystem(tmp_path: Path) -> None:
    store = MemoryStore()
    data = segment_bytes(1, 3)
    await put_wal(store, segment_name(1, 3), data, zstd=True)
    elsewhere = other_filesystem(tmp_path) / f"tidemark-test-{os.getpid()}"
    try:
        async with handing_server(store, tmp_path, elsewhere) as server:
            assert not server.hands_over
            dest = tmp_path / "RECOVERYXLOG"
            assert await run_fetch(server.socket_path, segment_name(1, 3), dest) == 0
            assert dest.read_bytes() == data
            assert (server.stats.served, server.stats.handed_over) == (1, 0)
    finally:
        elsewhere.rmdir()


async def test_a_prefetched_file_that_fails_verification_is_never_offered(
    tmp_path: Path,
) -> None:
    store = MemoryStore()
    good, bad = segment_bytes(1, 3), segment_bytes(1, 4)
    await put_wal(store, segment_name(1, 3), good)
    key = wal_key("p", UID, segment_name(1, 4))
    assert key is not None
    # An intact object whose metadata describes other bytes: the wrong log under that name.
    await store.put_stream(key, bad, {"crc32c": crc32c_of_bytes(b"other"), "size": str(len(bad))})
    pg_wal = tmp_path / "pg_wal"
    async with handing_server(store, tmp_path, pg_wal) as server:
        dest = pg_wal / "RECOVERYXLOG"
        assert await run_fetch(server.socket_path, segment_name(1, 3), dest) == 0
        # Let the prefetch of segment 4 finish (and fail) before looking.
        await asyncio.gather(*server._tasks.values(), return_exceptions=True)
        assert os.listdir(tmp_path / "cache") == [], "no file, final or temporary, for it"
        assert await run_fetch(server.socket_path, segment_name(1, 4), dest) == 2
        assert dest.read_bytes() == good, "PostgreSQL's file is left as it was"
        assert (server.stats.handed_over, server.stats.errors) == (1, 1)
        assert "crc32c" in server.stats.last_error


async def test_a_file_handed_over_and_not_taken_is_removed_at_the_next_request(
    tmp_path: Path,
) -> None:
    store = MemoryStore()
    for number in (3, 4):
        await put_wal(store, segment_name(1, number), segment_bytes(1, number))
    async with handing_server(store, tmp_path, tmp_path / "pg_wal", prefetch=0) as server:
        reader, writer = await asyncio.open_unix_connection(str(server.socket_path))
        writer.write(f"FETCH {segment_name(1, 3)}\n".encode())
        verb, size, path = (await reader.readline()).decode().split()
        writer.close()
        assert (verb, int(size)) == ("READY", SEGMENT_SIZE)
        assert Path(path).exists()  # a client that died before its rename
        dest = tmp_path / "pg_wal" / "RECOVERYXLOG"
        assert await run_fetch(server.socket_path, segment_name(1, 4), dest) == 0
        assert not Path(path).exists()
        assert os.listdir(tmp_path / "cache") == []


def test_smaller_segments_are_fetched_deeper_for_the_same_bytes() -> None:
    server = FetchServer(
        MemoryStore(),
        prefix="p",
        uid=UID,
        socket_path=Path("unused"),
        cache_dir=Path("unused"),
        prefetch=4,
    )
    assert server.depth(16 << 20) == 4
    assert server.depth(64 << 20) == 4
    assert server.depth(4 << 20) == 16
    assert server.depth(1 << 20) == 64
    server.prefetch = 0
    assert server.depth(1 << 20) == 0


async def test_a_prefetched_file_taken_without_asking_moves_the_window_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A window of one 1 MiB segment: each one after the first is fetched only once the one
    # before it was seen taken.
    monkeypatch.setattr(fetchserver, "DEPTH_UNIT", SEGMENT_SIZE)
    store = MemoryStore()
    segments = {n: segment_bytes(1, n) for n in range(3, 9)}
    for number, data in segments.items():
        await put_wal(store, segment_name(1, number), data, zstd=True)
    pg_wal = tmp_path / "pg_wal"
    async with handing_server(store, tmp_path, pg_wal, prefetch=1) as server:
        assert server.depth(SEGMENT_SIZE) == 1
        dest = pg_wal / "RECOVERYXLOG"
        assert await run_fetch(server.socket_path, segment_name(1, 3), dest) == 0
        for number in range(4, 9):
            # What restore_command's ``mv <cache>/%f %p`` does, once the file is there.
            ready = tmp_path / "cache" / segment_name(1, number)
            for _ in range(500):
                if ready.exists():
                    break
                await asyncio.sleep(0.01)
            os.rename(ready, dest)
            assert dest.read_bytes() == segments[number]
        stats = server.stats
        for _ in range(500):  # the server looks every TAKEN_POLL_S
            if stats.served == 6:
                break
            await asyncio.sleep(0.01)
        assert (stats.served, stats.handed_over, stats.taken) == (6, 1, 5)
        assert stats.served_bytes == 6 * SEGMENT_SIZE
    assert not any((tmp_path / "cache").iterdir())


def test_restore_command_tries_the_cache_first_and_quotes_it(tmp_path: Path) -> None:
    cache = tmp_path / "it's 100% .tidemark-wal-x"
    cache.mkdir()
    rig = FetchRig(tmp_path / "run", cache, tmp_path / "run" / "bin" / "wal-fetch")
    assert rig.restore_command() == f"{rig.tool} --socket {rig.socket_path} %f %p"
    command = rig.restore_command(take_ready=True)
    (cache / NAME).write_bytes(b"verified")
    dest = tmp_path / "RECOVERYXLOG"
    # PostgreSQL's substitution, then /bin/sh, as for any restore_command.
    shell = command.replace("%f", NAME).replace("%p", str(dest)).replace("%%", "%")
    assert subprocess.run(["/bin/sh", "-c", shell], check=False).returncode == 0
    assert dest.read_bytes() == b"verified"
    assert not (cache / NAME).exists()
