"""One valid payload per migration message type (merged into the contract test's examples)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from schemas import DatabaseRef, Engine, Lsn, Payload, uuid7
from schemas.messages import (
    AbortMigration,
    AcknowledgeCutover,
    ConnectionEndpoint,
    CutoverMigration,
    CutoverStarting,
    CutoverStep,
    CutoverWindow,
    Failure,
    LagBudget,
    MigrationCompleted,
    MigrationFailed,
    MigrationMethod,
    MigrationPhase,
    MigrationPhaseChanged,
    MigrationProgress,
    MigrationReady,
    MigrationRequested,
    MigrationRolledBack,
    PauseMigration,
    RequestMigration,
    ResumeMigration,
    RollbackMigration,
    RunMigrationCopy,
    RunMigrationFence,
    RunMigrationFinalSync,
    RunMigrationLag,
    RunMigrationParity,
    RunMigrationPreflight,
    RunMigrationPrepare,
    RunMigrationPromote,
    RunMigrationRewind,
    RunMigrationUnfence,
    TargetInstance,
)

T0 = datetime(2026, 1, 31, 12, 0, tzinfo=UTC)
SOURCE = DatabaseRef(uid="orders-db", engine=Engine.POSTGRES, name="orders", system_id=7_312_001)
TARGET = DatabaseRef(uid="orders-db-new", engine=Engine.POSTGRES, name="orders")
INSTANCE = TargetInstance(
    database=TARGET, node="db-node-2", data_dir="/var/lib/postgresql/orders-new", port=5433
)
MIGRATION, JOB = uuid7(), uuid7()
WINDOW = CutoverWindow(start=T0 + timedelta(days=1), end=T0 + timedelta(days=1, hours=2))
LAG = LagBudget(max_bytes=16 << 20, max_seconds=2.0, hold_s=120.0)
ENDPOINT = ConnectionEndpoint(host="orders-new.db.svc", port=5433, database="orders")
FINAL = Lsn.parse("16/B4000060")
STEP = {
    "migration_id": MIGRATION,
    "target": TARGET.uid,
    "job_id": JOB,
    "source": SOURCE.uid,
    "method": MigrationMethod.PHYSICAL_STREAM,
    "target_instance": INSTANCE,
}
IDS = {"migration_id": MIGRATION, "target": TARGET.uid}

MIGRATION_EXAMPLES: dict[str, Callable[[], tuple[Payload, DatabaseRef]]] = {
    "migration.request": lambda: (
        RequestMigration(
            migration_id=MIGRATION,
            target_instance=INSTANCE,
            method=MigrationMethod.PHYSICAL_STREAM,
            windows=[WINDOW],
            downtime_budget_s=5.0,
            lag=LAG,
            participants=["weblogic-orders"],
        ),
        SOURCE,
    ),
    "migration.pause": lambda: (PauseMigration(**IDS), SOURCE),
    "migration.resume": lambda: (
        ResumeMigration(**IDS, pause_after=MigrationPhase.CATCHING_UP),
        SOURCE,
    ),
    "migration.cutover": lambda: (CutoverMigration(**IDS), SOURCE),
    "migration.abort": lambda: (AbortMigration(**IDS, reason="window moved"), SOURCE),
    "migration.rollback": lambda: (RollbackMigration(**IDS), SOURCE),
    "migration.cutover_ack": lambda: (
        AcknowledgeCutover(**IDS, participant="weblogic-orders"),
        SOURCE,
    ),
    "migration.requested": lambda: (
        MigrationRequested(
            **IDS,
            method=MigrationMethod.PHYSICAL_STREAM,
            target_instance=INSTANCE,
            windows=[WINDOW],
            downtime_budget_s=5.0,
            lag=LAG,
            pause_after=MigrationPhase.READY,
            reason="onto the platform",
        ),
        SOURCE,
    ),
    "migration.phase": lambda: (
        MigrationPhaseChanged(
            **IDS,
            phase=MigrationPhase.CATCHING_UP,
            progress=MigrationProgress(
                bytes_copied=1 << 30, bytes_total=1 << 30, lag_bytes=4096, lag_seconds=0.2
            ),
        ),
        SOURCE,
    ),
    "migration.ready": lambda: (
        MigrationReady(**IDS, lag_bytes=0, lag_seconds=0.0, held_s=120.0, next_window=WINDOW),
        SOURCE,
    ),
    "migration.cutover_starting": lambda: (
        CutoverStarting(
            **IDS, participants=["weblogic-orders"], ack_deadline=T0 + timedelta(minutes=5)
        ),
        SOURCE,
    ),
    "migration.completed": lambda: (
        MigrationCompleted(
            **IDS,
            method=MigrationMethod.PHYSICAL_STREAM,
            downtime_s=1.4,
            fenced_at=T0,
            target_writable_at=T0 + timedelta(seconds=1.4),
            source_final=FINAL,
            target_final=FINAL,
            endpoint=ENDPOINT,
        ),
        SOURCE,
    ),
    "migration.failed": lambda: (
        MigrationFailed(
            **IDS,
            phase=MigrationPhase.CUTTING_OVER,
            step=CutoverStep.FINAL_SYNC,
            point_of_no_return_passed=False,
            source_serving=True,
            failure=Failure(reason="target did not reach 16/B4000060 in 60 s", retryable=True),
        ),
        SOURCE,
    ),
    "migration.rolled_back": lambda: (
        MigrationRolledBack(**IDS, source_position=FINAL, target_following=True, endpoint=ENDPOINT),
        SOURCE,
    ),
    "migration.preflight": lambda: (RunMigrationPreflight(**STEP), SOURCE),
    "migration.prepare": lambda: (RunMigrationPrepare(**STEP), SOURCE),
    "migration.copy": lambda: (RunMigrationCopy(**STEP), SOURCE),
    "migration.lag": lambda: (RunMigrationLag(**STEP), SOURCE),
    "migration.fence": lambda: (RunMigrationFence(**STEP), SOURCE),
    "migration.unfence": lambda: (RunMigrationUnfence(**STEP), SOURCE),
    "migration.final_sync": lambda: (RunMigrationFinalSync(**STEP, source_final=FINAL), SOURCE),
    "migration.parity": lambda: (RunMigrationParity(**STEP), SOURCE),
    "migration.promote": lambda: (RunMigrationPromote(**STEP, source_final=FINAL), SOURCE),
    "migration.rewind": lambda: (RunMigrationRewind(**STEP), SOURCE),
}
