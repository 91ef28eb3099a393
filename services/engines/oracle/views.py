"""`OracleViews` (what the engine reads: DBID, SCN, incarnations, a backup's datafiles) over an
`OracleSession`, the python-oracledb session the archiver uses too.

The session speaks in V$ rows; the engine's manifests name an incarnation by its RESETLOGS_ID,
which V$BACKUP_DATAFILE does not carry (it has RESETLOGS_CHANGE# and RESETLOGS_TIME), so each
row's incarnation is looked up in V$DATABASE_INCARNATION by both: two restores to the same SCN
make sibling incarnations with equal RESETLOGS_CHANGE#, and the SCN alone would give a file the
identity of whichever sibling came last.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from services.engines.base import EngineError
from services.engines.oracle.backup import BackupDatafileRow, IncarnationRow
from services.engines.oracle.session import IncarnationRow as SessionIncarnation
from services.engines.oracle.session import OracleSession, OracleSessionError

__all__ = ["SessionViews"]


@dataclass
class SessionViews:
    """The engine's `OracleViews` over one `OracleSession`; a session failure becomes an
    `EngineError` with the session's code and retry verdict."""

    session: OracleSession

    async def dbid(self) -> int:
        try:
            return (await self.session.database()).dbid
        except OracleSessionError as exc:
            raise _engine_error(exc) from None

    async def execute(self, sql: str) -> None:
        """(snapshot backups) One statement with no rows, when the session can run one."""
        execute = getattr(self.session, "execute", None)
        if execute is None:
            raise EngineError.of("this Oracle session runs no statements", code="TM-ORA-046")
        try:
            await execute(sql)
        except OracleSessionError as exc:
            raise _engine_error(exc) from None

    async def current_scn(self) -> int:
        try:
            return (await self.session.database()).current_scn
        except OracleSessionError as exc:
            raise _engine_error(exc) from None

    async def incarnations(self) -> list[IncarnationRow]:
        try:
            rows = await self.session.incarnations()
        except OracleSessionError as exc:
            raise _engine_error(exc) from None
        return [
            IncarnationRow(
                incarnation=r.incarnation,
                resetlogs_scn=r.resetlogs_change,
                resetlogs_id=r.resetlogs_id,
                prior=r.prior_incarnation,
                status=r.status,
            )
            for r in rows
        ]

    async def backup_datafiles(self, tag: str) -> list[BackupDatafileRow]:
        try:
            rows = await self.session.backup_datafiles_tagged(tag)
            incarnations = await self.session.incarnations()
        except OracleSessionError as exc:
            raise _engine_error(exc) from None
        out: list[BackupDatafileRow] = []
        for r in rows:
            rid = _incarnation_of(r.resetlogs_change, r.resetlogs_time, incarnations)
            out.append(
                BackupDatafileRow(
                    file=r.file,
                    checkpoint_scn=r.checkpoint_change,
                    absolute_fuzzy_scn=r.absolute_fuzzy_change,
                    incremental_level=r.incremental_level,
                    resetlogs_id=rid,
                )
            )
        return out


def _incarnation_of(
    change: int, when: datetime | None, incarnations: list[SessionIncarnation]
) -> int:
    """The RESETLOGS_ID of the incarnation that began at (`change`, `when`); without a time
    (a row that does not carry it), only when no sibling shares the SCN."""
    same = [i for i in incarnations if i.resetlogs_change == change]
    if when is not None:
        same = [i for i in same if i.resetlogs_time == when]
    if len(same) == 1:
        return same[0].resetlogs_id
    which = f"RESETLOGS_CHANGE# {change}" + ("" if when is None else f" at {when.isoformat()}")
    raise EngineError.of(
        f"V$BACKUP_DATAFILE names {which}, which "
        + ("no incarnation has" if not same else f"{len(same)} sibling incarnations share"),
        code="TM-ORA-034",
    )


def _engine_error(exc: OracleSessionError) -> EngineError:
    return EngineError.of(f"Oracle session: {exc.reason}", code=exc.code, retryable=exc.retryable)
