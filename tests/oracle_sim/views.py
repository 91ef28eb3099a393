"""`OracleViews` over the simulated database: what the Oracle engine reads through a session,
answered from `db.py` in-process. Not Oracle, and not the python-oracledb session."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from services.engines.base import EngineError
from services.engines.oracle.backup import BackupDatafileRow, IncarnationRow
from tests.oracle_sim.db import SimulatedOracle, SimulatedOracleError


@dataclass
class SimulatedViews:
    db: SimulatedOracle

    async def dbid(self) -> int:
        return int(self.db.database()["dbid"])

    async def execute(self, sql: str) -> None:
        """The statements a storage snapshot runs (`SimulatedOracle.execute`)."""
        try:
            await asyncio.to_thread(self.db.execute, sql)
        except SimulatedOracleError as exc:
            code = str(exc).split(":", 1)[0]
            raise EngineError.of(f"Oracle session: {exc}", code=code) from None

    async def current_scn(self) -> int:
        return int(self.db.database()["current_scn"])

    async def incarnations(self) -> list[IncarnationRow]:
        return [
            IncarnationRow(
                incarnation=i["incarnation#"],
                resetlogs_scn=i["resetlogs_change#"],
                resetlogs_id=i["resetlogs_id"],
                prior=i["prior_incarnation#"],
                status=i["status"],
            )
            for i in self.db.incarnations()
        ]

    async def backup_datafiles(self, tag: str) -> list[BackupDatafileRow]:
        return [
            BackupDatafileRow(
                file=r["file#"],
                checkpoint_scn=r["checkpoint_change#"],
                absolute_fuzzy_scn=r["absolute_fuzzy_change#"],
                incremental_level=r["incremental_level"],
                resetlogs_id=r["resetlogs_id"],
            )
            for r in self.db.backup_datafiles()
            if r["tag"] == tag
        ]
