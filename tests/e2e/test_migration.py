"""Migration through the whole stack on real PostgreSQL: a platform tool asks the planner, the
saga drives the executor's steps, and a writer keeps a ledger of every commit the source (and
then the target) acknowledged.

One stack (nats-server + planner, executor, archiver, catalog as child processes) serves the
module, with two real PostgreSQL clusters hosted by its executor; each migration builds its
target beside its source, in a fresh directory. What each test proves:
- bad requests are rejected with the reason before anything changes;
- abort before the cutover leaves the source serving (and its slot dropped);
- the cutover loses no acknowledged commit, accepts none on the source after the target took
  writes, reports its downtime, and the planner survives a SIGKILL while catching up;
- rollback after the point of no return brings the old source back with the target's commits.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from schemas import DatabaseRef, Engine, Envelope, utcnow
from schemas.messages import (
    AbortMigration,
    AcknowledgeCutover,
    CutoverMigration,
    CutoverStarting,
    CutoverWindow,
    JobFailed,
    JobProgress,
    JobSucceeded,
    LagBudget,
    MigrationCompleted,
    MigrationFailed,
    MigrationMethod,
    MigrationPhase,
    MigrationPhaseChanged,
    MigrationReady,
    MigrationRolledBack,
    MigrationStatusReply,
    MigrationStatusRequest,
    MigrationStepResult,
    MigrationView,
    PauseMigration,
    RequestAccepted,
    RequestMigration,
    RequestRejected,
    ResumeMigration,
    RollbackMigration,
    RunMigrationCopy,
    RunMigrationFence,
    RunMigrationPromote,
    TargetInstance,
)
from services.demo.cluster import free_port
from tests.e2e.migration_stack import NODE, migration_stack, scratch_root, target_dir
from tests.e2e.pitr_stack import PitrStack, Protected, StackFailed, protect, run_cli
from tests.integration.migration_rig import Writer

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


def _trust_local(db: Protected) -> None:
    """The test's writer connects as root over the socket: trust local connections (the
    clusters listen on no TCP port). The target copies this file with the data."""
    hba = db.cluster.data_dir / "pg_hba.conf"
    hba.write_text("local all all trust\n" + hba.read_text(encoding="utf-8"), encoding="utf-8")
    db.cluster.psql("SELECT pg_reload_conf()")
    db.cluster.psql("CREATE TABLE IF NOT EXISTS ledger (id bigint PRIMARY KEY)")


def _dsn(socket_dir: Path, port: int) -> str:
    return f"host={socket_dir} port={port} user=postgres dbname=postgres"


@pytest.fixture(scope="module")
def root() -> Iterator[Path]:
    yield from scratch_root("tm-e2e-mig-")


@pytest_asyncio.fixture(scope="module")
async def stack(root: Path) -> AsyncIterator[PitrStack]:
    def sources() -> list[Protected]:
        dbs = [protect(root, uid) for uid in (f"mig-{x}" for x in "abcdefghi")]
        for db in dbs:
            _trust_local(db)
        return dbs

    async for started in migration_stack(root, sources):
        yield started


def _db(stack: PitrStack, uid: str) -> Protected:
    return next(d for d in stack.dbs if d.uid == uid)


def _request(
    target_uid: str,
    data_dir: Path,
    port: int,
    **changes: Any,
) -> RequestMigration:
    fields: dict[str, Any] = {
        "migration_id": uuid.uuid4(),
        "target_instance": TargetInstance(
            database=DatabaseRef(uid=target_uid, engine=Engine.POSTGRES, name=target_uid),
            node=NODE,
            data_dir=str(data_dir),
            port=port,
        ),
        "method": MigrationMethod.PHYSICAL_STREAM,
        "downtime_budget_s": 30.0,
        "lag": LagBudget(max_bytes=16 << 20, hold_s=1.0),
        "reason": "e2e",
    }
    fields.update(changes)
    return RequestMigration(**fields)


async def _ask(stack: PitrStack, payload: Any, db: Protected) -> RequestAccepted:
    answer = await stack.planner.request(payload, db.ref)
    if isinstance(answer, RequestRejected):
        raise StackFailed(f"the planner refused {payload.TYPE}: {answer.code} {answer.reason}")
    return answer


async def _wait(
    stack: PitrStack,
    mark: int,
    match: Callable[[Any], bool],
    what: str,
    timeout: float = 180.0,
) -> Envelope[Any]:
    """The first event since `mark` that `match`es, of the migration `mark` was taken for;
    a `migration.failed` of it ends the wait with its reason."""
    migration_id = MARKED[mark]

    def ours(event: Envelope[Any]) -> bool:
        return getattr(event.data, "migration_id", None) == migration_id

    def failed(event: Envelope[Any]) -> bool:
        return isinstance(event.data, MigrationFailed)

    found = await stack.recorder.wait_for(
        lambda e: ours(e) and (match(e.data) or failed(e)), since=mark, timeout=timeout, what=what
    )
    if isinstance(found.data, MigrationFailed) and not match(found.data):
        raise StackFailed(f"the migration failed while waiting for {what}: {found.data.failure}")
    return found


async def _status(stack: PitrStack, migration_id: uuid.UUID) -> MigrationView:
    asked = MigrationStatusRequest(migration_id=migration_id)
    reply = await stack.nc.request(
        "tm.qry.planner.migration", asked.model_dump_json().encode(), timeout=10
    )
    views = MigrationStatusReply.model_validate_json(reply.data).migrations
    assert len(views) == 1, views
    return views[0]


MARKED: dict[int, uuid.UUID] = {}


def _mark(stack: PitrStack, request: RequestMigration) -> int:
    mark = stack.recorder.mark()
    MARKED[mark] = request.migration_id
    return mark


async def _status_until(
    stack: PitrStack, migration_id: uuid.UUID, holds: Callable[[MigrationView], bool], what: str
) -> MigrationView:
    deadline = time.monotonic() + 60
    while True:
        view = await _status(stack, migration_id)
        if holds(view):
            return view
        if time.monotonic() > deadline:
            raise StackFailed(f"the migration's status never showed {what}: {view}")
        await asyncio.sleep(0.2)


def _phase(migration_id: uuid.UUID, phase: MigrationPhase) -> Callable[[Any], bool]:
    return lambda d: (
        isinstance(d, MigrationPhaseChanged) and d.migration_id == migration_id and d.phase is phase
    )


def _ids(db_socket: Path, port: int) -> set[int]:
    import psycopg

    with psycopg.connect(_dsn(db_socket, port), autocommit=True) as conn:
        return {row[0] for row in conn.execute("SELECT id FROM ledger").fetchall()}


# -- tests ------------------------------------------------------------------------------------


async def test_bad_requests_are_rejected_with_the_reason_before_anything_changes(
    stack: PitrStack, root: Path
) -> None:
    db = _db(stack, "mig-a")
    data_dir = target_dir(root, "bad-new")
    cases: list[tuple[RequestMigration, DatabaseRef, str]] = [
        (
            _request("ghost-new", data_dir, free_port()),
            DatabaseRef(uid="ghost", engine=Engine.POSTGRES, name="ghost"),
            "unknown source database 'ghost'",
        ),
        (_request("mig-a", data_dir, free_port()), db.ref, "source and target are the same"),
        (
            _request("mig-b", data_dir, free_port()),
            db.ref,
            "already a database an executor hosts",
        ),
        (
            _request(
                "mig-a-new",
                data_dir,
                free_port(),
                windows=[
                    CutoverWindow(
                        start=utcnow() - timedelta(hours=2), end=utcnow() - timedelta(hours=1)
                    )
                ],
            ),
            db.ref,
            "every cutover window is in the past",
        ),
    ]
    for request, source, reason in cases:
        answer = await stack.planner.request(request, source)
        assert isinstance(answer, RequestRejected), (reason, answer)
        assert reason in answer.reason, answer.reason
    # A target directory that is not empty: refused by the preflight, nothing written to it.
    data_dir.mkdir(mode=0o700)
    (data_dir / "precious.txt").write_text("not ours", encoding="utf-8")
    answer = await stack.planner.request(_request("mig-a-new", data_dir, free_port()), db.ref)
    assert isinstance(answer, RequestRejected), answer
    assert "is not empty" in answer.reason, answer.reason
    assert [p.name for p in data_dir.iterdir()] == ["precious.txt"]
    # A lag budget that cannot be met within the downtime budget never reaches the planner.
    with pytest.raises(ValueError, match="exceeds the downtime budget"):
        _request("x", data_dir, 1, lag=LagBudget(max_seconds=60), downtime_budget_s=10)


async def test_abort_before_the_cutover_leaves_the_source_serving_and_drops_its_slot(
    stack: PitrStack, root: Path
) -> None:
    db = _db(stack, "mig-a")
    data_dir = target_dir(root, "abort-new")
    request = _request("mig-a-new", data_dir, free_port())
    mark = _mark(stack, request)
    await _ask(stack, request, db)
    await _wait(stack, mark, lambda d: isinstance(d, MigrationReady), "migration.ready")
    view = await _status_until(
        stack,
        request.migration_id,
        lambda v: "waiting for a cutover command" in (v.waiting or ""),
        "a wait for the cutover command",
    )
    assert view.phase is MigrationPhase.READY
    assert (view.progress.bytes_copied or 0) > 1 << 20
    ids = {"migration_id": request.migration_id, "target": "mig-a-new"}
    await _ask(stack, PauseMigration(**ids), db)
    paused = await _status(stack, request.migration_id)
    assert paused.paused
    assert "paused" in (paused.waiting or "")
    await _ask(stack, ResumeMigration(**ids), db)
    assert not (await _status(stack, request.migration_id)).paused
    await _ask(stack, AbortMigration(migration_id=request.migration_id, target="mig-a-new"), db)
    await _wait(stack, mark, _phase(request.migration_id, MigrationPhase.ABORTED), "aborted")
    db.cluster.psql("INSERT INTO ledger (id) VALUES (-1)")
    assert db.cluster.psql("SELECT count(*) FROM pg_replication_slots") == "0"
    assert db.cluster.psql("SHOW default_transaction_read_only") == "off"
    assert (data_dir / "PG_VERSION").exists()  # the copy is kept, never deleted
    assert not (data_dir / "postmaster.pid").exists()  # but its server is stopped
    view = await _status(stack, request.migration_id)
    phases = [v.phase for v in view.history]
    assert phases[0] is MigrationPhase.VALIDATING
    assert phases[-1] is MigrationPhase.ABORTED
    assert MigrationPhase.CUTTING_OVER not in phases


async def test_the_cutover_loses_no_commit_and_survives_a_planner_killed_while_catching_up(
    stack: PitrStack, root: Path
) -> None:
    db = _db(stack, "mig-a")
    data_dir = target_dir(root, "a-new")
    port = free_port()
    request = _request("mig-a-new2", data_dir, port, lag=LagBudget(max_bytes=16 << 20, hold_s=3))
    writer = Writer(_dsn(db.cluster.base, db.cluster.port), start_id=1).start()
    defiant = Writer(_dsn(db.cluster.base, db.cluster.port), defiant=True, start_id=2).start()
    try:
        mark = _mark(stack, request)
        await _ask(stack, request, db)
        await _wait(
            stack, mark, _phase(request.migration_id, MigrationPhase.CATCHING_UP), "catching_up"
        )
        old = stack.kill("planner")
        await stack.wait_restarted("planner", old)
        await _wait(stack, mark, lambda d: isinstance(d, MigrationReady), "migration.ready")
        assert len(writer.acked) > 10, "the writer wrote nothing while the target was copied"
        await _ask(
            stack, CutoverMigration(migration_id=request.migration_id, target="mig-a-new2"), db
        )
        done = await _wait(
            stack, mark, lambda d: isinstance(d, MigrationCompleted), "migration.completed"
        )
    finally:
        writer.stop()
        defiant.stop()
    completed: MigrationCompleted = done.data
    acked = set(writer.acked) | set(defiant.acked)
    on_target = _ids(db.cluster.base, port)
    assert acked <= on_target, f"lost {len(acked - on_target)} acknowledged commits"
    wall = time.time() - time.monotonic()
    writable = completed.target_writable_at.timestamp()
    late = [i for w in (writer, defiant) for i, at in w.acked.items() if at + wall > writable]
    assert late == [], f"the source acknowledged {late} after the target accepted writes"
    assert 0 < completed.downtime_s < request.downtime_budget_s
    assert completed.target_final > completed.source_final
    assert completed.endpoint.port == port
    print(f"physical-stream cutover downtime {completed.downtime_s:.2f} s, {len(acked)} commits")
    view = await _status(stack, request.migration_id)
    assert view.phase is MigrationPhase.COMPLETED
    assert view.point_of_no_return_passed
    steps = [v.step for v in view.history if v.step is not None]
    assert [s.value for s in steps] == [
        "drain",
        "fence_source",
        "final_sync",
        "verify_positions",
        "open_target",
    ]
    assert view.downtime_estimate_s == pytest.approx(completed.downtime_s)


async def test_rollback_after_the_point_of_no_return_brings_back_the_old_source_with_every_commit(
    stack: PitrStack, root: Path
) -> None:
    db = _db(stack, "mig-b")
    data_dir = target_dir(root, "b-new")
    port = free_port()
    request = _request("mig-b-new", data_dir, port, pause_after=MigrationPhase.VERIFYING)
    source_dsn = _dsn(db.cluster.base, db.cluster.port)
    before = Writer(source_dsn, start_id=1).start()
    mark = _mark(stack, request)
    try:
        await _ask(stack, request, db)
        await _wait(stack, mark, lambda d: isinstance(d, MigrationReady), "migration.ready")
        await _ask(
            stack, CutoverMigration(migration_id=request.migration_id, target="mig-b-new"), db
        )
        await _wait(
            stack,
            mark,
            lambda d: (
                isinstance(d, MigrationPhaseChanged)
                and d.phase is MigrationPhase.VERIFYING
                and d.paused
            ),
            "paused after verifying",
        )
    finally:
        before.stop()
    view = await _status(stack, request.migration_id)
    assert view.paused
    assert view.point_of_no_return_passed
    after = Writer(_dsn(db.cluster.base, port), start_id=100_001).start()
    time.sleep(1.0)
    after.stop()
    assert len(after.acked) > 5
    with pytest.raises(StackFailed, match="point of no return"):
        await _ask(stack, AbortMigration(migration_id=request.migration_id, target="mig-b-new"), db)
    await _ask(stack, RollbackMigration(migration_id=request.migration_id, target="mig-b-new"), db)
    done = await _wait(
        stack, mark, lambda d: isinstance(d, MigrationRolledBack), "migration.rolled_back"
    )
    back: MigrationRolledBack = done.data
    assert not back.target_following  # the target is stopped, its directory kept
    assert not (data_dir / "postmaster.pid").exists()
    assert (data_dir / "PG_VERSION").exists()
    assert back.endpoint.port == db.cluster.port
    on_source = _ids(db.cluster.base, db.cluster.port)
    missing = (set(before.acked) | set(after.acked)) - on_source
    assert not missing, f"{len(missing)} acknowledged commits are not on the old source"
    db.cluster.psql("INSERT INTO ledger (id) VALUES (-2)")  # the old source takes writes again
    with pytest.raises(StackFailed, match="already rolled_back"):
        await _ask(
            stack, ResumeMigration(migration_id=request.migration_id, target="mig-b-new"), db
        )


async def test_physical_archive_builds_the_target_from_the_bucket_and_loses_no_commit(
    stack: PitrStack, root: Path
) -> None:
    db = _db(stack, "mig-c")
    await stack.backup(db)
    data_dir = target_dir(root, "c-new")
    port = free_port()
    request = _request(
        "mig-c-new",
        data_dir,
        port,
        method=MigrationMethod.PHYSICAL_ARCHIVE,
        lag=LagBudget(max_bytes=48 << 20, hold_s=1.0),
    )
    writer = Writer(_dsn(db.cluster.base, db.cluster.port), start_id=1).start()
    try:
        mark = _mark(stack, request)
        await _ask(stack, request, db)
        await _wait(stack, mark, lambda d: isinstance(d, MigrationReady), "migration.ready")
        await _ask(
            stack, CutoverMigration(migration_id=request.migration_id, target="mig-c-new"), db
        )
        done = await _wait(
            stack, mark, lambda d: isinstance(d, MigrationCompleted), "migration.completed"
        )
    finally:
        writer.stop()
    completed: MigrationCompleted = done.data
    on_target = _ids(db.cluster.base, port)
    assert len(writer.acked) > 10
    assert set(writer.acked) <= on_target, f"lost {len(set(writer.acked) - on_target)} commits"
    assert 0 < completed.downtime_s < request.downtime_budget_s
    print(f"physical-archive cutover downtime {completed.downtime_s:.2f} s")
    with pytest.raises(StackFailed, match=r"keeps no way back|already completed"):
        await _ask(
            stack, RollbackMigration(migration_id=request.migration_id, target="mig-c-new"), db
        )


async def test_an_executor_killed_during_the_copy_copies_again_from_a_clean_directory(
    stack: PitrStack, root: Path
) -> None:
    db = _db(stack, "mig-d")
    # About 150 MB, so the copy lasts long enough to kill the executor in the middle of it.
    db.cluster.psql(
        "CREATE TABLE bulk AS SELECT g AS id, repeat(md5(g::text), 30) AS pad "
        "FROM generate_series(1, 150000) g"
    )
    data_dir = target_dir(root, "d-new")
    port = free_port()
    request = _request("mig-d-new", data_dir, port)
    writer = Writer(_dsn(db.cluster.base, db.cluster.port), start_id=1).start()
    try:
        mark = _mark(stack, request)
        await _ask(stack, request, db)
        copying = await stack.recorder.wait_for(
            lambda e: (
                isinstance(e.data, RunMigrationCopy) and e.data.migration_id == request.migration_id
            ),
            since=mark,
            timeout=60,
            what="the copy step",
        )
        await stack.recorder.wait_for(
            lambda e: isinstance(e.data, JobProgress) and e.data.job_id == copying.data.job_id,
            since=mark,
            timeout=60,
            what="the copy's first progress",
        )
        old = stack.kill("executor")
        await stack.wait_restarted("executor", old)
        await _wait(stack, mark, lambda d: isinstance(d, MigrationReady), "migration.ready")
        await _ask(
            stack, CutoverMigration(migration_id=request.migration_id, target="mig-d-new"), db
        )
        await _wait(stack, mark, lambda d: isinstance(d, MigrationCompleted), "completed")
    finally:
        writer.stop()
    copies = {
        e.data.job_id
        for e in stack.recorder.since(mark)
        if isinstance(e.data, RunMigrationCopy) and e.data.migration_id == request.migration_id
    }
    assert len(copies) == 2, "the interrupted copy was not run again as a new attempt"
    interrupted = [
        e.data
        for e in stack.recorder.since(mark)
        if isinstance(e.data, JobFailed) and e.data.job_id == copying.data.job_id
    ]
    assert interrupted
    assert interrupted[0].interrupted
    assert set(writer.acked) <= _ids(db.cluster.base, port)
    assert _count(db, port) == 150000
    assert not data_dir.with_name(".data.tidemark-copy").exists()


def _count(db: Protected, port: int) -> int:
    return int(db.cluster.psql("SELECT count(*) FROM bulk", port=port))


async def test_a_window_waits_and_participants_drain_before_the_fence(
    stack: PitrStack, root: Path
) -> None:
    db = _db(stack, "mig-e")
    data_dir = target_dir(root, "e-new")
    opens = utcnow() + timedelta(seconds=12)
    window = CutoverWindow(start=opens, end=opens + timedelta(minutes=10))
    request = _request(
        "mig-e-new",
        data_dir,
        free_port(),
        windows=[window],
        participants=["app-tier"],
        ack_timeout_s=30.0,
    )
    mark = _mark(stack, request)
    await _ask(stack, request, db)
    await _wait(stack, mark, lambda d: isinstance(d, MigrationReady), "migration.ready")
    view = await _status_until(
        stack,
        request.migration_id,
        lambda v: "outside its cutover windows" in (v.waiting or ""),
        "a wait for the window",
    )
    assert view.phase is MigrationPhase.READY
    # The first call to drain is refused: the cutover is abandoned and nothing is fenced.
    first = await _wait(
        stack, mark, lambda d: isinstance(d, CutoverStarting), "cutover_starting", timeout=60
    )
    assert utcnow() >= opens
    ack = AcknowledgeCutover(
        migration_id=request.migration_id, target="mig-e-new", participant="app-tier"
    )
    await _ask(stack, ack.model_copy(update={"ready": False, "message": "batch running"}), db)
    again = _mark(stack, request)
    await _wait(stack, again, lambda d: isinstance(d, CutoverStarting), "a second cutover_starting")
    db.cluster.psql("INSERT INTO ledger (id) VALUES (-5)")  # still serving: never fenced
    await _ask(stack, ack, db)
    done = await _wait(stack, mark, lambda d: isinstance(d, MigrationCompleted), "completed")
    completed: MigrationCompleted = done.data
    assert completed.fenced_at >= opens
    assert completed.fenced_at > first.occurred_at
    view = await _status(stack, request.migration_id)
    assert any("refused to drain" in v.message for v in view.history), view.history


async def test_the_cli_starts_follows_and_cuts_over_a_migration(
    stack: PitrStack, root: Path
) -> None:
    db = _db(stack, "mig-f")
    data_dir = target_dir(root, "f-new")
    port = free_port()
    state = ("--state-dir", str(stack.stack.state_dir))
    code, out = await run_cli(
        "migrate",
        "start",
        "mig-f",
        "--to",
        "mig-f-new",
        "--node",
        NODE,
        "--method",
        "physical-stream",
        "--data-dir",
        str(data_dir),
        "--port",
        str(port),
        "--lag-max-bytes",
        "16MiB",
        "--lag-hold",
        "1s",
        "--downtime-budget",
        "30s",
        *state,
    )
    assert code == 0, out[-3000:]
    assert "ready" in out, out
    code, out = await run_cli("migrate", "status", "mig-f", *state)
    assert code == 0, out
    assert "ready" in out, out
    code, out = await run_cli("migrate", "cutover", "mig-f", *state)
    assert code == 0, out[-3000:]
    deadline = time.monotonic() + 120
    while True:
        code, out = await run_cli("migrate", "status", "mig-f", "--output", "json", *state)
        assert code == 0, out
        if '"completed"' in out:
            break
        assert time.monotonic() < deadline, out
        await asyncio.sleep(1)
    db.cluster.psql("INSERT INTO ledger (id) VALUES (7)", port=port)


async def test_kills_during_the_cutover_lose_no_commit_and_never_open_two_primaries(
    stack: PitrStack, root: Path
) -> None:
    """The planner is killed as the fence is sent, the executor as the promote is sent: each
    step runs again from its start (the fence and the promote are idempotent), and the source
    stays down once the target is open."""
    db = _db(stack, "mig-g")
    data_dir = target_dir(root, "g-new")
    port = free_port()
    request = _request("mig-g-new", data_dir, port)
    writer = Writer(_dsn(db.cluster.base, db.cluster.port), start_id=1).start()

    def sent(kind: type[Any]) -> Callable[[Envelope[Any]], bool]:
        return lambda e: isinstance(e.data, kind) and e.data.migration_id == request.migration_id

    try:
        mark = _mark(stack, request)
        await _ask(stack, request, db)
        await _wait(stack, mark, lambda d: isinstance(d, MigrationReady), "migration.ready")
        await _ask(
            stack, CutoverMigration(migration_id=request.migration_id, target="mig-g-new"), db
        )
        await stack.recorder.wait_for(sent(RunMigrationFence), since=mark, timeout=60, what="fence")
        old = stack.kill("planner")
        await stack.wait_restarted("planner", old)
        await stack.recorder.wait_for(
            sent(RunMigrationPromote), since=mark, timeout=120, what="promote"
        )
        old = stack.kill("executor")
        await stack.wait_restarted("executor", old)
        done = await _wait(stack, mark, lambda d: isinstance(d, MigrationCompleted), "completed")
    finally:
        writer.stop()
    completed: MigrationCompleted = done.data
    assert set(writer.acked) <= _ids(db.cluster.base, port)
    assert completed.target_final > completed.source_final
    assert not (db.cluster.data_dir / "postmaster.pid").exists(), "the source runs again"
    db.cluster.psql("INSERT INTO ledger (id) VALUES (-7)", port=port)


KILL_AT: dict[str, set[str]] = {
    # The phases the other tests do not kill in already (catching_up and the fence for the
    # planner; the copy and the promote for the executor), and the end, where the final events
    # are owed. `make soak-migrate` kills in every phase and step (TIDEMARK_KILL_EVERY_PHASE=1).
    "planner": {"validating/None", "ready/None", "verifying/open_target", "completed/open_target"},
    "executor": {"validating/None", "catching_up/None", "cutting_over/final_sync"},
}
EVERY_PHASE = os.environ.get("TIDEMARK_KILL_EVERY_PHASE") == "1"


@pytest.mark.parametrize(("uid", "service"), [("mig-h", "planner"), ("mig-i", "executor")])
async def test_a_kill_as_each_phase_begins_resumes_without_a_second_copy_or_a_lost_commit(
    stack: PitrStack, root: Path, uid: str, service: str
) -> None:
    """SIGKILL `service` as the migration enters a phase (or a cutover step): the saga goes on
    from its record, every step runs again from its start, nothing is copied twice after it
    succeeded, and no acknowledged commit is lost."""
    db = _db(stack, uid)
    data_dir = target_dir(root, f"{uid}-new")
    port = free_port()
    request = _request(f"{uid}-new", data_dir, port)
    writer = Writer(_dsn(db.cluster.base, db.cluster.port), start_id=1).start()
    killed: list[str] = []  # every phase/step seen (and killed in, when chosen)
    try:
        mark = _mark(stack, request)
        await _ask(stack, request, db)
        seen = mark
        deadline = time.monotonic() + 300
        while True:
            assert time.monotonic() < deadline, f"stuck after kills in {killed}"
            event = await stack.recorder.wait_for(
                lambda e: (
                    isinstance(e.data, MigrationPhaseChanged | MigrationCompleted)
                    and e.data.migration_id == request.migration_id
                ),
                since=seen,
                timeout=120,
                what=f"the next phase after {killed}",
            )
            seen = (
                stack.recorder.seen.index(
                    next(x for x in stack.recorder.seen[seen:] if x.event is event)
                )
                + 1
            )
            if isinstance(event.data, MigrationCompleted):
                break
            where = f"{event.data.phase}/{event.data.step}"
            if event.data.progress.lag_bytes is not None and where in killed:
                continue  # a progress report of a phase already visited
            if where not in killed:
                killed.append(where)
                if EVERY_PHASE or where in KILL_AT[service]:
                    old = stack.kill(service)
                    await stack.wait_restarted(service, old)
            if event.data.phase is MigrationPhase.READY:
                await _ask(
                    stack,
                    CutoverMigration(migration_id=request.migration_id, target=f"{uid}-new"),
                    db,
                )
    finally:
        writer.stop()
    assert {"validating/None", "copying/None", "catching_up/None", "ready/None"} <= set(killed)
    assert KILL_AT[service] <= set(killed), "a phase chosen for a kill was never seen"
    assert any(k.startswith("cutting_over/") for k in killed)
    copies_done = [
        e.data
        for e in stack.recorder.since(mark)
        if isinstance(e.data, JobSucceeded)
        and isinstance(e.data.result, MigrationStepResult)
        and e.data.result.step == "copy"
        and (e.data.result.bytes_copied or 0) > 0
    ]
    assert len({c.job_id for c in copies_done}) == 1, "a finished copy was made again"
    assert set(writer.acked) <= _ids(db.cluster.base, port)
    assert not (db.cluster.data_dir / "postmaster.pid").exists()
