"""A restore's ``recover`` and ``finish`` phases: the server started in archive recovery,
followed until it is promoted, and where recovery ended read back from it (see
``restore.py``).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from services.blobstore import BlobStore
from services.engines.base import EngineError, JobContext
from services.engines.postgres.fetchserver import FetchStats, serve_wal
from services.engines.postgres.instance import POLL_S, Instance, _fail
from services.engines.postgres.oscmd import chown_to
from services.engines.postgres.recovery_conf import (
    make_fetch_rig,
    write_auto_conf,
    write_owned,
)
from services.engines.postgres.walfile import parse_lsn

__all__ = ["RecoveryOutcome", "read_outcome", "recover", "reload", "wait_for_recovery"]

# The restore's own logger: recovery is one of its phases.
log = logging.getLogger("services.engines.postgres.restore")

# -- recovery --------------------------------------------------------------------------------------

_RAN_OUT = "recovery ended before configured recovery target was reached"
"""PostgreSQL's FATAL when the WAL it was given ends before the target (PostgreSQL 13+)."""

_PAST_END_TARGETS = frozenset({"recovery_target_time", "recovery_target_lsn"})
"""The targets for which the end of the archive is the target's state when no record lies
after them: a time or a position. Never an xid or a restore point's name: one that is not in
the archive is a target that does not exist, and recovering to the end would hide that."""

_PAST_END_DROPPED = _PAST_END_TARGETS | {"recovery_target_inclusive"}


def _ran_out_before(exc: Exception, recovery: Mapping[str, str], inst: Instance) -> bool:
    """Did recovery stop at the end of the archived WAL short of a time or position target
    that lies no further than the end of the segment it replayed last?

    A position is checked here against that end: a position beyond the planned WAL is a target
    the archive does not reach, and recovering to the end would hide that. A time cannot be
    compared with WAL; the catalog's check (the window, whose end is the last segment's archive
    time) is what admits it."""
    if _RAN_OUT not in str(exc) or not (_PAST_END_TARGETS & set(recovery)):
        return False
    target = recovery.get("recovery_target_lsn")
    if target is None:
        return True
    end = _replayed_segment_end(inst)
    return end is not None and parse_lsn(target) <= end


_REDO_DONE = re.compile(r"redo done at ([0-9A-Fa-f]+/[0-9A-Fa-f]+)")


