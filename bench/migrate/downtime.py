"""Downtime of a cutover, as a client of the database sees it, and the ledger's verdict.

Downtime runs from `Fence.started_monotonic` — the monotonic clock read by `fence_source` just
before it raises the fence (the first thing it does; from then on the source stops accepting
writes) — to the monotonic time at which the first INSERT on the promoted target returned from
its COMMIT. The INSERTs come from `FirstWrite`: one TCP session to the target, opened while it
is still a standby (so no connection set-up is billed to the cutover, as for a client whose
pool already points at the new address), trying `INSERT INTO migrate_probe` every
`POLL_INTERVAL` seconds from before the fence on; each try during recovery fails with
"cannot execute INSERT in a read-only transaction". Everything between those two instants is
billed: the fence (read-only default, sessions ended, the source's clean shutdown with its
shutdown checkpoint), the wait until the target replayed past that checkpoint, the promotion
(end-of-recovery checkpoint included) and the polling granularity (≤ `POLL_INTERVAL`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import psycopg

from services.engines.postgres.migration import Fence
from tests.integration.migration_rig import Writer

POLL_INTERVAL = 0.005


class FirstWrite:
    """Tries an INSERT on the target until one commits; `committed_at` is when it returned."""

    def __init__(self, dsn: str, round_no: int, method: str) -> None:
        self.dsn = dsn
        self.params = (round_no, method)
        self.committed_at: float | None = None
        self.tries = 0
        self._stop = threading.Event()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="first-write", daemon=True)
        self._ready = threading.Event()

    def start(self, timeout: float = 30.0) -> FirstWrite:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("could not connect to the target before the cutover")
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with psycopg.connect(self.dsn, autocommit=True, connect_timeout=2) as conn:
                    self._ready.set()
                    while not self._stop.is_set():
                        self.tries += 1
                        try:
                            conn.execute(
                                "INSERT INTO migrate_probe (round, method) VALUES (%s, %s)",
                                self.params,
                            )
                        except psycopg.errors.ReadOnlySqlTransaction:
                            time.sleep(POLL_INTERVAL)
                            continue
                        self.committed_at = time.monotonic()
                        self._done.set()
                        return
            except psycopg.OperationalError:
                time.sleep(POLL_INTERVAL)  # the connection broke (a restart): open another

    def wait(self, timeout: float) -> float:
        if not self._done.wait(timeout):
            self._stop.set()
            raise TimeoutError(f"no write committed on the target within {timeout:g} s")
        assert self.committed_at is not None
        return self.committed_at

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


@dataclass(frozen=True)
class Cutover:
    """One cutover: the seconds from the fence's start to each step's end, and the ledger."""

    started: float
    """`Fence.started_monotonic`: the instant every other figure counts from."""
    fenced_s: float
    """`fence_source` returned: the source is down at its final position."""
    replayed_s: float
    """The target replayed past the final position."""
    promoted_s: float
    """`promote_target` returned (it polls until the target accepts writes)."""
    downtime_s: float
    """The first INSERT committed on the target (see the module's docstring)."""
    acked: int
    """Commits the ledger writer was told succeeded, on the source, in this round."""
    acked_while_fencing: int
    """…of which after the fence began, before `fence_source` returned (legitimate: they are
    in the WAL before the shutdown checkpoint; they must be on the target like every other)."""
    acked_after_fence: int
    """…acknowledged after the source was stopped: impossible unless the fence leaks."""
    missing: int
    """Acknowledged commits not on the promoted target."""

    @property
    def lost_commits(self) -> int:
        return self.missing + self.acked_after_fence


def measure_cutover(
    *,
    target_dsn: str,
    round_no: int,
    method: str,
    writer: Writer,
    fence: Callable[[], Fence],
    replay: Callable[[Fence], object],
    promote: Callable[[Fence], object],
    ledger_on_target: Callable[[], set[int]],
    stop_load: Callable[[], None],
    timeout: float = 300.0,
) -> Cutover:
    """fence → replay → promote, timed from the fence's start; then the ledger checked."""
    poller = FirstWrite(target_dsn, round_no, method).start()
    try:
        raised = fence()
        fenced = time.monotonic()
        replay(raised)
        replayed = time.monotonic()
        promote(raised)
        promoted = time.monotonic()
        first_write = poller.wait(timeout)
    finally:
        poller.stop()
    # The writer keeps knocking on the stopped source meanwhile; any success would show here.
    stop_load()
    start = raised.started_monotonic
    ledger = judge_ledger(writer, start, fenced, ledger_on_target())
    return Cutover(
        started=start,
        fenced_s=fenced - start,
        replayed_s=replayed - start,
        promoted_s=promoted - start,
        downtime_s=first_write - start,
        acked=ledger.acked,
        acked_while_fencing=ledger.acked_while_fencing,
        acked_after_fence=ledger.acked_after_fence,
        missing=ledger.missing,
    )


@dataclass(frozen=True)
class Ledger:
    """The ledger writer's verdict on one cutover (the same counts as `Cutover`'s)."""

    acked: int
    acked_while_fencing: int
    acked_after_fence: int
    missing: int

    @property
    def lost_commits(self) -> int:
        return self.missing + self.acked_after_fence


def judge_ledger(writer: Writer, started: float, fenced: float, on_target: set[int]) -> Ledger:
    """Every commit the writer saw acknowledged must be on the target; none may have been
    acknowledged after the fence step returned (`fenced`), counted from `started`."""
    acked = dict(writer.acked)
    return Ledger(
        acked=len(acked),
        acked_while_fencing=sum(1 for t in acked.values() if started <= t < fenced),
        acked_after_fence=sum(1 for t in acked.values() if t >= fenced),
        missing=len(set(acked) - on_target),
    )
