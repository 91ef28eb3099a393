"""Build the target as a streaming standby of the source, and read how far behind it is."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from schemas.positions import format_lsn, parse_lsn
from services.engines.postgres.migration.instance import (
    MigrationStepError,
    PgInstance,
    clear_dir,
    dir_size,
)

SLOT_PATTERN = re.compile(r"^[a-z0-9_]{1,63}$")


def slot_name(migration: str) -> str:
    """The physical slot of a migration: it keeps the source's WAL until the target has it."""
    name = "tidemark_mig_" + re.sub(r"[^a-z0-9]", "_", migration.lower())
    return name[:63]


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def copy_mark(target: PgInstance) -> Path:
    """Beside the target's directory while a copy runs: which migration's copy it is. A copy
    interrupted by a crash leaves it, so the rerun knows the half-written files are its own."""
    return target.data_dir.with_name(f".{target.data_dir.name}.tidemark-copy")


def _stop_orphans(data_dir: Path) -> None:
    """Kill a pg_basebackup still writing into `data_dir` (its executor was killed under it)."""
    wanted = str(data_dir).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"pg_basebackup") and wanted in argv:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry.name), signal.SIGKILL)
            deadline = time.monotonic() + 10
            while entry.exists() and time.monotonic() < deadline:
                time.sleep(0.05)


def build_standby(source: PgInstance, target: PgInstance, *, slot: str) -> int:
    """Copy the source into the target's empty data directory as a standby and start it.

    Rerunnable: a target that already runs as a standby of the slot is left alone; a copy this
    migration left half-done (its mark names the slot) is stopped, cleared and made again; a
    slot left by an interrupted copy is reused (pg_basebackup -C would fail on it). Any other
    non-empty directory is refused, never emptied. Returns the bytes copied.
    """
    if not SLOT_PATTERN.fullmatch(slot):
        raise ValueError(f"not a slot name: {slot!r}")
    mark = copy_mark(target)
    ours = mark.exists() and mark.read_text(encoding="utf-8").strip() == slot
    if ours and target.data_dir.exists():
        _stop_orphans(target.data_dir)
        clear_dir(target.data_dir)
    elif (target.data_dir / "PG_VERSION").exists():
        if (target.data_dir / "standby.signal").exists():
            target.start()
            return 0
        raise MigrationStepError(
            f"{target.data_dir} already holds a cluster that is not this migration's standby; "
            "refusing to overwrite it"
        )
    elif target.data_dir.exists() and any(target.data_dir.iterdir()):
        raise MigrationStepError(f"{target.data_dir} is not empty and holds no cluster")
    mark.write_text(slot + "\n", encoding="utf-8")
    exists = source.value(
        "SELECT count(*) FROM pg_replication_slots WHERE slot_name = :'slot'", {"slot": slot}
    )
    args = [
        "-D",
        str(target.data_dir),
        "-h",
        str(source.socket_dir),
        "-p",
        str(source.port),
        "-U",
        source.role,
        "-X",
        "stream",
        "-R",
        "-S",
        slot,
        "--checkpoint=fast",
    ]
    if exists == "0":
        args.append("-C")
    source.run("pg_basebackup", args, timeout=6 * 3600)
    # The copy carries the source's settings; the target's own port and socket win (last).
    # It never archives into the source's archive: the new primary is protected as itself.
    with (target.data_dir / "postgresql.auto.conf").open("a", encoding="utf-8") as conf:
        conf.write(
            f"port = {target.port}\nunix_socket_directories = {_quote(str(target.socket_dir))}\n"
            "archive_mode = off\n"
        )
    size = dir_size(target.data_dir)
    mark.unlink()
    target.start()
    return size


@dataclass(frozen=True)
class Lag:
    """How far the target is behind, from both sides.

    `bytes` is the source's current WAL position minus what the target has replayed; `seconds`
    is the source's own measure (pg_stat_replication.replay_lag) when it has one, else the age
    of the target's last replayed commit when bytes remain (zero when nothing remains).
    """

    source_lsn: int
    received_lsn: int
    replayed_lsn: int
    bytes: int
    seconds: float

    def __str__(self) -> str:
        return (
            f"source {format_lsn(self.source_lsn)}, received {format_lsn(self.received_lsn)}, "
            f"replayed {format_lsn(self.replayed_lsn)}: {self.bytes} bytes, {self.seconds:.3f} s"
        )


def measure_lag(source: PgInstance, target: PgInstance, *, slot: str) -> Lag:
    # The target first, then the source: the source can only have moved on meanwhile, so the
    # lag read is never less than the truth (the gate may wait a little longer, never open early).
    got = target.rows(
        "SELECT coalesce(pg_last_wal_receive_lsn(), '0/0'), coalesce(pg_last_wal_replay_lsn(), "
        "'0/0'), coalesce(extract(epoch FROM now() - pg_last_xact_replay_timestamp()), 0)"
    )[0]
    row = source.rows(
        "SELECT pg_current_wal_lsn(), coalesce(extract(epoch FROM r.replay_lag), -1) "
        "FROM (SELECT 1) one LEFT JOIN pg_stat_replication r ON r.pid = "
        "(SELECT active_pid FROM pg_replication_slots WHERE slot_name = :'slot')",
        {"slot": slot},
    )[0]
    current, source_seconds = parse_lsn(row[0]), float(row[1])
    received, replayed, age = parse_lsn(got[0]), parse_lsn(got[1]), float(got[2])
    behind = max(0, current - replayed)
    # The source's replay_lag goes null once the standby has caught up and WAL is idle.
    fallback = age if behind else 0.0
    seconds = source_seconds if source_seconds >= 0 else fallback
    return Lag(current, received, replayed, behind, max(0.0, seconds))
