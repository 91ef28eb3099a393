"""Point-in-time restore through the whole stack, checked against what was really written.

One stack (nats-server + planner, executor, archiver, catalog as child processes) serves the
module, with two real PostgreSQL clusters archiving through Tidemark from their first segment:

- `pitr-src`: a writer commits small transactions before and after a base backup and keeps a
  ledger (`services/demo/ledger.py`) of the table after each commit; every restore is checked
  row for row against the ledger entry its target must produce;
- `pitr-bulk`: grown to about 200 MB so that its base backup lasts long enough to kill the
  executor in the middle of it.

The GCS test runs its own stack with the store on the GCS emulator, before the shared one
starts (two stacks at once would double the load). The in-place restore moves `pitr-src` onto
timeline 2, so the tests that need it come last. Order matters only through that shared
cluster: each test takes its own targets from the ledger and its own clone directory.

`TIDEMARK_E2E_KEEP=1` keeps the state directories (service logs, store, clusters) in /var/tmp.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from schemas.messages import (
    BackupCompleted,
    BackupFailed,
    JobAccepted,
    JobFailed,
    JobProgress,
    RequestBackup,
    RequestRejected,
    RequestRestore,
    RestoreCompleted,
    RestoreMode,
    RestoreRequested,
    RunRestore,
    TargetImmediate,
    TargetPosition,
    TargetTime,
)
from services.blobstore import open_store
from services.bus import PLANS_BUCKET
from services.demo.ledger import Entry, Ledger, table_state
from services.engines.postgres.manifest import manifest_key
from services.planner.keys import step_id
from tests.e2e.pitr_stack import (
    PitrStack,
    Protected,
    Restored,
    protect,
    run_cli,
    stop_cluster_in,
)
from tests.fixtures.gcs import GcsEmulator

pytestmark = pytest.mark.e2e

DISPATCH_TYPES = {RunRestore.TYPE, RestoreRequested.TYPE, JobAccepted.TYPE}


def _fresh_root(prefix: str) -> Path:
    root = Path(tempfile.mkdtemp(prefix=prefix, dir="/var/tmp"))
    os.chmod(root, 0o711)  # noqa: S103 (the database OS user traverses it)
    return root


def _source_state(db: Protected) -> tuple[int, str]:
    return table_state(db.cluster, port=db.cluster.port, host=db.cluster.base)


def _writes(ledger: Ledger, count: int, pause_s: float = 0.12) -> None:
    for _ in range(count):
        ledger.write()
        time.sleep(pause_s)


def _shows(entry: Entry) -> tuple[int, str]:
    return entry.rows, entry.checksum


# -- the shared stack -----------------------------------------------------------------------------


KEEP = os.environ.get("TIDEMARK_E2E_KEEP") == "1"
"""Keep the state directories (logs, store, clusters) to look at after a failure."""


def _remove(root: Path) -> None:
    if KEEP:
        print(f"kept {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def root() -> Iterator[Path]:
    path = _fresh_root("tm-e2e-pitr-")
    try:
        yield path
    finally:
        _remove(path)


@pytest_asyncio.fixture(scope="module")
async def pitr(root: Path) -> AsyncIterator[PitrStack]:
    dbs = [protect(root, "pitr-src"), protect(root, "pitr-bulk")]
    try:
        stack = await PitrStack.start(root, dbs)
    except BaseException:
        for db in dbs:
            with contextlib.suppress(Exception):
                db.cluster.stop()
        raise
    try:
        yield stack
    finally:
        await stack.close()


@dataclass
class History:
    """`pitr-src`'s writing: a ledger across a base backup, wholly inside the window."""

    stack: PitrStack
    db: Protected
    ledger: Ledger
    at_backup: Entry
    """The last commit before the base backup: what the backup's consistent point shows."""
    backup: BackupCompleted

    def moment(self, seed: int) -> tuple[datetime, Entry]:
        return self.ledger.pick_moment(self.backup.completed_at, random.Random(seed))


