"""walpush as PostgreSQL runs it: a real cluster archiving into a spool, as the database OS user."""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from services.engines.postgres import walpush
from services.engines.postgres.oscmd import run_as, system_python
from services.engines.postgres.spool import Spool, install_walpush
from services.engines.postgres.walfile import (
    WalFileKind,
    check_segment,
    format_lsn,
    read_long_header,
    segment_start_lsn,
)
from tests.fixtures.postgres import PgCluster

pytestmark = pytest.mark.integration

DATABASE_UID = "orders-db"
WAIT = 30.0


@dataclass
class Archiving:
    cluster: PgCluster
    spool: Spool
    tool: Path
    python: Path

    @property
    def segment_size(self) -> int:
        return int(
            self.cluster.psql("SELECT setting FROM pg_settings WHERE name='wal_segment_size'")
        )

    def run_walpush(self, path: Path) -> tuple[int, str]:
        """Run the installed program by hand, as PostgreSQL would (same user, same command)."""
        done = run_as(
            self.cluster.db_user,
            [self.python, "-I", "-S", self.tool, "--spool", self.spool.path, path],
            cwd=self.cluster.data_dir,
        )
        return done.returncode, done.stderr

    def stats(self) -> dict[str, str]:
        row = self.cluster.psql(
            "SELECT archived_count, coalesce(last_archived_wal, ''), failed_count, "
            "coalesce(last_failed_wal, '') FROM pg_stat_archiver"
        )
        return dict(
            zip(("archived", "last_archived", "failed", "last_failed"), row.split("|"), strict=True)
        )


@pytest.fixture
def archiving(pg_cluster: PgCluster) -> Archiving:
    """``pg_cluster`` archiving with walpush into a spool inside the cluster's directory."""
    user = pg_cluster.db_user
    spool = Spool(pg_cluster.base / "spool")
    spool.init(DATABASE_UID, owner=user)
    tool = install_walpush(pg_cluster.base / "tools", user=user)
    python = system_python(user)
    assert pg_cluster.configure(archive_command=spool.archive_command(python, tool)) == []
    return Archiving(pg_cluster, spool, tool, python)


def switch_segments(cluster: PgCluster, count: int) -> list[str]:
    """Write some WAL and switch ``count`` times; the names of the segments completed."""
    cluster.execute("CREATE TABLE IF NOT EXISTS w (id int, pad text)")
    names = []
    for _ in range(count):
        cluster.execute("INSERT INTO w SELECT g, repeat('x', 100) FROM generate_series(1, 2000) g")
        names.append(cluster.psql("SELECT pg_walfile_name(pg_current_wal_lsn())"))
        cluster.psql("SELECT pg_switch_wal()")
    return names


def wait_for(
    archiving: Archiving, what: str, check: Callable[[dict[str, str]], bool]
) -> dict[str, str]:
    deadline = time.monotonic() + WAIT
    while True:
        stats = archiving.stats()
        if check(stats):
            return stats
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not seen in {WAIT}s: {stats}\n{archiving.cluster.log_tail()}")
        time.sleep(0.1)


def wait_archived(archiving: Archiving, name: str) -> dict[str, str]:
    return wait_for(archiving, f"{name} archived", lambda s: s["last_archived"] >= name)


def system_identifier(cluster: PgCluster) -> int:
    done = run_as(cluster.db_user, [cluster.bindir / "pg_controldata", cluster.data_dir])
    assert done.returncode == 0, done.stderr
    for line in done.stdout.splitlines():
        key, _, value = line.partition(":")
        if key == "Database system identifier":
            return int(value)
    raise AssertionError(f"no system identifier in pg_controldata output:\n{done.stdout}")


def test_segments_are_archived_into_ready(archiving: Archiving) -> None:
    cluster, spool = archiving.cluster, archiving.spool
    cluster.execute("CREATE TABLE t AS SELECT g FROM generate_series(1, 50000) g")
    names = switch_segments(cluster, 3)
    stats = wait_archived(archiving, names[-1])
    assert (stats["archived"], stats["failed"]) == (str(len(names)), "0"), cluster.log_tail()

    # No archiver was listening: walpush does not need one.
    assert not spool.notify_socket_path.exists()
    ready = spool.ready_files()
    assert [f.name for f in ready] == names
    assert all(f.kind is WalFileKind.SEGMENT for f in ready)
    assert list(spool.tmp_dir.iterdir()) == []

    sysid = system_identifier(cluster)
    block_size = int(cluster.psql("SELECT setting FROM pg_settings WHERE name='wal_block_size'"))
    for file in ready:
        header = check_segment(file.path)
        assert header.system_identifier == sysid
        assert header.timeline == 1
        assert (header.segment_size, header.block_size) == (archiving.segment_size, block_size)
        assert file.size == archiving.segment_size
        # byte-identical to PostgreSQL's own copy (no checkpoint has recycled it yet)
        assert file.path.read_bytes() == (cluster.data_dir / "pg_wal" / file.name).read_bytes()
        # PostgreSQL's own reader accepts the spool's copy
        dump = run_as(cluster.db_user, [cluster.bindir / "pg_waldump", file.path])
        assert dump.returncode == 0, dump.stderr
        assert "desc: SWITCH" in dump.stdout
        # written by the database user, readable by the archiver's group
        st = file.path.stat()
        assert st.st_uid == cluster.db_user.uid
        assert st.st_gid == os.getegid()
        assert stat.S_IMODE(st.st_mode) == walpush.FILE_MODE


