"""The PostgreSQL harness itself: real clusters, as the database OS user, isolated from the host."""

from __future__ import annotations

import os
import shlex
import socket
import stat
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from services.engines.postgres.oscmd import (
    OsCommandError,
    database_os_user,
    install_user_tool,
    run_as,
    system_python,
)
from tests.fixtures.postgres import PgCluster, PgClusterError

pytestmark = pytest.mark.integration

# A stand-in for the real push side: standard library only, copies %p to <dir>/<%f>, durably,
# refuses to overwrite a different segment, and records what it archived.
ARCHIVE_TOOL = '''\
#!/this/shebang/is/replaced
"""archive_copy SRC DEST_DIR NAME: copy a WAL segment into DEST_DIR and record it."""
import os
import sys


def main() -> int:
    src, dest_dir, name = sys.argv[1:4]
    target = os.path.join(dest_dir, name)
    with open(src, "rb") as handle:
        data = handle.read()
    if os.path.exists(target):
        with open(target, "rb") as existing:
            return 0 if existing.read() == data else 1
    tmp = target + ".tmp"
    with open(tmp, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.rename(tmp, target)
    with open(os.path.join(dest_dir, "archived.log"), "a", encoding="utf-8") as log:
        log.write(f"{name} {len(data)} uid={os.getuid()}\\n")
    return 0


sys.exit(main())
'''


def _listening_addresses(port: int) -> set[str]:
    """Local addresses with a TCP socket in LISTEN state on ``port`` (from /proc/net)."""
    found: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for row in rows:
            fields = row.split()
            address, _, port_hex = fields[1].rpartition(":")
            if fields[3] == "0A" and int(port_hex, 16) == port:
                found.add(address)
    return found


def _install_archive_tool(tmp_path: Path, dest_dir: Path) -> Path:
    source = tmp_path / "archive_copy.py"
    source.write_text(ARCHIVE_TOOL, encoding="utf-8")
    return install_user_tool(source, dest_dir)


def test_cluster_starts_and_accepts_sql(pg_cluster: PgCluster) -> None:
    pg_cluster.execute("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'a')")
    assert pg_cluster.psql("SELECT id, v FROM t") == "1|a"
    assert pg_cluster.psql("SHOW server_encoding") == "UTF8"
    assert pg_cluster.psql("SHOW lc_collate") == "C"
    assert pg_cluster.psql("SHOW data_checksums") == "on"
    assert pg_cluster.psql("SHOW wal_level") == "replica"
    assert pg_cluster.psql("SHOW archive_mode") == "on"


def test_cluster_runs_as_the_database_user(pg_cluster: PgCluster) -> None:
    user = database_os_user()
    pid = pg_cluster.postmaster_pid
    assert pid is not None
    assert os.stat(f"/proc/{pid}").st_uid == user.uid
    assert pg_cluster.base.stat().st_uid == user.uid
    assert stat.S_IMODE(pg_cluster.base.stat().st_mode) == 0o700
    assert pg_cluster.base.parent == Path("/tmp")


def test_socket_in_own_dir_and_tcp_loopback_only(pg_cluster: PgCluster) -> None:
    assert pg_cluster.port != 5432
    assert pg_cluster.psql("SHOW unix_socket_directories") == str(pg_cluster.base)
    assert pg_cluster.socket_path.parent == pg_cluster.base
    assert stat.S_ISSOCK(pg_cluster.socket_path.stat().st_mode)
    assert pg_cluster.psql("SHOW listen_addresses") == "127.0.0.1"
    # Linux /proc/net/tcp: 127.0.0.1 is 0100007F; nothing else listens on the port.
    assert _listening_addresses(pg_cluster.port) == {"0100007F"}
    # Over the socket the server sees no address; over TCP, loopback with the password.
    assert pg_cluster.psql("SELECT inet_server_addr() IS NULL") == "t"
    assert pg_cluster.psql("SELECT host(inet_server_addr())", tcp=True) == "127.0.0.1"
    assert f"host={pg_cluster.base} port={pg_cluster.port}" in pg_cluster.dsn


def test_psql_errors_raise_with_message(pg_cluster: PgCluster) -> None:
    with pytest.raises(PgClusterError, match="no_such_table"):
        pg_cluster.psql("SELECT 1; SELECT * FROM no_such_table; SELECT 2")


def test_configure_reloads_and_reports_restart_needed(pg_cluster: PgCluster) -> None:
    assert pg_cluster.configure(work_mem="7MB", archive_timeout=45) == []
    assert pg_cluster.psql("SHOW work_mem") == "7MB"
    assert pg_cluster.psql("SHOW archive_timeout") == "45s"
    assert pg_cluster.configure(max_connections=25) == ["max_connections"]
    pg_cluster.restart()
    assert pg_cluster.psql("SHOW max_connections") == "25"
    assert pg_cluster.psql("SHOW work_mem") == "7MB"


def test_system_python_is_runnable_by_database_user() -> None:
    user = database_os_user()
    python = system_python(user)
    assert python.is_absolute()
    assert not str(python.resolve()).startswith(("/root", str(Path.home())))
    done = run_as(user, [python, "-c", "import os; print(os.getuid())"], cwd="/")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(user.uid)


