"""A simulated Oracle session: `OracleSession` over the simulated database. Not Oracle.

It answers the session protocol from the simulated control file (`tests/oracle_sim/db.py`), with
the rows the real session would fetch: V$ARCHIVED_LOG filtered as `ARCHIVED_LOGS_SQL` filters it
(one destination, RECID past a mark, available copies only), V$LOG_HISTORY per thread and
incarnation, pieces and datafiles of an RMAN job by its command id. The view rows are mapped by
the real session's own mapping functions, so a column the simulator names differently from the
SQL would fail here as it would against Oracle.

Reads take the simulator's state lock from a thread, as the fake tools in other processes
change the same state.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from services.engines.oracle.rows import (
    ArchivedLogRow,
    BackupDatafileRow,
    BackupPieceRow,
    DatabaseInfo,
    IncarnationRow,
    LogHistoryRow,
    RmanProgress,
    RmanStatusRow,
    ThreadRow,
    archived_log_from,
    database_from,
    incarnation_from,
    log_history_from,
    thread_from,
)
from tests.oracle_sim.db import BackupSet, SimulatedOracle

__all__ = ["SimulatedSession"]


def _available(row: dict[str, Any]) -> bool:
    return (row["archived"], row["status"], row["standby_dest"]) == ("YES", "A", "NO")


@dataclass
class SimulatedSession:
    """`OracleSession` over a `SimulatedOracle`; counts queries so tests can see the traffic."""

    db: SimulatedOracle
    queries: int = 0
    closed: bool = False

    async def _read(self, fn: Any, *args: Any) -> Any:
        if self.closed:
            raise RuntimeError("the simulated session is closed")
        self.queries += 1
        return await asyncio.to_thread(fn, *args)

    async def database(self) -> DatabaseInfo:
        return database_from(await self._read(self.db.database))

    async def incarnations(self) -> list[IncarnationRow]:
        return [incarnation_from(r) for r in await self._read(self.db.incarnations)]

    async def archived_logs(self, dest_id: int, after_recid: int = 0) -> list[ArchivedLogRow]:
        rows = await self._read(self.db.archived_logs, dest_id)
        chosen = [r for r in rows if r["recid"] > after_recid and _available(r)]
        chosen.sort(key=lambda r: (r["thread#"], r["sequence#"]))
        return [archived_log_from(r) for r in chosen]

    async def log_history(
        self, thread: int, from_sequence: int, *, resetlogs_id: int | None = None
    ) -> list[LogHistoryRow]:
        # As LOG_HISTORY_SQL joins it: the incarnation by RESETLOGS_ID (None: CURRENT), its rows
        # by RESETLOGS_CHANGE# and RESETLOGS_TIME (V$LOG_HISTORY carries no RESETLOGS_ID).
        incarnations = await self.incarnations()
        wanted = next(
            (
                (i.resetlogs_change, i.resetlogs_time)
                for i in incarnations
                if (i.resetlogs_id == resetlogs_id)
                or (resetlogs_id is None and i.status == "CURRENT")
            ),
            None,
        )
        rows = await self._read(self.db.log_history)
        return sorted(
            (
                h
                for h in map(log_history_from, rows)
                if h.thread == thread
                and h.sequence >= from_sequence
                and (h.resetlogs_change, h.resetlogs_time) == wanted
            ),
            key=lambda h: h.sequence,
        )

    async def threads(self) -> list[ThreadRow]:
        return [thread_from(r) for r in await self._read(self.db.threads)]

    async def backup_pieces(self, command_id: str) -> list[BackupPieceRow]:
        sets = await self._read(self.db.backup_sets)
        return [
            BackupPieceRow(
                set_stamp=s.stamp,
                set_count=s.recid,
                piece=p.piece,
                copy=1,
                handle=p.handle,
                tag=p.tag,
                status=p.status,
                bytes=p.bytes,
                compressed=p.compressed,
                encrypted=p.encrypted,
                completion_time=s.completion_time,
                backup_type=s.backup_type,
                incremental_level=s.incremental_level,
            )
            for s in sets
            if s.command_id == command_id
            for p in s.pieces
        ]

    async def backup_datafiles(self, command_id: str) -> list[BackupDatafileRow]:
        return await self._datafiles(lambda s: s.command_id == command_id)

    async def backup_datafiles_tagged(self, tag: str) -> list[BackupDatafileRow]:
        return await self._datafiles(lambda s: any(p.tag == tag for p in s.pieces))

    async def _datafiles(self, chosen: Callable[[BackupSet], bool]) -> list[BackupDatafileRow]:
        state = await self._read(self.db.read)
        cf = state.controlfile
        return sorted(
            (
                BackupDatafileRow(
                    set_stamp=s.stamp,
                    set_count=s.recid,
                    file=d.file,
                    incremental_level=d.incremental_level,
                    incremental_change=d.incremental_scn,
                    checkpoint_change=d.checkpoint_scn,
                    checkpoint_time=state.time_of(d.checkpoint_scn, d.resetlogs_id),
                    absolute_fuzzy_change=d.absolute_fuzzy_scn,
                    resetlogs_change=cf.by_resetlogs_id(d.resetlogs_id).resetlogs_scn,
                    completion_time=s.completion_time,
                    resetlogs_time=cf.by_resetlogs_id(d.resetlogs_id).resetlogs_time,
                )
                for s in cf.backup_sets
                if chosen(s)
                for d in s.datafiles
            ),
            key=lambda d: (d.file, d.set_stamp),
        )

    async def rman_progress(self, command_id: str) -> RmanProgress:
        # The simulator keeps COMMAND rows only, and no long operations.
        rows = await self._read(self.db.rman_status)
        return RmanProgress(
            statuses=tuple(
                RmanStatusRow(
                    recid=r.recid,
                    row_level=1,
                    row_type="COMMAND",
                    command_id=r.command_id,
                    operation=r.operation,
                    status=r.status,
                    mbytes_processed=None,
                    start_time=r.start_time,
                    end_time=r.end_time,
                    input_bytes=None,
                    output_bytes=r.output_bytes,
                )
                for r in rows
                if r.command_id == command_id
            )
        )

    async def close(self) -> None:
        self.closed = True
