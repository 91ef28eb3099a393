"""The catalog's in-memory index: one `History` per database plus what the answers need
(object keys, times, backups), and the queries themselves.

The durable copy is the store (`store.py`); this index is rebuilt from it at start-up and updated
per event, so every query is answered from memory in a few binary searches per base.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from pydantic_core import to_json

from schemas import DatabaseRef, Engine, Incarnation, Lsn, Scn, Timeline, format_lsn, utcnow
from schemas.catalog import (
    BackupView,
    CheckReply,
    DatabaseSummary,
    GapView,
    LineageView,
    RestorePlanReply,
    RetentionPreview,
    VerdictCode,
    WindowsReply,
    WindowView,
)
from schemas.messages import (
    BackupCompleted,
    BackupKind,
    LogArchived,
    RestoreTarget,
    TargetImmediate,
    TargetName,
    TargetPosition,
    TargetSequence,
    TargetTime,
    TargetXid,
)
from services.catalog.history import (
    BaseEntry,
    Gap,
    History,
    HistoryConflict,
    LineageEntry,
    LogEntry,
    Verdict,
    Window,
)


class UnknownDatabase(LookupError):
    """No database with that uid has been indexed."""


class NotRestorable(ValueError):
    """A restore plan was asked for a target the catalog cannot restore to."""

    def __init__(self, reply: CheckReply) -> None:
        super().__init__(reply.reason)
        self.reply = reply


class StoredLog(NamedTuple):
    """What the index takes of one log: a `log.archived` (validated on arrival), or its row in
    the store, read back at start-up without building the event again (in this field order:
    `CatalogStore.load_into` builds it from the row's values)."""

    lineage: str
    kind: str
    file_name: str | None
    thread: int
    sequence: int
    first: int | None
    next: int | None
    first_time: datetime | None
    next_time: datetime | None
    archived_at: datetime
    object_key: str
    size_bytes: int
    crc32c: str

    @classmethod
    def of(cls, log: LogArchived) -> StoredLog:
        return cls(
            lineage=log.lineage.key,
            kind=log.kind,
            file_name=log.file_name,
            thread=log.thread,
            sequence=log.sequence,
            first=None if log.first is None else log.first.value,
            next=None if log.next is None else log.next.value,
            first_time=log.first_time,
            next_time=log.next_time,
            archived_at=log.archived_at,
            object_key=log.object_key,
            size_bytes=log.size_bytes,
            crc32c=log.crc32c,
        )


class LogObject(NamedTuple):
    key: str
    size: int
    crc32c: str
    archived_at: datetime


@dataclass
class DatabaseIndex:
    ref: DatabaseRef
    history: History = field(default_factory=History)
    objects: dict[tuple[str, int, int], LogObject] = field(default_factory=dict)
    backups: dict[str, BackupCompleted] = field(default_factory=dict)
    backup_views: dict[str, BackupView] = field(default_factory=dict)
    backups_json: bytes | None = None
    """Every backup's view, serialized in backup id order (`CatalogIndex.windows_json`)."""
    lineage_files: set[str] = field(default_factory=set)
    newest: tuple[datetime, str, int, int] | None = None
    """The newest live log: (archived at, lineage, thread, sequence), a total order so the answer
    does not depend on the order events arrived in, or on a restart."""

    @property
    def last_archived_at(self) -> datetime | None:
        return self.newest[0] if self.newest else None

    @property
    def current_lineage(self) -> str | None:
        """The newest live log's lineage; with no log, the newest backup's."""
        if self.newest is not None:
            return self.newest[1]
        if not self.backups:
            return None
        backup = max(self.backups.values(), key=lambda b: (b.completed_at, b.backup_id))
        return backup.lineage.key

    def forget_log(self, lineage: str, thread: int, sequence: int) -> None:
        gone = self.objects.pop((lineage, thread, sequence), None)
        if gone is not None and self.newest == (gone.archived_at, lineage, thread, sequence):
            self.newest = max(
                ((o.archived_at, *at) for at, o in self.objects.items()), default=None
            )

    def __post_init__(self) -> None:
        self.history.position_text = lambda value: str(self.position(value))

    def position(self, value: int) -> Scn | Lsn:
        return Scn(value=value) if self.ref.engine is Engine.ORACLE else Lsn(value=value)


def _lineage_entry(lineage: Incarnation | Timeline) -> LineageEntry:
    if isinstance(lineage, Timeline):
        if lineage.parent is not None and lineage.branch_lsn is not None:
            return LineageEntry(lineage.key, f"tl-{lineage.parent:08X}", lineage.branch_lsn.value)
        return LineageEntry(lineage.key)
    if lineage.prior_resetlogs_id is not None:
        return LineageEntry(
            lineage.key, f"inc-{lineage.prior_resetlogs_id}", lineage.resetlogs_scn.value
        )
    return LineageEntry(lineage.key)


def _wire_position(engine: Engine) -> Callable[[int], dict[str, Any]]:
    """A position as its model (`Scn`, `Lsn`) is written in JSON, without building the model:
    a plan holds two per object. `test_catalog_index` holds it to the models' own output."""
    if engine is Engine.ORACLE:
        return lambda value: {"value": value, "kind": "scn"}
    return lambda value: {"value": format_lsn(value), "kind": "lsn"}


class CatalogIndex:
    """Every database's history, and the answers to what users ask of it."""

    def __init__(self) -> None:
        self._dbs: dict[str, DatabaseIndex] = {}

    # -- updates --------------------------------------------------------------------------------

    def databases(self) -> list[DatabaseRef]:
        return [db.ref for db in self._dbs.values()]

    def database(self, uid: str) -> DatabaseIndex:
        try:
            return self._dbs[uid]
        except KeyError:
            raise UnknownDatabase(f"no database {uid!r} in the catalog") from None

    def _ensure(self, ref: DatabaseRef) -> DatabaseIndex:
        db = self._dbs.get(ref.uid)
        if db is None:
            db = self._dbs[ref.uid] = DatabaseIndex(ref)
        elif ref.system_id is not None and db.ref.system_id is None:
            db.ref = ref
        return db

    def learn_lineage(self, database: DatabaseRef, lineage: Incarnation | Timeline) -> None:
        self._learn_lineage(self._ensure(database), lineage)

    def _learn_lineage(self, db: DatabaseIndex, lineage: Incarnation | Timeline) -> None:
        entry = _lineage_entry(lineage)
        known = db.history.lineages.get(entry.key)
        if known is None or (known.parent is None and entry.parent is not None):
            db.history.add_lineage(entry)

    def apply_log(self, database: DatabaseRef, log: LogArchived, *, deleted: bool = False) -> bool:
        """Index one stored log; False if it was already indexed (redelivery).

        `deleted`: the store holds a tombstone for this very object (`Recorded.DELETED`); it is
        not indexed, but the threads it names are still threads of its lineage.
        """
        self.learn_log_threads(database, log)
        if deleted:
            return False
        return self.apply_stored_log(database, log.lineage, StoredLog.of(log))

    def learn_log_threads(self, database: DatabaseRef, log: LogArchived) -> None:
        """The threads `log` shows its lineage has, and the stretches any of them was disabled
        on (as `Writer.record_threads` stores them)."""
        if log.kind in ("redo", "wal"):
            self.learn_threads(database, log.lineage, (log.thread,), reported=False)
        if log.enabled_threads:
            self.learn_threads(database, log.lineage, log.enabled_threads, reported=True)
        for disabled in log.disabled_threads or ():
            self.learn_disable(
                database,
                log.lineage,
                disabled.thread,
                disabled.at.value,
                disabled.last_sequence,
                disabled.until.value,
            )

    def learn_disable(
        self,
        database: DatabaseRef,
        lineage: Incarnation | Timeline,
        thread: int,
        at: int,
        last_sequence: int,
        until: int,
    ) -> None:
        """A stretch `thread` of `lineage` has no redo on (`History.add_disable`)."""
        db = self._ensure(database)
        self._learn_lineage(db, lineage)
        db.history.add_disable(lineage.key, thread, at, last_sequence, until)

    def learn_threads(
        self,
        database: DatabaseRef,
        lineage: Incarnation | Timeline,
        threads: Iterable[int],
        *,
        reported: bool,
    ) -> None:
        db = self._ensure(database)
        self._learn_lineage(db, lineage)
        db.history.add_threads(lineage.key, threads, reported=reported)

    def apply_stored_log(
        self, database: DatabaseRef, lineage: Incarnation | Timeline, log: StoredLog
    ) -> bool:
        """Index one log as the store keeps it (start-up reads rows, not events)."""
        db = self._ensure(database)
        self._learn_lineage(db, lineage)
        return self._add_log(db, log)

    def load_logs(
        self, database: DatabaseRef, lineage: Incarnation | Timeline, logs: Iterable[StoredLog]
    ) -> tuple[int, list[HistoryConflict]]:
        """`apply_stored_log` for many logs of one lineage (the start-up load), the database and
        the lineage learnt once: how many logs there were, and the conflicts (each of which left
        its log out)."""
        db = self._ensure(database)
        self._learn_lineage(db, lineage)
        taken = 0
        conflicts = []
        for log in logs:
            taken += 1
            try:
                self._add_log(db, log)
            except HistoryConflict as exc:
                conflicts.append(exc)
        return taken, conflicts

    def _add_log(self, db: DatabaseIndex, log: StoredLog) -> bool:
        key = log.lineage
        if log.kind in ("history", "backup_history") or (log.file_name or "").endswith(".partial"):
            # A `.partial` segment holds the old timeline's WAL only up to the switch, and the
            # new timeline's first segment carries a copy of it: counting the partial as a whole
            # segment would call the rest of it restorable. It stays in the store, not the chain.
            if log.object_key in db.lineage_files:
                return False
            db.lineage_files.add(log.object_key)
            return True
        # Both are present for redo and WAL: the contract's validator enforces it.
        assert log.first is not None
        assert log.next is not None
        added = db.history.add_log(
            LogEntry(
                key,
                log.thread,
                log.sequence,
                log.first,
                log.next,
                log.first_time,
                # PostgreSQL segments carry no times yet: the archive time bounds the segment's
                # commits from above.
                log.next_time or log.archived_at,
            )
        )
        if added:
            db.objects[(key, log.thread, log.sequence)] = LogObject(
                log.object_key, log.size_bytes, log.crc32c, log.archived_at
            )
            newest = (log.archived_at, key, log.thread, log.sequence)
            if db.newest is None or newest > db.newest:
                db.newest = newest
        return added

    def remove_log(self, database_uid: str, lineage: str, thread: int, sequence: int) -> bool:
        db = self.database(database_uid)
        db.forget_log(lineage, thread, sequence)
        return db.history.remove_log(lineage, thread, sequence)

    def apply_backup(self, database: DatabaseRef, backup: BackupCompleted) -> bool:
        db = self._ensure(database)
        if backup.backup_id in db.backups:
            return False
        self._learn_lineage(db, backup.lineage)
        db.backups[backup.backup_id] = backup
        db.backups_json = None
        db.history.add_base(
            BaseEntry(
                backup.backup_id,
                backup.lineage.key,
                backup.start.value,
                backup.consistent_at.value,
                backup.completed_at,
                incremental=backup.spec.kind is BackupKind.INCREMENTAL,
                parent=backup.parent_backup_id,
            )
        )
        return True

    def remove_backup(self, database_uid: str, backup_id: str) -> bool:
        db = self.database(database_uid)
        db.backups.pop(backup_id, None)
        db.backup_views.pop(backup_id, None)
        db.backups_json = None
        return db.history.remove_base(backup_id)

    # -- views ----------------------------------------------------------------------------------

    def snapshot(self, database_uid: str) -> list[tuple[str, int, int]]:
        db = self.database(database_uid)
        return [
            (key, w.start, w.end)
            for key in sorted(db.history.lineages)
            for w in db.history.windows(key)
        ]

    def _window_view(self, db: DatabaseIndex, window: Window) -> WindowView:
        return WindowView(
            lineage=window.lineage,
            start=db.position(window.start),
            end=db.position(window.end),
            start_time=window.start_time,
            end_time=window.end_time,
            bases=list(window.bases),
        )

    def _backup_view(self, db: DatabaseIndex, backup_id: str) -> BackupView:
        # Every window reply lists every backup: each view is built once, not per request.
        view = db.backup_views.get(backup_id)
        if view is None:
            view = db.backup_views[backup_id] = self._new_backup_view(db, backup_id)
        return view

    def _new_backup_view(self, db: DatabaseIndex, backup_id: str) -> BackupView:
        b = db.backups[backup_id]
        return BackupView(
            backup_id=b.backup_id,
            lineage=b.lineage.key,
            kind=b.spec.kind.value,
            start=b.start,
            consistent_at=b.consistent_at,
            completed_at=b.completed_at,
            manifest_key=b.manifest_key,
        )

    def _gap_view(self, db: DatabaseIndex, gap: Gap) -> GapView:
        thread = db.history.threads(gap.lineage).get(gap.thread)
        last = thread.by_next.get(gap.start) if thread else None
        return GapView(
            lineage=gap.lineage,
            thread=gap.thread,
            after_sequence=gap.after_sequence,
            before_sequence=gap.before_sequence,
            start=db.position(gap.start),
            end=db.position(gap.end) if gap.end is not None else None,
            start_time=last.next_time if last else None,
            description=gap.describe(db.history.position_text),
        )

    def gaps(self, db: DatabaseIndex) -> list[GapView]:
        """Holes inside each thread's chain (not the open end after the newest log)."""
        found = []
        for key in sorted(db.history.lineages):
            for number, thread in sorted(db.history.threads(key).items()):
                pairs = thread.cover.intervals()
                for (_, end), (start, _) in itertools.pairwise(pairs):
                    last, nxt = thread.by_next.get(end), thread.by_first.get(start)
                    gap = Gap(
                        key,
                        number,
                        last.sequence if last else None,
                        nxt.sequence if nxt else None,
                        end,
                        start,
                    )
                    found.append(self._gap_view(db, gap))
        return found

    def windows(self, database_uid: str, *, now: datetime | None = None) -> WindowsReply:
        db = self.database(database_uid)
        fields = self._windows_fields(db, now or utcnow())
        fields["backups"] = [self._backup_view(db, b) for b in sorted(db.backups)]
        return WindowsReply(**fields)

    def windows_json(self, database_uid: str, *, now: datetime | None = None) -> bytes:
        """`windows(...).model_dump_json()`, with the backups' part serialized once per change.

        The timeline page and every `windows` query list every backup, hundreds of them, and
        they change far less often than they are asked for: their JSON is kept (`backups_json`,
        dropped when a backup comes or goes) and set into the rest of the reply, which is
        serialized afresh (`now` and the RPO lag move with every request).
        """
        db = self.database(database_uid)
        if db.backups_json is None:
            db.backups_json = to_json([self._backup_view(db, b) for b in sorted(db.backups)])
        fields = self._windows_fields(db, (now or utcnow()).astimezone(UTC))
        fields["backups"] = []  # a placeholder, in its place among the fields
        head, tail = to_json(fields).split(b'"backups":[]', 1)
        return b"".join((head, b'"backups":', db.backups_json, tail))

    def _windows_fields(self, db: DatabaseIndex, now: datetime) -> dict[str, Any]:
        """A `WindowsReply`'s fields in its order, but for `backups` (a key left for the
        caller to fill, in its place)."""
        lineages = []
        windows: list[WindowView] = []
        current: list[Window] = []
        for key in sorted(db.history.lineages):
            entry = db.history.lineages[key]
            first_time, last_time = db.history.time_span(key)
            lineages.append(
                LineageView(
                    key=key,
                    parent=entry.parent,
                    branch_at=db.position(entry.branch_at) if entry.branch_at is not None else None,
                    first_time=first_time,
                    last_time=last_time,
                )
            )
            found = db.history.windows(key)
            if key == db.current_lineage:
                current = found
            windows.extend(self._window_view(db, w) for w in found)
        return {
            "database": db.ref,
            "now": now,
            "lineages": lineages,
            "windows": windows,
            "backups": None,
            "gaps": self.gaps(db),
            "last_archived_at": db.last_archived_at,
            "rpo_lag_s": self._rpo_lag(db, now, current),
        }

    def _rpo_lag(
        self, db: DatabaseIndex, now: datetime, windows: list[Window] | None = None
    ) -> float | None:
        """How much of the recent past is not restorable: now minus the newest restorable time.

        `windows`: the current lineage's, when the caller has them already."""
        if db.current_lineage is None:
            return None
        if windows is None:
            windows = db.history.windows(db.current_lineage)
        end = windows[-1].end_time if windows else None
        return max(0.0, (now - end).total_seconds()) if end is not None else None

    def summaries(self, *, now: datetime | None = None) -> list[DatabaseSummary]:
        now = now or utcnow()
        out = []
        for uid in sorted(self._dbs):
            db = self._dbs[uid]
            windows = (
                db.history.windows(db.current_lineage) if db.current_lineage is not None else []
            )
            out.append(
                DatabaseSummary(
                    database=db.ref,
                    window_start_time=windows[0].start_time if windows else None,
                    window_end_time=windows[-1].end_time if windows else None,
                    rpo_lag_s=self._rpo_lag(db, now),
                    backups=len(db.backups),
                    gaps=len(self.gaps(db)),
                    logs=len(db.objects),
                )
            )
        return out

    # -- checks ---------------------------------------------------------------------------------

    def check(
        self, database_uid: str, target: RestoreTarget, lineage: str | None = None
    ) -> CheckReply:
        """Is `target` restorable? If not, why, and which restorable points are nearest."""
        db = self._dbs.get(database_uid)
        if db is None:
            return CheckReply(
                database=database_uid,
                target=target,
                lineage=lineage,
                restorable=False,
                code="unknown_database",
                reason=f"no database {database_uid!r} in the catalog",
            )
        key = lineage or db.current_lineage or ""
        reply: dict[str, Any] = {"database": database_uid, "target": target, "lineage": key}
        if isinstance(target, TargetTime):
            return self._check_time(db, key, target.at, reply)
        position: int | None = None
        if isinstance(target, TargetPosition):
            expected = "scn" if db.ref.engine is Engine.ORACLE else "lsn"
            if target.position.kind != expected:
                return CheckReply(
                    **reply,
                    restorable=False,
                    code="unsupported_target",
                    reason=f"{db.ref.engine.value} databases are restored to an "
                    f"{expected.upper()}, not an {target.position.kind.upper()}",
                )
            position = target.position.value
        elif isinstance(target, TargetSequence):
            position = self._sequence_position(db, key, target)
            if position is None:
                return CheckReply(
                    **reply,
                    restorable=False,
                    code="gap",
                    reason=f"sequence {target.sequence - 1} of thread {target.thread} is not "
                    "in the archive",
                )
        elif isinstance(target, TargetImmediate):
            base = self._immediate_base(db, key)
            if base is None:
                return CheckReply(
                    **reply,
                    restorable=False,
                    code="no_backup",
                    reason="no backup on this lineage whose logs reach its consistent point",
                )
            return CheckReply(**reply, restorable=True, code="ok", reason="restorable", base=base)
        elif isinstance(target, TargetXid | TargetName):
            return CheckReply(
                **reply,
                restorable=False,
                code="unsupported_target",
                reason="the catalog cannot place a transaction id or a restore point in the "
                "log history; restore to a time or position instead",
            )
        assert position is not None
        return self._reply(db, reply, db.history.check(key, position))

    def _reply(self, db: DatabaseIndex, reply: dict[str, Any], verdict: Verdict) -> CheckReply:
        def time_at(pos: int | None) -> datetime | None:
            if pos is None:
                return None
            for window in db.history.windows(str(reply["lineage"])):
                if window.end == pos:
                    return window.end_time
                if window.start + 1 == pos:
                    return window.start_time
            return None

        code: VerdictCode = verdict.code  # type: ignore[assignment]
        return CheckReply.model_validate(
            {
                **reply,
                "restorable": verdict.restorable,
                "code": code,
                "reason": verdict.reason,
                "base": verdict.base,
                "window": self._window_view(db, verdict.window) if verdict.window else None,
                "gap": self._gap_view(db, verdict.gap) if verdict.gap else None,
                "nearest_before": db.position(verdict.nearest_before)
                if verdict.nearest_before is not None
                else None,
                "nearest_before_time": time_at(verdict.nearest_before),
                "nearest_after": db.position(verdict.nearest_after)
                if verdict.nearest_after is not None
                else None,
                "nearest_after_time": time_at(verdict.nearest_after),
            }
        )

    def _sequence_position(
        self, db: DatabaseIndex, lineage: str, target: TargetSequence
    ) -> int | None:
        # UNTIL SEQUENCE s THREAD t stops before s: the target is where s-1 ends.
        thread = db.history.threads(lineage).get(target.thread)
        log = thread.by_seq.get(target.sequence - 1) if thread else None
        return log.next if log else None

    def _immediate_base(self, db: DatabaseIndex, lineage: str) -> str | None:
        best: BaseEntry | None = None
        for base in db.history.bases.values():
            if base.lineage != lineage or not db.history.has_whole_chain(base):
                continue
            end, _ = db.history.chain_end(lineage, base.start)
            if end >= base.consistent and (best is None or base.consistent > best.consistent):
                best = base
        return best.backup_id if best else None

    def _check_time(
        self, db: DatabaseIndex, lineage: str, at: datetime, reply: dict[str, Any]
    ) -> CheckReply:
        if lineage not in db.history.lineages:
            return self._reply(db, reply, db.history.check(lineage, 0))
        windows = db.history.windows(lineage)
        timed = [w for w in windows if w.start_time is not None and w.end_time is not None]
        for window in timed:
            assert window.start_time is not None
            assert window.end_time is not None
            if window.start_time < at <= window.end_time:
                base = self._base_for_time(db, window, at)
                return CheckReply(
                    **reply,
                    restorable=True,
                    code="ok",
                    reason="restorable",
                    base=base,
                    window=self._window_view(db, window),
                )
        before = [w for w in timed if w.end_time is not None and w.end_time < at]
        after = [w for w in timed if w.start_time is not None and w.start_time >= at]
        code: VerdictCode
        if not windows:
            code, reason = "no_backup", "no restorable window on this lineage yet"
        elif not before:
            code = "before_first_backup"
            reason = (
                f"before the first restorable moment ({timed[0].start_time:%Y-%m-%d %H:%M:%S}Z)"
                if timed
                else "before the first restorable moment"
            )
        elif not after:
            code = "beyond_last_log"
            reason = (
                "beyond the last archived log: restorable up to "
                f"{before[-1].end_time:%Y-%m-%d %H:%M:%S}Z"
            )
        else:
            code = "gap"
            verdict = db.history.check(lineage, before[-1].end + 1)
            reason = verdict.reason if verdict.gap else "between two restorable windows"
        last_before = before[-1] if before else None
        first_after = after[0] if after else None
        return CheckReply(
            **reply,
            restorable=False,
            code=code,
            reason=reason,
            nearest_before=db.position(last_before.end) if last_before else None,
            nearest_before_time=last_before.end_time if last_before else None,
            nearest_after=db.position(first_after.start + 1) if first_after else None,
            nearest_after_time=first_after.start_time if first_after else None,
        )

    def _base_for_time(self, db: DatabaseIndex, window: Window, at: datetime) -> str | None:
        candidates = [
            db.history.bases[b] for b in window.bases if db.history.bases[b].completed_at < at
        ]
        if not candidates:
            return window.bases[0] if window.bases else None
        return max(candidates, key=lambda b: b.consistent).backup_id

    # -- plans ----------------------------------------------------------------------------------

    def restore_plan(
        self, database_uid: str, target: RestoreTarget, lineage: str | None = None
    ) -> RestorePlanReply:
        """The base, the ordered objects to fetch, and the exact recovery target."""
        return RestorePlanReply.model_validate(self._plan(database_uid, target, lineage))

    def restore_plan_json(
        self, database_uid: str, target: RestoreTarget, lineage: str | None = None
    ) -> bytes:
        """`restore_plan(...).model_dump_json()`, without building a model per object.

        A plan lists a thousand objects: validating each into a `PlannedObject` only to
        serialize it again costs most of a plan's time. Everything in it was validated on its
        way into the index (the logs' events, the backup's view, the request's target), so the
        reply is serialized from plain values, field for field in the reply model's order.
        """
        return to_json(self._plan(database_uid, target, lineage))

    def _plan(
        self, database_uid: str, target: RestoreTarget, lineage: str | None
    ) -> dict[str, Any]:
        """A `RestorePlanReply`'s fields, in its order; objects as plain dicts."""
        # One validation of the target for checks and plans: a plan exists only where the
        # check says restorable (an xid or a restore point the catalog cannot place is refused
        # by both, never planned as "recover to the end of the window").
        verdict = self.check(database_uid, target, lineage)
        if not verdict.restorable or verdict.base is None:
            raise NotRestorable(verdict)
        db = self.database(database_uid)
        key = verdict.lineage or ""
        base_id = verdict.base
        until = self._until_position(db, key, target, verdict)
        logs = db.history.logs_for(base_id, key, until)
        position = _wire_position(db.ref.engine)
        objects: list[dict[str, Any]] = []
        total = 0
        held = db.objects
        for log in logs:
            obj = held.get((log.lineage, log.thread, log.sequence))
            if obj is None:
                continue
            total += obj.size
            # PlannedObject's fields, in its order.
            objects.append(
                {
                    "key": obj.key,
                    "lineage": log.lineage,
                    "thread": log.thread,
                    "sequence": log.sequence,
                    "first": position(log.first),
                    "next": position(log.next),
                    "size_bytes": obj.size,
                    "crc32c": obj.crc32c,
                }
            )
        return {
            "database": database_uid,
            "target": target,
            "lineage": key,
            "base": self._backup_view(db, base_id),
            "objects": objects,
            "total_bytes": total,
        }

    def _until_position(
        self, db: DatabaseIndex, lineage: str, target: RestoreTarget, verdict: CheckReply
    ) -> int:
        if isinstance(target, TargetPosition):
            return target.position.value
        if isinstance(target, TargetSequence):
            position = self._sequence_position(db, lineage, target)
            assert position is not None
            return position
        if isinstance(target, TargetImmediate):
            return db.history.bases[verdict.base or ""].consistent
        assert verdict.window is not None
        # A time: read the window up to the first log that ends after the target time.
        if isinstance(target, TargetTime):
            reached = db.history.reached_at(lineage, target.at)
            if reached is not None:
                return min(reached, verdict.window.end.value)
        return verdict.window.end.value

    # -- retention ------------------------------------------------------------------------------

    def retention_preview(
        self, database_uid: str, keep_days: float, *, now: datetime | None = None
    ) -> RetentionPreview:
        """What a recovery window of `keep_days` would delete. The base that starts the oldest
        wanted window is always kept, with every log from its start on, and so is every backup
        a kept one depends on (the level 0 under a kept level 1)."""
        db = self.database(database_uid)
        keep_from = (now or utcnow()) - timedelta(days=keep_days)
        bases = sorted(db.history.bases.values(), key=lambda b: b.completed_at)
        anchor = None
        for base in bases:
            # Only a base with its whole chain can start a window.
            if base.completed_at <= keep_from and db.history.has_whole_chain(base):
                anchor = base
        if anchor is None:
            return RetentionPreview(
                database=database_uid,
                keep_from=keep_from,
                delete_backups=[],
                keep_backups=[b.backup_id for b in bases],
                delete_logs=0,
                delete_bytes=0,
                oldest_kept_base=bases[0].backup_id if bases else None,
                note="no backup is older than the window; nothing can be deleted",
            )
        kept = {b.backup_id for b in bases if b.completed_at >= anchor.completed_at}
        for backup_id in list(kept):
            # What a kept incremental applies to must stay, however old it is.
            parent = db.history.bases[backup_id].parent
            while parent is not None and parent in db.history.bases and parent not in kept:
                kept.add(parent)
                parent = db.history.bases[parent].parent
        delete = [b.backup_id for b in bases if b.backup_id not in kept]
        keep = [b.backup_id for b in bases if b.backup_id in kept]
        old_logs = [
            obj
            for (lineage, thread, seq), obj in db.objects.items()
            if lineage == anchor.lineage
            and db.history.threads(lineage)[thread].by_seq[seq].next <= anchor.start
        ]
        return RetentionPreview(
            database=database_uid,
            keep_from=keep_from,
            delete_backups=delete,
            keep_backups=keep,
            delete_logs=len(old_logs),
            delete_bytes=sum(o.size for o in old_logs),
            oldest_kept_base=anchor.backup_id,
        )