@pytest_asyncio.fixture(scope="module")
async def history(pitr: PitrStack) -> History:
    db = pitr.dbs[0]
    ledger = await asyncio.to_thread(Ledger.start, db.cluster)
    await asyncio.to_thread(_writes, ledger, 2)
    at_backup = ledger.entries[-1]
    backup = await pitr.backup(db, "e2e: the base the restores start from")
    await asyncio.to_thread(_writes, ledger, 12)
    await asyncio.to_thread(db.switch_wal)
    await pitr.wait_covered(db, ledger.entries[-1].lsn)
    return History(pitr, db, ledger, at_backup, backup)


# -- 2. the store on the GCS emulator (first: before the shared stack starts) ---------------------


async def test_a_time_target_restores_from_a_gcs_store(
    gcs_emulator: GcsEmulator, gcs_bucket: str
) -> None:
    root = _fresh_root("tm-e2e-gcs-")
    store_url = f"gs://{gcs_bucket}/archive?endpoint={gcs_emulator.endpoint}"
    db = protect(root, "pitr-gcs")
    try:
        stack = await PitrStack.start(root, [db], store_url=store_url)
        try:
            ledger = await asyncio.to_thread(Ledger.start, db.cluster)
            await asyncio.to_thread(_writes, ledger, 1)
            backup = await stack.backup(db)
            await asyncio.to_thread(_writes, ledger, 8)
            await asyncio.to_thread(db.switch_wal)
            await stack.wait_covered(db, ledger.entries[-1].lsn)
            at, expected = ledger.pick_moment(backup.completed_at, random.Random(2))

            restored = await stack.restore(db, TargetTime(at=at), clone="gcs-time")
            try:
                assert restored.table() == _shows(expected), f"target {at.isoformat()}"
            finally:
                restored.stop_clone()

            store = open_store(store_url)
            try:
                manifest = manifest_key("", db.uid, backup.backup_id)
                assert await store.head(manifest) is not None, "the base is in the bucket"
            finally:
                await store.close()
            assert not (root / "stack" / "store").exists(), "nothing went to a file store"
        finally:
            await stack.close()
    finally:
        with contextlib.suppress(Exception):
            db.cluster.stop()
        _remove(root)


# -- 1. several targets into clones; the source untouched ----------------------------------------