def test_install_user_tool_rejects_third_party_imports(tmp_path: Path) -> None:
    bad = tmp_path / "bad_tool.py"
    bad.write_text("import pydantic\n", encoding="utf-8")
    with pytest.raises(OsCommandError, match="pydantic"):
        install_user_tool(bad, tmp_path / "bin")


def test_archive_command_runs_installed_tool_as_database_user(
    pg_cluster: PgCluster, tmp_path: Path
) -> None:
    user = database_os_user()
    tools = pg_cluster.base / "tools"
    tool = _install_archive_tool(tmp_path, tools)
    assert stat.S_IMODE(tool.stat().st_mode) == 0o755
    assert tool.read_text().startswith(f"#!{system_python(user)} ")

    archive = pg_cluster.user_dir("archive")
    command = f"{shlex.quote(str(tool))} %p {shlex.quote(str(archive))} %f"
    assert pg_cluster.configure(archive_command=command) == []

    pg_cluster.execute("CREATE TABLE w AS SELECT g FROM generate_series(1, 1000) g")
    segment = pg_cluster.psql("SELECT pg_walfile_name(pg_current_wal_lsn())")
    pg_cluster.psql("SELECT pg_switch_wal()")

    deadline = time.monotonic() + 20
    row = ""
    while time.monotonic() < deadline:
        row = pg_cluster.psql(
            "SELECT archived_count, coalesce(last_archived_wal, ''), failed_count "
            "FROM pg_stat_archiver"
        )
        if row.split("|")[1] >= segment:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"{segment} not archived in 20 s: {row}\n{pg_cluster.log_tail()}")

    assert row.split("|")[2] == "0", pg_cluster.log_tail()
    archived = archive / segment
    wal_segment_size = int(
        pg_cluster.psql("SELECT setting FROM pg_settings WHERE name = 'wal_segment_size'")
    )
    assert archived.stat().st_size == wal_segment_size
    assert archived.stat().st_uid == user.uid
    log = (archive / "archived.log").read_text().splitlines()
    assert f"{segment} {wal_segment_size} uid={user.uid}" in log


def test_kill9_then_start_recovers(pg_cluster: PgCluster) -> None:
    pg_cluster.execute("CREATE TABLE k (id int); INSERT INTO k SELECT generate_series(1, 500)")
    pid = pg_cluster.postmaster_pid
    assert pid is not None
    pg_cluster.kill9()
    assert not pg_cluster.running
    assert not Path(f"/proc/{pid}").exists()
    assert (pg_cluster.data_dir / "postmaster.pid").exists()  # left behind, as after a crash
    with pytest.raises(PgClusterError):
        pg_cluster.psql("SELECT 1")

    pg_cluster.start()
    assert pg_cluster.psql("SELECT count(*) FROM k") == "500"
    assert "not properly shut down" in pg_cluster.log_tail(200)


def test_stop_immediate_then_start(pg_cluster: PgCluster) -> None:
    pg_cluster.execute("CREATE TABLE s (id int); INSERT INTO s VALUES (1)")
    pg_cluster.stop("immediate")
    assert not pg_cluster.running
    pg_cluster.start()
    assert pg_cluster.psql("SELECT count(*) FROM s") == "1"


def test_two_clusters_at_once(pg_factory: Callable[..., PgCluster]) -> None:
    first = pg_factory()
    second = pg_factory()
    assert first.port != second.port
    assert first.base != second.base
    first.execute("CREATE TABLE only_here (id int)")
    assert second.psql("SELECT to_regclass('only_here') IS NULL") == "t"
    ids = {c.psql("SELECT system_identifier FROM pg_control_system()") for c in (first, second)}
    assert len(ids) == 2


def test_cleanup_stops_and_removes_everything(pg_factory: Callable[..., PgCluster]) -> None:
    cluster = pg_factory()
    pid = cluster.postmaster_pid
    assert pid is not None
    cluster.cleanup()
    assert not cluster.base.exists()
    assert not Path(f"/proc/{pid}").exists()
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True)
    assert str(cluster.base) not in ps.stdout
    cluster.cleanup()  # idempotent
    with pytest.raises(PgClusterError, match="cleaned up"):
        cluster.start()


def test_run_as_drops_root_supplementary_groups() -> None:
    user = database_os_user()
    done = run_as(user, ["id", "-G"], cwd="/")
    assert done.returncode == 0, done.stderr
    assert {int(g) for g in done.stdout.split()} == set(user.groups) | {user.gid}


def test_pg_ctl_failure_carries_log_tail(pg_factory: Callable[..., PgCluster]) -> None:
    cluster = pg_factory(start=False, settings={"shared_buffers": "not-a-size"})
    with pytest.raises(PgClusterError, match="shared_buffers") as info:
        cluster.start()
    assert "server log tail" in str(info.value)


def test_start_moves_off_a_taken_port(pg_factory: Callable[..., PgCluster]) -> None:
    cluster = pg_factory(start=False)
    taken = cluster.port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind(("127.0.0.1", taken))
        squatter.listen()
        cluster.start()
    assert cluster.port != taken
    assert cluster.psql("SHOW port") == str(cluster.port)