def _replayed_segment_end(inst: Instance) -> int | None:
    """The end of the WAL segment holding the last record replayed (from the server's "redo
    done at" line), or None if the log does not say."""
    found = _REDO_DONE.findall(inst.log_tail(200))
    if not found:
        return None
    sizes = {
        p.stat().st_size
        for p in (inst.data_dir / "pg_wal").iterdir()
        if p.is_file() and len(p.name) == 24 and all(c in "0123456789ABCDEF" for c in p.name)
    }
    if len(sizes) != 1:
        return None
    [size] = sizes
    done = parse_lsn(found[-1])
    return (done // size + 1) * size


@dataclass
class RecoveryOutcome:
    """Where recovery ended, read from the promoted server."""

    timeline: int
    parent: int
    branch_lsn: int
    reason: str
    last_replay_lsn: int | None
    last_xact_time: datetime | None
    extra: dict[str, str] = field(default_factory=dict)


async def wait_for_recovery(
    inst: Instance, ctx: JobContext, stats: FetchStats, start_lsn: int, goal_lsn: int | None
) -> None:
    """Follow recovery until the server leaves it; raise with the server's reason if it dies."""
    last_report = 0.0
    while True:
        if not inst.alive():
            raise _fail(f"recovery failed: {inst.failure_reason()}")
        code, out = await inst.psql("SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()")
        if code == 0:
            in_recovery, _, lsn_text = out.partition("|")
            if in_recovery == "f":
                return
            if lsn_text and time.monotonic() - last_report > 1.0:
                last_report = time.monotonic()
                lsn = parse_lsn(lsn_text)
                total = goal_lsn - start_lsn if goal_lsn is not None else None
                await ctx.progress(
                    "recover",
                    done=max(0, lsn - start_lsn),
                    total=total if total is not None and total > 0 else None,
                    unit="bytes",
                    message=f"replayed to {lsn_text}; {stats.served} WAL files fetched",
                )
        await asyncio.sleep(POLL_S)


async def read_outcome(inst: Instance) -> RecoveryOutcome:
    """The new timeline and exactly where it branched (its history file's last line)."""
    replay = await inst.query(
        "SELECT pg_last_wal_replay_lsn(), "
        "to_char(pg_last_xact_replay_timestamp() AT TIME ZONE 'UTC', "
        "'YYYY-MM-DD\"T\"HH24:MI:SS.US')"
    )
    lsn_text, _, time_text = replay.partition("|")
    # The timeline WAL is now written on, from the name of the current segment: promotion has
    # switched to it at once, while pg_control_checkpoint() would only show it after the next
    # checkpoint — and forcing one here (a full flush of everything replayed) is what made a
    # restore slower than it needs to be. The segments replayed are kept in pg_wal under their
    # own names, so a crash before that checkpoint recovers locally.
    walfile = await inst.query("SELECT pg_walfile_name(pg_current_wal_lsn())")
    timeline = int(walfile[:8], 16)
    history = inst.data_dir / "pg_wal" / f"{timeline:08X}.history"
    try:
        text = history.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise _fail(
            f"recovery ended on timeline {timeline} without a history file: it did not "
            "branch a new timeline"
        ) from None
    entries = [line.split("\t") for line in text.splitlines() if line and line[0].isdigit()]
    if not entries or len(entries[-1]) < 2:
        raise _fail(f"{history.name} does not say where timeline {timeline} branched: {text!r}")
    last = entries[-1]
    return RecoveryOutcome(
        timeline=timeline,
        parent=int(last[0]),
        branch_lsn=parse_lsn(last[1]),
        reason=last[2].strip() if len(last) > 2 else "",
        last_replay_lsn=parse_lsn(lsn_text) if lsn_text else None,
        last_xact_time=datetime.fromisoformat(time_text).replace(tzinfo=UTC) if time_text else None,
    )


async def recover(
    inst: Instance,
    *,
    store: BlobStore,
    prefix: str,
    uid: str,
    plan_keys: list[str],
    settings: Mapping[str, str],
    overrides: Mapping[str, str],
    ctx: JobContext,
    prefetch: int,
    tag: str,
    start_lsn: int,
    goal_lsn: int | None,
    stats: FetchStats,
) -> RecoveryOutcome:
    """Configure recovery in ``inst.data_dir``, run it with a fetch server, return where it
    ended; the server is left running, promoted, with the recovery settings removed."""
    rig = await make_fetch_rig(inst.user, inst.data_dir.parent, tag)
    try:
        async with serve_wal(
            store,
            prefix=prefix,
            uid=uid,
            socket_path=rig.socket_path,
            cache_dir=rig.cache_dir,
            prefetch=prefetch,
            plan_keys=plan_keys,
            user=inst.user,
            stats=stats,
            hand_over_to=inst.data_dir / "pg_wal",
        ) as server:
            command = rig.restore_command(take_ready=server.hands_over)
            recovery = {"restore_command": command, **settings}
            write_auto_conf(
                inst.data_dir, {**recovery, **overrides}, inst.user, f"tidemark restore {tag}"
            )
            write_owned(inst.data_dir / "recovery.signal", "", inst.user)
            log_dir = inst.data_dir / "log"
            log_dir.mkdir(mode=0o700, exist_ok=True)
            chown_to(log_dir, inst.user)
            await ctx.progress("recover", message="starting PostgreSQL in archive recovery")
            await inst.start(log_dir / f"tidemark-restore-{tag}.log")
            try:
                await wait_for_recovery(inst, ctx, stats, start_lsn, goal_lsn)
            except EngineError as exc:
                if not _ran_out_before(exc, recovery, inst) or stats.errors:
                    raise
                # The target lies past the last record in the archive (a window's end is
                # where the archive ends, not a commit). Every planned log was replayed and
                # no record after the target exists in them, so the end of the archived WAL
                # is the database as it was at the target: recover to there, and say so.
                recovery = {k: v for k, v in recovery.items() if k not in _PAST_END_DROPPED}
                log.info(
                    "restore %s: the target lies past the last archived record; recovering to "
                    "the end of the planned WAL instead",
                    tag,
                )
                await ctx.progress(
                    "recover",
                    message="the target lies past the last archived record: recovering to "
                    "the end of the archived WAL, which is the database at the target",
                )
                write_auto_conf(
                    inst.data_dir,
                    {**recovery, **overrides},
                    inst.user,
                    f"tidemark restore {tag}",
                    drop=_PAST_END_DROPPED,
                )
                await inst.start(log_dir / f"tidemark-restore-{tag}-to-end.log")
                await wait_for_recovery(inst, ctx, stats, start_lsn, goal_lsn)
            outcome = await read_outcome(inst)
        if stats.errors:
            raise _fail(
                f"{stats.errors} WAL fetches failed during recovery (last: {stats.last_error}); "
                "PostgreSQL cannot tell a failed fetch from the end of WAL, so where it stopped "
                "is not trusted"
            )
        # The recovery settings name this restore's socket, which goes away now.
        write_auto_conf(
            inst.data_dir, overrides, inst.user, f"tidemark restore {tag}", drop=recovery
        )
        await reload(inst)
        return outcome
    finally:
        rig.remove()


async def reload(inst: Instance, timeout: float = 30.0) -> None:
    """Reread the configuration and wait until new sessions see it (``pg_ctl reload`` only
    sends SIGHUP); a reload not seen in time is logged, not fatal: the restore itself is done."""
    before = await inst.query("SELECT pg_conf_load_time()")
    code, out = await inst.pg_ctl("reload", "-s")
    if code != 0:
        log.warning("pg_ctl reload of %s: %s", inst.data_dir, out)
        return
    deadline = time.monotonic() + timeout
    while await inst.query("SELECT pg_conf_load_time()") == before:
        if time.monotonic() > deadline:
            log.warning("reload of %s not seen after %.0fs", inst.data_dir, timeout)
            return
        await asyncio.sleep(0.05)
