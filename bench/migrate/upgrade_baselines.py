"""What a DBA would use instead of logical-upgrade to move the same source into PostgreSQL 18,
timed in the same round, with no load on the source (in both the source takes no writes for the
whole time: all of it is downtime).

`pg_upgrade --copy`:

    pg_basebackup of the source into an empty directory ─▶ started once (recovery to a
    consistent point) and shut down cleanly, as pg_upgrade requires ─▶ a fresh 18 initdb ─▶
    [timed] pg_upgrade --copy 15 → 18 ─▶ both removed

Only pg_upgrade itself is timed (its checks, the schema's dump and restore, the files' copy,
the final sync): not the old server's shutdown before it nor the new one's start after it, so
the baseline is, if anything, shorter than a DBA's window.

`pg_dump` + `pg_restore` by hand, to local disk (`time_dump_restore`):

    fresh 18 cluster, an empty database ─▶ [timed] pg_dump -Fd -j2 of the source into a
    directory ─▶ [timed] pg_restore -j2 from it ─▶ removed

The tools are the ones our `dump` method runs (`migration/steps.py`'s dump steps): the target
release's pg_dump and pg_restore (18; PostgreSQL's upgrade guide also advises the newer
pg_dump), with the same `-j`; as a DBA runs them, pg_dump syncs its output (the method passes
`--no-sync` to its spool, whose durable copy is the store's).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from bench.migrate import newer
from bench.migrate.rounds import BASEBACKUP_COPY_FLAGS, quiesce
from bench.migrate.settings import MigrateBenchSettings
from bench.migrate.source import Source
from services.engines.postgres.migration import PgInstance
from services.engines.postgres.oscmd import run_as, user_env
from tests.fixtures.postgres import PgCluster
from tests.integration.migration_rig import empty_target, instance_of

DB = "postgres"
RESTORED_DB = "migrated"
"""The empty database of the 18 cluster the dumps are restored into."""
JOBS = 2
TOOL_TIMEOUT_S = 6 * 3600.0


@dataclass(frozen=True)
class DumpRestore:
    """A dump and its restore, each timed."""

    dump_s: float
    restore_s: float
    source_fingerprint_s: float = 0.0
    """Our dump method: reading the source's parity fingerprint, while the files upload (so
    only partly billed to `dump_s`); none by hand."""
    target_fingerprint_s: float = 0.0
    """Our dump method: reading the target's fingerprint after the restore (all of it part of
    `restore_s`); none by hand."""

    @property
    def total_s(self) -> float:
        return self.dump_s + self.restore_s


def connect_args(instance: PgInstance, dbname: str) -> list[str]:
    return [
        *("-h", str(instance.socket_dir), "-p", str(instance.port)),
        *("-U", instance.role, "-d", dbname),
    ]


def time_pg_upgrade(source: Source, settings: MigrateBenchSettings) -> float:
    """`pg_upgrade --copy` of a stopped copy of the source into a fresh 18 cluster, timed."""
    with empty_target(source.cluster) as old:
        source.instance.run(
            "pg_basebackup",
            [
                "-D",
                str(old.data_dir),
                *connect_args(source.instance, DB)[:-2],
                *BASEBACKUP_COPY_FLAGS,
            ],
            timeout=TOOL_TIMEOUT_S,
        )
        _make_private(old)
        old.start()  # recovery from the backup up to a consistent point
        old.pg_ctl("-m", "fast", "stop")  # pg_upgrade refuses a cluster not shut down cleanly
        with newer.fresh_cluster(settings, start=False) as new:
            quiesce()
            started = time.monotonic()
            _pg_upgrade(old, new)
            return time.monotonic() - started


def _make_private(copy: PgInstance) -> None:
    """The copy carries the source's settings: its port and address (taken), and its
    archive_command (it would archive into the source's archive). Override them."""
    with (copy.data_dir / "postgresql.auto.conf").open("a", encoding="utf-8") as conf:
        conf.write(
            f"port = {copy.port}\nlisten_addresses = ''\n"
            f"unix_socket_directories = '{copy.socket_dir}'\narchive_mode = off\n"
        )


def _pg_upgrade(old: PgInstance, new: PgCluster) -> None:
    argv: list[str | Path] = [
        new.bindir / "pg_upgrade",
        "--copy",
        *("-b", old.bindir, "-B", new.bindir),
        *("-d", old.data_dir, "-D", new.data_dir),
        *("-p", str(old.port), "-P", str(new.port)),
        *("-U", new.superuser, "-s", new.base),
    ]
    done = run_as(
        new.db_user,
        argv,
        cwd=new.base,  # pg_upgrade writes its scripts into the working directory
        env=user_env(new.db_user),
        timeout=TOOL_TIMEOUT_S,
    )
    if done.returncode != 0:
        logs = "\n".join(
            f"--- {path}\n{path.read_text(errors='replace')[-1500:]}"
            for path in sorted(new.data_dir.glob("pg_upgrade_output.d/*/log/*.log"))
        )
        raise RuntimeError(f"pg_upgrade failed (exit {done.returncode}):\n{done.stdout}\n{logs}")


def time_dump_restore(source: Source, settings: MigrateBenchSettings) -> DumpRestore:
    """18's `pg_dump -Fd -j2` of the source to local disk, then 18's `pg_restore -j2` into an
    empty database of a fresh 18 cluster, each timed."""
    with newer.fresh_cluster(settings) as new:
        target = instance_of(new)
        target.rows(f"CREATE DATABASE {RESTORED_DB}")
        out = new.user_dir("dump") / "out"  # pg_dump -Fd makes the directory itself
        quiesce()
        started = time.monotonic()
        target.run(
            "pg_dump",
            ["-Fd", f"-j{JOBS}", "-f", str(out), *connect_args(source.instance, DB)],
            timeout=TOOL_TIMEOUT_S,
        )
        dumped = time.monotonic()
        target.run(
            "pg_restore",
            [f"-j{JOBS}", *connect_args(target, RESTORED_DB), str(out)],
            timeout=TOOL_TIMEOUT_S,
        )
        return DumpRestore(dumped - started, time.monotonic() - dumped)