async def test_time_position_and_immediate_targets_each_restore_the_ledger_exactly(
    history: History,
) -> None:
    pitr, db, ledger = history.stack, history.db, history.ledger
    source_before = await asyncio.to_thread(_source_state, db)
    at, at_time = history.moment(seed=5)
    after_backup = [e for e in ledger.entries if e.committed_at > history.backup.completed_at]
    at_lsn = after_backup[len(after_backup) // 2]
    targets: list[tuple[str, Any, Entry]] = [
        ("time", TargetTime(at=at), at_time),
        ("lsn", TargetPosition(position=at_lsn.lsn), at_lsn),
        ("immediate", TargetImmediate(), history.at_backup),
    ]
    for name, target, expected in targets:
        restored = await pitr.restore(db, target, clone=f"targets-{name}")
        try:
            assert await asyncio.to_thread(restored.table) == _shows(expected), (
                f"{name} target {target}: the clone differs from the ledger"
            )
            assert restored.completed.lineage.key == "tl-00000002", "a clone opens a new timeline"
        finally:
            await asyncio.to_thread(restored.stop_clone)
        assert restored.clone_dir is not None
        assert not (restored.clone_dir / "postmaster.pid").exists(), "the clone is stopped"

    assert await asyncio.to_thread(_source_state, db) == source_before, "the source is untouched"
    entry = await asyncio.to_thread(ledger.write)
    assert entry.rows == source_before[0] + 5, "the source still accepts writes"
    await asyncio.to_thread(db.switch_wal)
    await pitr.wait_covered(db, entry.lsn)  # and still archives: a new segment was catalogued


async def test_the_window_ends_by_time_and_by_lsn_each_restore_to_the_last_archived_commit(
    history: History,
) -> None:
    """A window's end is where the archive ends, not a commit: PostgreSQL needs a record past a
    target to stop at it, and there is none past the end. A target there (or just past the
    last commit) must land on the last archived commit, never on a FATAL after "restorable"."""
    pitr, db, ledger = history.stack, history.db, history.ledger
    await asyncio.to_thread(db.switch_wal)
    last = ledger.entries[-1]
    view = await pitr.wait_covered(db, last.lsn)
    [window] = [w for w in view.windows if w.lineage == "tl-00000001" and w.end >= last.lsn]
    assert window.end_time is not None
    archived = [e for e in ledger.entries if e.lsn <= window.end]
    expected = archived[-1]
    targets: list[tuple[str, Any]] = [
        ("end-time", TargetTime(at=window.end_time)),
        ("end-lsn", TargetPosition(position=window.end)),
        ("after-last-commit", TargetTime(at=expected.committed_at + timedelta(microseconds=1))),
    ]
    for name, target in targets:
        check = await pitr.catalog.check(db.uid, target)
        assert check.restorable, f"{name}: the catalog says {check.reason}"
        restored = await pitr.restore(db, target, clone=f"window-{name}")
        try:
            assert await asyncio.to_thread(restored.table) == _shows(expected), (
                f"{name} target {target}: the clone is not the last archived commit"
            )
        finally:
            await asyncio.to_thread(restored.stop_clone)


# -- 4. targets outside the window ---------------------------------------------------------------


async def test_targets_outside_the_window_are_refused_with_the_reason_and_nothing_runs(
    history: History,
) -> None:
    pitr, db = history.stack, history.db
    too_early = history.ledger.entries[0].committed_at - timedelta(seconds=1)
    future = datetime.now(UTC) + timedelta(hours=1)
    for label, at, nearest in (("early", too_early, "after"), ("future", future, "before")):
        spec = pitr.clone_spec(f"refused-{label}")
        request = RequestRestore(
            target=TargetTime(at=at), mode=RestoreMode.CLONE, clone=spec, reason="e2e: refused"
        )
        mark = pitr.recorder.mark()
        answer = await pitr.planner.request(request, db.ref)
        assert isinstance(answer, RequestRejected), f"{label}: {answer}"
        assert answer.code == "TM-PLAN-NOT-RESTORABLE", answer
        assert "cannot be restored to that target" in answer.reason, answer.reason
        if nearest == "after":
            assert answer.nearest_after is not None, answer
            assert answer.nearest_after_time is not None
            assert answer.nearest_after_time > too_early
        else:
            assert answer.nearest_before is not None, answer
            assert answer.nearest_before_time is not None
            assert answer.nearest_before_time < future
        await asyncio.sleep(2.0)  # what a dispatch would publish comes within milliseconds
        dispatched = [e.type for e in pitr.recorder.since(mark) if e.type in DISPATCH_TYPES]
        assert dispatched == [], f"{label}: a refused restore was dispatched"
        assert not Path(spec.data_dir).parent.exists(), "no clone directory for a refusal"


# -- the CLI ---------------------------------------------------------------------------------------


async def test_cli_restore_into_a_clone_prints_the_result_and_refuses_a_malformed_time(
    history: History,
) -> None:
    pitr, db = history.stack, history.db
    at, expected = history.moment(seed=7)
    spec = pitr.clone_spec("cli")
    code, out = await run_cli(
        "restore",
        db.uid,
        "--to",
        at.isoformat(),
        "--into",
        spec.data_dir,
        "--port",
        str(spec.port),
        "--state-dir",
        str(pitr.stack.state_dir),
        "--timeout",
        "240",
    )
    try:
        assert code == 0, out[-3000:]
        assert "accepted" in out, out
        assert "restored to" in out, out
        assert "open on tl-00000002" in out, out
        state = await asyncio.to_thread(
            table_state, db.cluster, port=spec.port, host=db.cluster.base
        )
        assert state == _shows(expected), f"the CLI's clone at {at.isoformat()}"
    finally:
        await asyncio.to_thread(stop_cluster_in, Path(spec.data_dir))

    bad = pitr.clone_spec("cli-malformed")
    mark = pitr.recorder.mark()
    code, out = await run_cli(
        "restore",
        db.uid,
        "--to",
        "yesterday at noon",
        "--into",
        bad.data_dir,
        "--port",
        str(bad.port),
        "--state-dir",
        str(pitr.stack.state_dir),
    )
    assert code != 0, out
    assert "is not a time" in out, out
    assert "ISO 8601" in out, out
    await asyncio.sleep(1.0)
    sent = [e.type for e in pitr.recorder.since(mark) if e.type == RequestRestore.TYPE]
    assert sent == [], "a malformed time reached the planner"
    assert not Path(bad.data_dir).parent.exists()


# -- 6. the planner killed mid-restore ----------------------------------------------------------


async def test_a_restore_completes_when_the_planner_is_killed_after_dispatching_it(
    history: History,
) -> None:
    pitr, db = history.stack, history.db
    at, expected = history.moment(seed=13)
    killed: dict[str, int] = {}

    def kill_planner(_requested: Any) -> None:
        killed["pid"] = pitr.kill("planner")

    restored = await pitr.restore(
        db, TargetTime(at=at), clone="planner-killed", on_requested=kill_planner
    )
    try:
        assert "pid" in killed
        assert await asyncio.to_thread(restored.table) == _shows(expected)
    finally:
        await asyncio.to_thread(restored.stop_clone)
    await pitr.wait_restarted("planner", killed["pid"])
    deadline = time.monotonic() + 60
    while True:
        record = await pitr.plan_record(restored.restore_id)
        if record is not None and record["phase"] == "completed":
            break
        assert time.monotonic() < deadline, f"restore record never completed: {record}"
        await asyncio.sleep(0.3)
    assert record["reached"] is not None
    assert await _lock_of(pitr, db.uid) is None, "the restore's lock is released"


async def _lock_of(pitr: PitrStack, uid: str) -> bytes | None:
    kv = await pitr.nc.jetstream().key_value(PLANS_BUCKET.name)
    try:
        entry = await kv.get(f"lock.{uid}")
    except Exception:
        return None
    return entry.value or None


# -- 5. the executor killed mid-backup ------------------------------------------------------------

BULK_ROWS = 900_000
"""About 200 MB of table: a base backup of it lasts seconds, not milliseconds."""


async def test_an_executor_killed_during_a_base_backup_reports_it_interrupted(
    pitr: PitrStack,
) -> None:
    bulk = pitr.dbs[1]
    await asyncio.to_thread(
        bulk.cluster.psql,
        "CREATE TABLE bulk AS SELECT g AS id, repeat(md5(g::text), 6) AS pad "  # noqa: S608
        f"FROM generate_series(1, {int(BULK_ROWS)}) g",
    )
    mark = pitr.recorder.mark()
    answer = await pitr.accepted(RequestBackup(reason="e2e: to be interrupted"), bulk)
    backup_id = answer.ref_id
    assert backup_id is not None
    job_id = step_id(answer.command_id, "job")
    await pitr.recorder.wait_for(
        lambda e: (
            isinstance(e.data, JobProgress) and e.data.job_id == job_id and e.data.phase == "copy"
        ),
        since=mark,
        timeout=120,
        what="the backup's first copy progress",
    )
    old_pid = pitr.kill("executor")

    failed = await pitr.recorder.wait_for(
        lambda e: isinstance(e.data, JobFailed) and e.data.job_id == job_id,
        since=mark,
        timeout=120,
        what="job.failed of the interrupted backup",
    )
    assert failed.data.interrupted is True, failed.data
    assert failed.data.failure.code == "TM-JOB-INTERRUPTED", failed.data
    ends = [
        e.data
        for e in pitr.recorder.since(mark)
        if isinstance(e.data, BackupCompleted | BackupFailed) and e.data.backup_id == backup_id
    ]
    assert ends, "backup.failed of the interrupted backup"
    assert all(isinstance(d, BackupFailed) for d in ends), ends
    store = open_store(pitr.store_url)
    try:
        assert await store.head(manifest_key("", bulk.uid, backup_id)) is None
    finally:
        await store.close()

    await pitr.wait_restarted("executor", old_pid)
    deadline = time.monotonic() + 30
    while await _lock_of(pitr, bulk.uid) is not None:
        assert time.monotonic() < deadline, "the interrupted backup's lock was never released"
        await asyncio.sleep(0.2)
    again = await pitr.backup(bulk, "e2e: after the interrupted one")
    assert again.backup_id != backup_id


# -- 3. restore after restore: the new timeline ---------------------------------------------------


@dataclass
class Timeline2:
    """`pitr-src` restored in place to T1 (a moment on timeline 1), then written to again."""

    in_place: Restored
    t1: datetime
    at_t1: Entry
    ledger: Ledger
    """The writing on timeline 2: its first entry is T1's table plus one commit."""


@pytest_asyncio.fixture(scope="module")
async def timeline_2(history: History) -> Timeline2:
    pitr, db = history.stack, history.db
    t1, at_t1 = history.moment(seed=17)
    in_place = await pitr.restore(db, TargetTime(at=t1), clone=None)
    on_tl2 = Ledger(db.cluster, [])
    if isinstance(in_place.done.data, RestoreCompleted):
        await asyncio.to_thread(_writes, on_tl2, 8)
        await asyncio.to_thread(db.switch_wal)
    return Timeline2(in_place, t1, at_t1, on_tl2)


async def test_an_in_place_restore_opens_timeline_2_and_keeps_archiving_it(
    history: History, timeline_2: Timeline2
) -> None:
    pitr, db = history.stack, history.db
    completed = timeline_2.in_place.completed
    assert completed.lineage.key == "tl-00000002", completed
    assert completed.reached_time is not None
    assert completed.reached_time <= timeline_2.t1
    first = timeline_2.ledger.entries[0]
    assert first.rows == timeline_2.at_t1.rows + 5, "timeline 2 starts from T1's table"
    # The archiver carries on with the restored cluster: history file and segments of tl 2.
    view = await pitr.wait_covered(db, timeline_2.ledger.entries[-1].lsn, lineage="tl-00000002")
    lineage = next(v for v in view.lineages if v.key == "tl-00000002")
    assert lineage.parent == "tl-00000001", lineage
    assert lineage.branch_at == completed.reached, (lineage, completed)


async def test_a_position_on_timeline_2_restores_through_the_branch(
    history: History, timeline_2: Timeline2
) -> None:
    pitr, db = history.stack, history.db
    entries = timeline_2.ledger.entries
    await pitr.wait_covered(db, entries[-1].lsn, lineage="tl-00000002")
    target = entries[len(entries) // 2]
    restored = await pitr.restore(db, TargetPosition(position=target.lsn), clone="timeline-2-lsn")
    try:
        assert await asyncio.to_thread(restored.table) == _shows(target), (
            f"the clone at {target.lsn} on timeline 2"
        )
    finally:
        await asyncio.to_thread(restored.stop_clone)


async def test_a_time_on_timeline_2_restores_the_timeline_2_ledger(
    history: History, timeline_2: Timeline2
) -> None:
    pitr, db = history.stack, history.db
    await pitr.wait_covered(db, timeline_2.ledger.entries[-1].lsn, lineage="tl-00000002")
    t2, at_t2 = timeline_2.ledger.pick_moment(timeline_2.t1, random.Random(19))
    assert t2 > timeline_2.t1
    restored = await pitr.restore(db, TargetTime(at=t2), clone="timeline-2-time")
    try:
        assert await asyncio.to_thread(restored.table) == _shows(at_t2), (
            f"the clone at {t2.isoformat()} on timeline 2"
        )
    finally:
        await asyncio.to_thread(restored.stop_clone)
