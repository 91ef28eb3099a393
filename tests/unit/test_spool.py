"""The spool: walpush (the writer PostgreSQL runs) and Spool (the archiver's side).

walpush runs in-process here, on small files in a temporary directory; the real thing, run by
PostgreSQL as its OS user, is in tests/integration/test_walpush.py.
"""

from __future__ import annotations

import ast
import json
import os
import re
import socket
import stat
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.engines.postgres import walpush
from services.engines.postgres.oscmd import check_stdlib_only
from services.engines.postgres.spool import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MIN_FREE_BYTES,
    DEFAULT_READAHEAD_WAIT_S,
    DIR_MODE,
    WALPUSH_SOURCE,
    ReadAheadLock,
    Spool,
    SpoolConfig,
    SpoolError,
    SpoolUsage,
)
from services.engines.postgres.walfile import WalFileKind, WalNameError, classify

pytestmark = pytest.mark.unit

SEGMENT = "000000010000000000000001"
DOCS = Path(__file__).parents[2] / "docs" / "archiving-postgres.md"


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    made = Spool(tmp_path / "spool")
    made.init("orders-db", max_bytes=1 << 20, min_free_bytes=0)
    return made


def wal_file(directory: Path, name: str = SEGMENT, data: bytes = b"segment bytes") -> Path:
    directory.mkdir(exist_ok=True)
    path = directory / name
    path.write_bytes(data)
    return path


def push(spool: Spool, source: Path) -> int:
    return walpush.main(["--spool", str(spool.path), str(source)])


# -- walpush: the program itself ----------------------------------------------------------------


