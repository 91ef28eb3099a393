"""Rollback after the point of no return: the old source becomes a standby of the new primary.

The way back is then a second switchover (fence the new primary, promote the old source), so no
commit the new primary accepted is lost. The old source was stopped cleanly by the fence, so its
WAL ends at the shutdown checkpoint the new primary replayed before it forked its timeline;
pg_rewind finds there is nothing to rewind. If the old source was started and wrote after the
fence (by hand, or it crashed and recovered), its history diverged and pg_rewind copies back
what changed (it needs data checksums or wal_log_hints, which the preflight reports).
"""

from __future__ import annotations

from pathlib import Path

from services.engines.postgres.migration.cutover import FENCE_SETTING
from services.engines.postgres.migration.instance import MigrationStepError, PgInstance
from services.engines.postgres.oscmd import chown_to

STANDBY_CONF_MARK = "# tidemark migration rollback: follow the new primary"


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


CONFIG_FILES = ("postgresql.conf", "postgresql.auto.conf", "pg_hba.conf", "pg_ident.conf")
"""pg_rewind copies these from the new primary too; the rewound cluster keeps its own (its port,
its socket, its access rules), or it would start on the other's port."""


def follow_new_primary(old: PgInstance, new: PgInstance, *, slot: str | None = None) -> None:
    """Rewind `old` (stopped) onto `new`'s timeline and start it as `new`'s standby.

    Rerunnable: an old source already following is left running, and one already rewound and
    configured to follow (a run interrupted after the rewind) is only started. Never run while
    `old` might accept writes: it is stopped first (a fenced source is already down).
    """
    if old.is_running():
        if old.value("SELECT pg_is_in_recovery()") == "t":
            return
        raise MigrationStepError(
            "the old source is running as a primary: two writable primaries; stop it and "
            "decide which side's commits to keep before rolling back"
        )
    auto = old.data_dir / "postgresql.auto.conf"
    following = f"primary_conninfo = {_quote(new.conninfo)}"
    if (old.data_dir / "standby.signal").exists() and following in _read(auto):
        old.start()
        old.wait_until("SELECT pg_is_in_recovery()", timeout=60, what="old source in recovery")
        return
    if new.value("SELECT pg_is_in_recovery()") == "t":
        raise MigrationStepError("the new primary is not promoted: nothing to roll back from")
    if slot is not None:
        new.rows(
            "SELECT pg_create_physical_replication_slot(:'slot', true) WHERE NOT EXISTS "
            "(SELECT 1 FROM pg_replication_slots WHERE slot_name = :'slot')",
            {"slot": slot},
        )
    kept = {name: _read(old.data_dir / name) for name in CONFIG_FILES}
    old.run(
        "pg_rewind",
        ["--target-pgdata", str(old.data_dir), "--source-server", new.conninfo, "--progress"],
        env={"LC_ALL": "C"},
        timeout=6 * 3600,
    )
    for name, text in kept.items():
        if text:
            (old.data_dir / name).write_text(text, encoding="utf-8")
    lines = [
        line
        for line in kept["postgresql.auto.conf"].splitlines()
        # The fence's read-only default must not survive into a later switchover back.
        if not line.startswith((FENCE_SETTING, "primary_conninfo", "primary_slot_name"))
        and line != STANDBY_CONF_MARK
    ]
    lines += [STANDBY_CONF_MARK, following]
    if slot is not None:
        lines.append(f"primary_slot_name = {_quote(slot)}")
    auto.write_text("\n".join(lines) + "\n", encoding="utf-8")
    (old.data_dir / "standby.signal").touch()
    for path in (auto, old.data_dir / "standby.signal"):
        chown_to(path, old.user)
    old.start()
    old.wait_until("SELECT pg_is_in_recovery()", timeout=60, what="old source in recovery")


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return ""
