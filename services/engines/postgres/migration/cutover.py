"""Cutover: fence the source, wait for its final position, promote the target, verify.

What guarantees that no commit is accepted after the fence? Not `default_transaction_read_only`
on its own: it is a default, so a session may `SET default_transaction_read_only = off` or
`BEGIN READ WRITE` and commit, and a transaction that began before the reload still commits.
Terminating sessions ends those in flight, but a client can reconnect in the next millisecond.
The guarantee here is the last step of the fence: a clean shutdown of the source. A stopped
server accepts nothing, and a clean (`fast`) shutdown writes a shutdown checkpoint and keeps the
WAL senders up until the standby has flushed everything up to it, so the final position is
known exactly (the checkpoint's location, from pg_control) and nothing follows it.

So the fence is, in order:
1. `ALTER SYSTEM SET default_transaction_read_only = on` and reload: well-behaved clients get
   "cannot execute ... in a read-only transaction" rather than a refused connection while the
   rest runs (it drains; it does not guarantee);
2. terminate every client backend but the fencing session itself: in-flight transactions roll
   back, and
   their clients were never told they committed;
3. stop the source (`pg_ctl stop -m fast`): the guarantee.

A commit acknowledged before step 3 is in the WAL before the shutdown checkpoint, so it is on
the target once the target has replayed past that checkpoint (`wait_replayed`). Unfencing
(abort, before the point of no return) resets the setting and starts the source again: it is
as it was. After `promote_target` the source must stay down: the target may now accept commits
the source never saw, and a second writable primary would fork the data. The way back is
`rollback.follow_new_primary`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from schemas.positions import format_lsn, parse_lsn
from services.engines.postgres.migration.instance import MigrationStepError, PgInstance

FENCE_SETTING = "default_transaction_read_only"


@dataclass(frozen=True)
class Fence:
    """The fence's outcome: the source's final position and when the fence was raised."""

    final_lsn: int
    started_monotonic: float
    terminated_sessions: int

    def __str__(self) -> str:
        return f"fenced at {format_lsn(self.final_lsn)} ({self.terminated_sessions} sessions ended)"


def _final_position(source: PgInstance) -> int:
    control = source.control_data()
    state = control.get("Database cluster state", "")
    if state != "shut down":
        # Crashed or still running: the last position is not the shutdown checkpoint's, and
        # a commit may follow it. Never report a position that is not final.
        raise MigrationStepError(f"source is {state!r}, not cleanly shut down", retryable=True)
    return parse_lsn(control["Latest checkpoint location"])


def fence_source(source: PgInstance, *, stop_timeout: float = 120.0) -> Fence:
    """Raise the fence (see the module's docstring) and return the source's final position.

    Rerunnable: a source already stopped cleanly is fenced; its final position is read again.
    """
    started = time.monotonic()
    terminated = 0
    if source.is_running():
        source.rows(f"ALTER SYSTEM SET {FENCE_SETTING} = on")
        source.rows("SELECT pg_reload_conf()")
        terminated = int(
            source.value(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
            )
        )
        source.pg_ctl("stop", "-m", "fast", timeout=stop_timeout)
    return Fence(_final_position(source), started, terminated)


def unfence_source(source: PgInstance) -> None:
    """Abort before the point of no return: the source serves writes again, as before.

    The setting is removed while the server is down (`ALTER SYSTEM RESET` needs it running, and
    starting it first would open a window in which it is up but still read-only — harmless —
    so we start, reset, reload). Rerunnable.
    """
    source.start()
    source.rows(f"ALTER SYSTEM RESET {FENCE_SETTING}")
    source.rows("SELECT pg_reload_conf()")
    source.wait_until(
        f"SELECT current_setting('{FENCE_SETTING}') = 'off'", timeout=30, what="unfenced"
    )


def replayed_lsn(target: PgInstance) -> int:
    return parse_lsn(target.value("SELECT coalesce(pg_last_wal_replay_lsn(), '0/0')"))


def wait_replayed(target: PgInstance, final_lsn: int, *, timeout: float = 300.0) -> int:
    """Wait until the target has replayed the source's shutdown checkpoint (the record *at*
    `final_lsn`; replay positions are record ends, so past it means through it)."""
    target.wait_until(
        f"SELECT pg_last_wal_replay_lsn() > '{format_lsn(final_lsn)}'::pg_lsn",
        timeout=timeout,
        what=f"replay past the source's final position {format_lsn(final_lsn)}",
    )
    return replayed_lsn(target)


def verify_positions(target: PgInstance, final_lsn: int) -> int:
    """The last check before the point of no return: the target is still a standby, and it has
    replayed through the source's final record (the shutdown checkpoint, after which the
    stopped source wrote nothing, so past it is exactly everything)."""
    row = target.rows(
        "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn(), pg_last_wal_receive_lsn()"
    )[0]
    if row[0] != "t":
        raise MigrationStepError("target is not in recovery: it was opened outside the saga")
    replayed = parse_lsn(row[1])
    if replayed <= final_lsn:
        raise MigrationStepError(
            f"target replayed {format_lsn(replayed)}, not past the source's final "
            f"{format_lsn(final_lsn)}",
            retryable=True,
        )
    return replayed


def promote_target(target: PgInstance, final_lsn: int, *, timeout: float = 120.0) -> int:
    """The point of no return: promote the verified standby and wait until it accepts writes.

    Rerunnable: a target already promoted is not promoted again. Returns the position the
    target was opened at (its replay position when promoted).
    """
    if target.value("SELECT pg_is_in_recovery()") == "t":
        opened_at = verify_positions(target, final_lsn)
        target.rows("SELECT pg_promote(true, :'wait')", {"wait": str(int(timeout))})
    else:
        opened_at = parse_lsn(target.value("SELECT pg_current_wal_lsn()"))
    target.wait_until(
        "SELECT NOT pg_is_in_recovery() AND current_setting('transaction_read_only') = 'off'",
        timeout=timeout,
        what="target accepting writes",
    )
    return opened_at