def imports_of(tree: ast.AST) -> set[str]:
    """Every module an AST imports, by statement or by a literal __import__/import_module call."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "walpush runs as a lone file: no relative imports"
            found.add(node.module or "")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name | ast.Attribute):
            called = node.func.id if isinstance(node.func, ast.Name) else node.func.attr
            if called in ("__import__", "import_module") and node.args:
                arg = node.args[0]
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    found.add(arg.value)
                else:
                    found.add("<dynamic>")
    return found


def test_walpush_imports_only_the_standard_library() -> None:
    source = WALPUSH_SOURCE.read_text(encoding="utf-8")
    modules = imports_of(ast.parse(source))
    tops = {module.partition(".")[0] for module in modules}
    assert "<dynamic>" not in tops
    foreign = sorted(m for m in tops if m not in sys.stdlib_module_names and m != "__future__")
    assert not foreign, f"walpush.py must import the standard library only, found {foreign}"
    assert not tops & {"services", "schemas", "tests", "bench"}
    check_stdlib_only(source, str(WALPUSH_SOURCE))  # what install_user_tool will check
    # Distribution interpreters as old as install_user_tool accepts must parse it.
    ast.parse(source, feature_version=(3, 9))


def test_the_import_scan_sees_every_form() -> None:
    tree = ast.parse(
        "import os, json.decoder\nfrom services.bus import x\n"
        "__import__('pydantic')\nimportlib.import_module(name)\n"
    )
    assert imports_of(tree) == {"os", "json.decoder", "services.bus", "pydantic", "<dynamic>"}


def test_walpush_defaults_are_the_contract() -> None:
    assert walpush.DEFAULT_MAX_BYTES == DEFAULT_MAX_BYTES == 8 * 1024**3
    assert walpush.DEFAULT_MIN_FREE_BYTES == DEFAULT_MIN_FREE_BYTES == 256 * 1024**2


def test_push_copies_into_ready_and_leaves_nothing_in_tmp(spool: Spool, tmp_path: Path) -> None:
    source = wal_file(tmp_path / "pg_wal", data=os.urandom(300_000))
    assert push(spool, source) == walpush.EXIT_OK
    copy = spool.ready_dir / SEGMENT
    assert copy.read_bytes() == source.read_bytes()
    assert stat.S_IMODE(copy.stat().st_mode) == walpush.FILE_MODE
    assert copy.stat().st_nlink == 1
    assert list(spool.tmp_dir.iterdir()) == []


def test_identical_repush_succeeds(spool: Spool, tmp_path: Path) -> None:
    source = wal_file(tmp_path / "pg_wal")
    assert push(spool, source) == walpush.EXIT_OK
    # PostgreSQL re-archives after a crash: same bytes, same answer, nothing rewritten.
    before = (spool.ready_dir / SEGMENT).stat()
    assert push(spool, source) == walpush.EXIT_OK
    assert (spool.ready_dir / SEGMENT).stat().st_ino == before.st_ino


def test_identical_repush_succeeds_even_when_full(spool: Spool, tmp_path: Path) -> None:
    source = wal_file(tmp_path / "pg_wal")
    assert push(spool, source) == walpush.EXIT_OK
    spool.init("orders-db", max_bytes=0, min_free_bytes=0)
    assert push(spool, source) == walpush.EXIT_OK


@pytest.mark.parametrize("other", [b"segment BYTES", b"segment bytes, longer", b""])
def test_conflicting_repush_fails_loudly_and_keeps_the_first(
    spool: Spool, tmp_path: Path, other: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    assert push(spool, wal_file(tmp_path / "pg_wal")) == walpush.EXIT_OK
    capsys.readouterr()
    assert push(spool, wal_file(tmp_path / "other", data=other)) == walpush.EXIT_NOT_ARCHIVED
    assert "REFUSING to overwrite" in capsys.readouterr().err
    assert (spool.ready_dir / SEGMENT).read_bytes() == b"segment bytes"
    assert list(spool.tmp_dir.iterdir()) == []


def test_full_spool_refuses_and_says_postgresql_retries(
    spool: Spool, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spool.init("orders-db", max_bytes=25, min_free_bytes=0)
    assert push(spool, wal_file(tmp_path / "pg_wal", data=b"x" * 20)) == walpush.EXIT_OK
    second = wal_file(tmp_path / "pg_wal", "000000010000000000000002", b"y" * 20)
    assert push(spool, second) == walpush.EXIT_NOT_ARCHIVED
    err = capsys.readouterr().err
    assert "is full" in err
    assert "max_bytes 25" in err
    assert "PostgreSQL keeps the segment" in err
    assert not (spool.ready_dir / second.name).exists()
    assert list(spool.tmp_dir.iterdir()) == []
    # The archiver ships and releases the first: now there is room.
    assert spool.release(SEGMENT)
    assert push(spool, second) == walpush.EXIT_OK


def test_filesystem_free_space_floor(
    spool: Spool, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spool.init("orders-db", max_bytes=1 << 20, min_free_bytes=1 << 62)
    assert push(spool, wal_file(tmp_path / "pg_wal")) == walpush.EXIT_NOT_ARCHIVED
    assert "min_free_bytes" in capsys.readouterr().err


def test_missing_spool_json_means_the_defaults(spool: Spool, tmp_path: Path) -> None:
    spool.config_path.unlink()
    assert walpush.read_config(str(spool.path)) == (
        DEFAULT_MAX_BYTES,
        DEFAULT_MIN_FREE_BYTES,
        DEFAULT_READAHEAD_WAIT_S,
    )
    assert spool.config() == SpoolConfig(None)
    assert push(spool, wal_file(tmp_path / "pg_wal")) == walpush.EXIT_OK


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ("{not json", "not valid JSON"),
        ('{"format": 1} trailing', "not valid JSON"),
        ('{"format": 2, "max_bytes": 1}', "not a format 1"),
        ("[1]", "not a format 1"),
        ('{"format": 1, "max_bytes": -1}', "max_bytes must be a non-negative integer"),
        ('{"format": 1, "max_bytes": 1e9}', "max_bytes must be a non-negative integer"),
        ('{"format": 1, "min_free_bytes": true}', "min_free_bytes must be"),
        ('{"format": 1, "readahead_wait_s": -1}', "readahead_wait_s must be"),
        ('{"format": 1, "readahead_wait_s": "5"}', "readahead_wait_s must be"),
    ],
)
def test_bad_spool_json_refuses(
    spool: Spool, tmp_path: Path, config: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    spool.config_path.write_text(config)
    assert push(spool, wal_file(tmp_path / "pg_wal")) == walpush.EXIT_NOT_ARCHIVED
    assert message in capsys.readouterr().err
    with pytest.raises(SpoolError):
        spool.config()


@pytest.mark.parametrize(
    "text",
    [
        '{"format": 1, "database_uid": "orders-db", "max_bytes": 8589934592}',
        ' \n{"a": "\\u00e9\\"", "b": [1, 2.5, null, true, false], "c": {"d": -3}}\n',
        '"just a string"',
        "12",
    ],
)
def test_walpush_json_reader_agrees_with_json(text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    assert walpush._load_json(text) == json.loads(text)
    monkeypatch.setitem(sys.modules, "_json", None)  # an interpreter without the C scanner
    assert walpush._load_json(text) == json.loads(text)


def test_uninitialised_spool_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = wal_file(tmp_path / "pg_wal")
    assert push(Spool(tmp_path / "nowhere"), source) == walpush.EXIT_NOT_ARCHIVED
    assert "not an initialised spool" in capsys.readouterr().err
    assert not (tmp_path / "nowhere").exists()


def test_io_error_is_a_retry_with_the_reason(
    spool: Spool, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "pg_wal" / SEGMENT
    assert push(spool, missing) == walpush.EXIT_NOT_ARCHIVED
    err = capsys.readouterr().err
    assert "No such file or directory" in err
    assert "PostgreSQL will retry" in err


@pytest.mark.parametrize(
    "name",
    ["notes.txt", "000000010000000000000001.ready", "0000000100000000000000ab", "00000000.history"],
)
def test_bad_names_are_usage_errors(
    spool: Spool, tmp_path: Path, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert push(spool, wal_file(tmp_path / "pg_wal", name)) == walpush.EXIT_USAGE
    assert "not a WAL file name" in capsys.readouterr().err
    assert list(spool.ready_dir.iterdir()) == []


@pytest.mark.parametrize(
    "argv",
    [[], ["--spool"], ["--spool", "/s"], ["/s", "x"], ["--spool", "/s", "a", "b"], ["-x", "a"]],
)
def test_usage_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert walpush.main(argv) == walpush.EXIT_USAGE
    assert "usage: walpush" in capsys.readouterr().err


def test_spool_equals_form(spool: Spool, tmp_path: Path) -> None:
    source = wal_file(tmp_path / "pg_wal")
    assert walpush.main([f"--spool={spool.path}", str(source)]) == walpush.EXIT_OK


@pytest.mark.parametrize(
    "name",
    [
        SEGMENT,
        "000000010000000000000003.partial",
        "00000002.history",
        "000000010000000000000002.00000028.backup",
    ],
)
def test_every_kind_is_pushed(spool: Spool, tmp_path: Path, name: str) -> None:
    assert push(spool, wal_file(tmp_path / "pg_wal", name)) == walpush.EXIT_OK
    assert [f.name for f in spool.ready_files()] == [name]


_NAME_PIECES = st.sampled_from(
    ["00000001", "00000000", "0000000A", "0000000a", "FFFFFFFF", "0000001", "000000010"]
)
_SUFFIXES = st.sampled_from(
    ["", ".partial", ".history", ".backup", ".00000028.backup", ".0000028.backup", ".", ".ready"]
)


@given(st.lists(_NAME_PIECES, min_size=1, max_size=3).map("".join), _SUFFIXES)
def test_walpush_and_walfile_agree_on_names(stem: str, suffix: str) -> None:
    name = stem + suffix
    assert walpush.is_wal_file_name(name) == (classify(name) is not None), name


@given(st.text(max_size=45))
def test_walpush_and_walfile_agree_on_any_text(name: str) -> None:
    assert walpush.is_wal_file_name(name) == (classify(name) is not None)


def test_stale_copies_of_dead_writers_are_removed(spool: Spool, tmp_path: Path) -> None:
    dead_pid = 2**22 + 1  # above Linux's PID_MAX_LIMIT: no process can have it
    stale = spool.tmp_dir / f"{SEGMENT}.{dead_pid}.0badc0de"
    alive = spool.tmp_dir / f"{SEGMENT}.{os.getppid()}.0badc0de"  # an in-flight copy
    for path in (stale, alive):
        path.write_bytes(b"half a segment")
    assert push(spool, wal_file(tmp_path / "pg_wal", "000000010000000000000002")) == 0
    assert not stale.exists()
    assert alive.exists()


def test_notify_without_a_listener_is_harmless(spool: Spool, tmp_path: Path) -> None:
    spool.notify_socket_path.write_bytes(b"")  # not even a socket
    assert push(spool, wal_file(tmp_path / "pg_wal")) == walpush.EXIT_OK


# -- walpush and read-ahead: the archiver stored the file first ------------------------------------


def identity(path: Path) -> tuple[int, int, int, int, int]:
    st = path.stat()
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def datagrams(sock: socket.socket) -> list[bytes]:
    got = []
    while True:
        try:
            got.append(sock.recv(4096))
        except BlockingIOError:
            return got


@pytest.fixture
def listener(spool: Spool) -> Iterator[socket.socket]:
    sock = spool.bind_notify_socket()
    sock.setblocking(False)
    yield sock
    sock.close()


def test_a_file_the_store_holds_is_acknowledged_without_a_copy(
    spool: Spool, tmp_path: Path, listener: socket.socket
) -> None:
    source = wal_file(tmp_path / "pg_wal", data=os.urandom(300_000))
    spool.mark_stored(SEGMENT, identity(source), crc32c="AAAAAA==", key="db/tl/logs/1/x")
    assert push(spool, source) == walpush.EXIT_OK
    assert spool.ready_files() == [], "nothing copied"
    assert datagrams(listener) == [], "the archiver stored it: nothing to tell"


@pytest.mark.parametrize("change", ["rewritten", "replaced", "chmod", "torn", "declined"])
def test_a_marker_for_any_other_file_is_not_trusted(
    spool: Spool, tmp_path: Path, change: str
) -> None:
    source = wal_file(tmp_path / "pg_wal", data=b"A" * 1000)
    spool.mark_stored(SEGMENT, identity(source), crc32c="AAAAAA==", key="k")
    if change == "rewritten":  # same inode and size, other bytes
        time.sleep(0.01)
        with open(source, "r+b") as handle:
            handle.write(b"B")
    elif change == "replaced":  # another inode under the name
        source.unlink()
        wal_file(tmp_path / "pg_wal", data=b"A" * 1000)
    elif change == "chmod":
        time.sleep(0.01)
        source.chmod(0o600)
    elif change == "torn":  # a power cut: markers are not fsynced
        (spool.stored_dir / SEGMENT).write_bytes(b'{"format": 1, "na')
    else:
        spool.decline(SEGMENT, "conflicting checksum")
    assert push(spool, source) == walpush.EXIT_OK
    assert (spool.ready_dir / SEGMENT).read_bytes() == source.read_bytes(), "copied as usual"


def test_while_the_archiver_reads_ahead_walpush_waits_for_its_marker(
    spool: Spool, tmp_path: Path, listener: socket.socket
) -> None:
    source = wal_file(tmp_path / "pg_wal", data=os.urandom(100_000))
    lock = ReadAheadLock(spool.readahead_lock_path)
    assert lock.acquire()
    store = threading.Timer(
        0.2, lambda: spool.mark_stored(SEGMENT, identity(source), crc32c="x", key="k")
    )
    start = time.monotonic()
    store.start()
    try:
        assert push(spool, source) == walpush.EXIT_OK
    finally:
        store.join()
        lock.release()
    assert 0.2 <= time.monotonic() - start < 5
    assert spool.ready_files() == [], "acknowledged by the marker, not by a copy"
    assert datagrams(listener) == [f"?{SEGMENT}".encode()], "told the archiver it waits"


def test_without_the_lock_walpush_copies_at_once(spool: Spool, tmp_path: Path) -> None:
    spool.init("orders-db", max_bytes=1 << 20, min_free_bytes=0, readahead_wait_s=30)
    source = wal_file(tmp_path / "pg_wal")
    start = time.monotonic()
    assert push(spool, source) == walpush.EXIT_OK
    assert time.monotonic() - start < 5, "no archiver reading ahead: no wait"
    assert [f.name for f in spool.ready_files()] == [SEGMENT]


@pytest.mark.parametrize("ending", ["timeout", "lock_released", "declined"])
def test_a_wait_that_ends_without_the_store_is_a_copy(
    spool: Spool, tmp_path: Path, ending: str
) -> None:
    spool.init("orders-db", max_bytes=1 << 20, min_free_bytes=0, readahead_wait_s=0.3)
    source = wal_file(tmp_path / "pg_wal")
    lock = ReadAheadLock(spool.readahead_lock_path)
    assert lock.acquire()
    actions = {
        "timeout": lambda: None,
        "lock_released": lock.release,  # the archiver died, or its store failed
        "declined": lambda: spool.decline(SEGMENT, "unreadable in pg_wal"),
    }
    event = threading.Timer(0.05, actions[ending])
    event.start()
    try:
        assert push(spool, source) == walpush.EXIT_OK
    finally:
        event.join()
        lock.release()
    assert [f.name for f in spool.ready_files()] == [SEGMENT]


def test_markers_are_written_replaced_listed_and_dropped(spool: Spool, tmp_path: Path) -> None:
    source = wal_file(tmp_path / "pg_wal")
    spool.mark_stored(SEGMENT, identity(source), crc32c="AAAAAA==", key="db/k")
    assert spool.marker(SEGMENT) == {
        "format": walpush.MARKER_FORMAT,
        "name": SEGMENT,
        "stored": True,
        **dict(zip(walpush.IDENTITY, identity(source), strict=True)),
        "crc32c": "AAAAAA==",
        "key": "db/k",
    }
    assert stat.S_IMODE((spool.stored_dir / SEGMENT).stat().st_mode) == 0o644
    spool.decline(SEGMENT, "why not")
    assert spool.marker(SEGMENT) == {
        "format": 1,
        "name": SEGMENT,
        "stored": False,
        "reason": "why not",
    }
    (spool.stored_dir / ".000000010000000000000009.tmp").write_text("{}")  # a write in flight
    assert spool.markers() == [SEGMENT]
    assert spool.drop_marker(SEGMENT)
    assert not spool.drop_marker(SEGMENT)
    assert spool.marker(SEGMENT) is None
    with pytest.raises(WalNameError):
        spool.mark_stored("../../etc/passwd", identity(source), crc32c="x", key="k")


def test_the_readahead_lock_is_held_by_one_archiver_at_a_time(spool: Spool) -> None:
    first = ReadAheadLock(spool.readahead_lock_path)
    second = ReadAheadLock(spool.readahead_lock_path)
    assert first.acquire()
    assert first.held
    assert first.acquire(), "idempotent"
    assert not second.acquire(), "a second archiver on the spool does not read ahead"
    first.release()
    assert not first.held
    assert second.acquire()
    second.release()
    assert stat.S_IMODE(spool.readahead_lock_path.stat().st_mode) == 0o644


def test_a_spool_made_before_read_ahead_gets_its_stored_directory(spool: Spool) -> None:
    spool.stored_dir.rmdir()
    spool.ensure_stored_dir()
    assert stat.S_IMODE(spool.stored_dir.stat().st_mode) == DIR_MODE
    spool.ensure_stored_dir()


# -- Spool: the archiver's side -----------------------------------------------------------------


def test_init_lays_out_the_contract(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "a" / "spool")
    config = spool.init("orders-db", max_bytes=123, min_free_bytes=45, readahead_wait_s=2.5)
    assert config == SpoolConfig("orders-db", 123, 45, 2.5)
    for directory in (spool.path, spool.tmp_dir, spool.ready_dir, spool.stored_dir):
        st_ = directory.stat()
        assert stat.S_IMODE(st_.st_mode) == DIR_MODE
        assert st_.st_gid == os.getegid()
    assert json.loads(spool.config_path.read_text()) == {
        "format": 1,
        "database_uid": "orders-db",
        "max_bytes": 123,
        "min_free_bytes": 45,
        "readahead_wait_s": 2.5,
    }
    assert stat.S_IMODE(spool.config_path.stat().st_mode) == 0o644
    assert spool.config() == config
    assert spool.notify_socket_path == spool.path / "notify.sock"
    assert sorted(p.name for p in spool.path.iterdir()) == [".tmp", "ready", "spool.json", "stored"]


def test_reinit_changes_limits_keeps_files_refuses_another_database(
    spool: Spool, tmp_path: Path
) -> None:
    assert push(spool, wal_file(tmp_path / "pg_wal")) == 0
    assert spool.init("orders-db", max_bytes=7).max_bytes == 7
    assert [f.name for f in spool.ready_files()] == [SEGMENT]
    with pytest.raises(SpoolError, match="never share a spool"):
        spool.init("billing-db")


@pytest.mark.parametrize("uid", ["", "Orders", "a b", "a/b", "x" * 64, "-a"])
def test_init_refuses_bad_database_uids(tmp_path: Path, uid: str) -> None:
    with pytest.raises(ValueError, match="not a database uid"):
        Spool(tmp_path / "s").init(uid)


@pytest.mark.parametrize(("field", "value"), [("max_bytes", -1), ("min_free_bytes", True)])
def test_init_refuses_bad_limits(tmp_path: Path, field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        Spool(tmp_path / "s").init("orders-db", **{field: value})  # type: ignore[arg-type]


def test_ready_files_are_sorted_classified_and_skip_strangers(spool: Spool) -> None:
    names = [
        "000000020000000000000004",
        "00000002.history",
        "000000010000000000000003.partial",
        "000000010000000000000002.00000028.backup",
        "000000010000000000000002",
    ]
    for name in names:
        (spool.ready_dir / name).write_bytes(b"1234")
    (spool.ready_dir / "README").write_bytes(b"not WAL")
    (spool.ready_dir / "000000010000000000000009").mkdir()
    files = spool.ready_files()
    assert [f.name for f in files] == [
        "000000010000000000000002",
        "000000010000000000000002.00000028.backup",
        "000000010000000000000003.partial",
        "00000002.history",
        "000000020000000000000004",
    ]
    assert [f.kind for f in files] == [
        WalFileKind.SEGMENT,
        WalFileKind.BACKUP_HISTORY,
        WalFileKind.PARTIAL,
        WalFileKind.HISTORY,
        WalFileKind.SEGMENT,
    ]
    assert all(f.size == 4 and f.path == spool.ready_dir / f.name for f in files)
    assert files[0].wal.timeline == 1
    # usage counts what walpush counts against max_bytes: every regular file in ready/
    assert spool.usage() == SpoolUsage(count=6, bytes=5 * 4 + 7)


def test_release_is_idempotent_and_refuses_non_wal_names(spool: Spool, tmp_path: Path) -> None:
    assert push(spool, wal_file(tmp_path / "pg_wal")) == 0
    assert spool.usage() == SpoolUsage(1, len(b"segment bytes"))
    assert spool.release(SEGMENT) is True
    assert spool.release(SEGMENT) is False
    assert spool.usage() == SpoolUsage(0, 0)
    for name in ("../spool.json", "spool.json", f"../ready/{SEGMENT}"):
        with pytest.raises(WalNameError):
            spool.release(name)
    assert spool.config_path.exists()


def test_archive_command_is_exact(tmp_path: Path) -> None:
    spool = Spool("/srv/tidemark/spool/orders-db")
    command = spool.archive_command("/usr/bin/python3", Path("/opt/tidemark/bin/walpush"))
    assert command == (
        "/usr/bin/python3 -I -S /opt/tidemark/bin/walpush --spool /srv/tidemark/spool/orders-db %p"
    )


@pytest.mark.parametrize(
    ("python", "tool", "spool_path", "culprit"),
    [
        ("/usr/bin/python3", "/opt/my tools/walpush", "/srv/s", "tool_path"),
        ("/usr/bin/python3", "/opt/it's/walpush", "/srv/s", "tool_path"),
        ("/usr/bin/python3", '/opt/"x"/walpush', "/srv/s", "tool_path"),
        ("/usr/bin/python3", "/opt/walpush", "/srv/100%/s", "spool"),
        ("/usr/bin/python3", "/opt/walpush", "/srv/$HOME/s", "spool"),
        ("/usr/bin/python3", "/opt/walpush", "/srv/s;rm -rf ~", "spool"),
        ("python3", "/opt/walpush", "/srv/s", "python"),
        ("/usr/bin/python3", "bin/walpush", "/srv/s", "tool_path"),
        ("/usr/bin/python3\n", "/opt/walpush", "/srv/s", "python"),
    ],
)
def test_archive_command_refuses_paths_it_cannot_quote_safely(
    python: str, tool: str, spool_path: str, culprit: str
) -> None:
    with pytest.raises(ValueError, match=f"^{culprit} "):
        Spool(spool_path).archive_command(python, tool)


def test_archive_command_refuses_a_spool_whose_socket_path_is_too_long() -> None:
    spool = Spool("/srv/" + "s" * 100)
    with pytest.raises(SpoolError, match="unix socket path"):
        spool.archive_command("/usr/bin/python3", "/opt/walpush")


def test_relative_spool_paths_are_made_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert Spool("spool").path == tmp_path / "spool"


# -- the docs -----------------------------------------------------------------------------------


def test_docs_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    """The example in docs/archiving-postgres.md runs as written."""
    found = re.findall(r"^( *)```python\n(.*?)^\1```", DOCS.read_text(), flags=re.DOTALL | re.M)
    assert found, f"{DOCS.name} lost its example"
    for _, block in found:
        code = compile(textwrap.dedent(block), str(DOCS), "exec")
        exec(code, {"__name__": "__doc_example__"})  # noqa: S102 - our own doc
    assert " -I -S " in capsys.readouterr().out


def test_docs_exit_codes_match_the_program() -> None:
    doc = DOCS.read_text()
    for code in (walpush.EXIT_OK, walpush.EXIT_NOT_ARCHIVED, walpush.EXIT_USAGE):
        assert re.search(rf"^\|\s*`{code}`\s*\|", doc, flags=re.MULTILINE), code