def test_header_layout_matches_postgresql(archiving: Archiving) -> None:
    """The 40-byte long header, field by field, against what the server itself reports."""
    cluster = archiving.cluster
    name = switch_segments(cluster, 1)[0]
    wait_archived(archiving, name)
    header = read_long_header(archiving.spool.ready_path(name))
    assert header.magic == 0xD110  # PostgreSQL 15's XLOG_PAGE_MAGIC
    # The server's own arithmetic: which file and offset hold the byte after the page address?
    # (+1: at a file boundary pg_walfile_name_offset answers with the previous file.)
    lsn = format_lsn(header.page_address + 1)  # hex digits and a slash only
    located = cluster.psql(
        f"SELECT file_name, file_offset FROM pg_walfile_name_offset('{lsn}'::pg_lsn)"  # noqa: S608
    )
    assert located == f"{name}|1"
    assert header.page_address == segment_start_lsn(name, archiving.segment_size)
    control = cluster.psql(
        "SELECT system_identifier, timeline_id FROM pg_control_system(), pg_control_checkpoint()"
    )
    assert control == f"{header.system_identifier}|{header.timeline}"
    assert header.system_identifier == system_identifier(cluster)
    block_size = cluster.psql("SELECT setting FROM pg_settings WHERE name='wal_block_size'")
    assert header.block_size == int(block_size)


def test_history_and_backup_history_pushed_by_hand(archiving: Archiving) -> None:
    cluster, spool = archiving.cluster, archiving.spool
    handmade = cluster.user_dir("handmade")
    history = handmade / "00000002.history"
    history.write_text("1\t0/3000000\tno recovery target specified\n")
    backup = handmade / "000000010000000000000002.00000028.backup"
    backup.write_text("START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n")
    junk = handmade / "postmaster.opts"
    junk.write_text("not WAL\n")
    for path in (history, backup, junk):
        os.chown(path, cluster.db_user.uid, cluster.db_user.gid)

    assert archiving.run_walpush(history) == (0, "")
    assert archiving.run_walpush(backup) == (0, "")
    kinds = {f.name: f.kind for f in spool.ready_files()}
    assert kinds == {history.name: WalFileKind.HISTORY, backup.name: WalFileKind.BACKUP_HISTORY}
    assert spool.ready_path(history.name).read_bytes() == history.read_bytes()

    # re-archiving the same file is success; a different one under the same name is refused
    assert archiving.run_walpush(history) == (0, "")
    history.write_text("1\t0/4000000\tno recovery target specified\n")
    code, err = archiving.run_walpush(history)
    assert code == walpush.EXIT_NOT_ARCHIVED
    assert "REFUSING to overwrite" in err
    assert b"0/3000000" in spool.ready_path(history.name).read_bytes()

    code, err = archiving.run_walpush(junk)
    assert code == walpush.EXIT_USAGE
    assert "not a WAL file name" in err


def test_full_spool_fails_archiving_until_space_is_made(archiving: Archiving) -> None:
    cluster, spool = archiving.cluster, archiving.spool
    first = switch_segments(cluster, 1)[0]
    wait_archived(archiving, first)

    # Room for one segment and a half: the next one does not fit while the first is unshipped.
    spool.init(DATABASE_UID, max_bytes=archiving.segment_size * 3 // 2, owner=cluster.db_user)
    second = switch_segments(cluster, 1)[0]
    stats = wait_for(archiving, f"{second} failing", lambda s: s["last_failed"] == second)
    assert int(stats["failed"]) >= 1
    assert stats["last_archived"] == first
    assert (cluster.data_dir / "pg_wal" / second).exists()
    assert (cluster.data_dir / "pg_wal" / "archive_status" / f"{second}.ready").exists()
    assert [f.name for f in spool.ready_files()] == [first]
    log = cluster.log_tail(200)
    assert "is full" in log
    assert "PostgreSQL keeps the segment in pg_wal and retries" in log

    # The archiver ships the first and releases it; PostgreSQL's next attempt goes through.
    assert spool.release(first)
    cluster.reload()  # wakes the archiver process now rather than in a minute
    wait_archived(archiving, second)
    assert [f.name for f in spool.ready_files()] == [second]
    check_segment(spool.ready_path(second))
    assert not (cluster.data_dir / "pg_wal" / "archive_status" / f"{second}.ready").exists()


def test_a_listening_archiver_is_told_each_file(archiving: Archiving) -> None:
    cluster, spool = archiving.cluster, archiving.spool
    with spool.bind_notify_socket() as listener:
        listener.settimeout(WAIT)
        names = switch_segments(cluster, 2)
        received = [listener.recv(256).decode("utf-8") for _ in names]
    assert received == names
    wait_archived(archiving, names[-1])

    # The archiver went away and left its socket file behind: still archived, no complaint.
    assert spool.notify_socket_path.exists()
    later = switch_segments(cluster, 1)[0]
    stats = wait_archived(archiving, later)
    assert stats["failed"] == "0"
    assert spool.ready_path(later).exists()


def test_notify_socket_permissions(archiving: Archiving) -> None:
    spool = archiving.spool
    with spool.bind_notify_socket():
        st = spool.notify_socket_path.stat()
        assert stat.S_ISSOCK(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o660
        assert archiving.cluster.db_user.may(spool.notify_socket_path, 2)


def test_socket_receives_from_the_program_run_by_hand(archiving: Archiving) -> None:
    cluster, spool = archiving.cluster, archiving.spool
    path = cluster.user_dir("handmade") / "00000003.history"
    path.write_text("1\t0/3000000\tno recovery target specified\n")
    os.chown(path, cluster.db_user.uid, cluster.db_user.gid)
    with spool.bind_notify_socket() as listener:
        listener.settimeout(WAIT)
        assert archiving.run_walpush(path) == (0, "")
        assert listener.recv(256) == b"00000003.history"
