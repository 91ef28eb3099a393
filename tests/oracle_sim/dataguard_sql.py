"""The `dataguard` method's SQL answered by a simulated Data Guard member. Not Oracle.

`SimulatedDataGuardSql(dg, name)` has the shape of the engine's migration SQL (`rows` / `call`,
as `OracleDbSession` has them): the statements of `services/engines/oracle/dataguard_sql.py`
are answered from the configuration (`dataguard.py`), the doctor's preflight statements from
the member's `SimulatedOracle` and `Profile` (`sql.py`) with V$DATABASE's role, mode and DBID
taken from the configuration; anything else is ORA-00942, as from a view not granted.
A member that is down answers ORA-01034 (retryable, as the engine classifies it); one started
NOMOUNT answers ORA-01507 for what needs a mounted database.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from services.engines.oracle import dataguard_sql as q
from services.engines.oracle import doctor_sql as dq
from services.engines.oracle.errors import rule_for
from services.engines.oracle.rows import DATABASE_SQL
from services.engines.oracle.session import OracleSessionError
from tests.oracle_sim.dataguard import DataGuardError, SimulatedDataGuard
from tests.oracle_sim.db import SimulatedOracle
from tests.oracle_sim.sql import Profile, SimulatedSql

_NOMOUNT_READABLE = {
    dq.INSTANCE_SQL,
    dq.PARAMETERS_SQL,
    dq.PASSWORD_FILE_USERS_SQL,
    dq.ENCRYPTION_WALLET_SQL,
    dq.BANNER_SQL,
}
"""What an instance started NOMOUNT answers (V$INSTANCE, V$PARAMETER, ... need no control
file); everything else needs it mounted (ORA-01507)."""


def _error(exc: DataGuardError) -> OracleSessionError:
    code = exc.code
    return OracleSessionError(
        str(exc), code=code, retryable=rule_for(code).verdict.value == "retryable"
    )


@dataclass
class SimulatedDataGuardSql:
    dg: SimulatedDataGuard
    name: str
    statements: list[str] = field(default_factory=list)

    async def rows(self, what: str, sql: str, **binds: object) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self._rows, sql, binds)

    async def call(self, what: str, sql: str, **binds: object) -> None:
        self.statements.append(sql)
        # Kept beside the tools' runs, so a test can say which statement ran where, in order.
        await asyncio.to_thread(self.dg.record_run, "sql", f"{self.name}: {sql}")
        try:
            await asyncio.to_thread(self.dg.execute, self.name, sql)
        except DataGuardError as exc:
            raise _error(exc) from None

    def _rows(self, sql: str, binds: dict[str, object]) -> list[dict[str, Any]]:
        self.statements.append(sql)
        try:
            member = self.dg.member(self.name)
            if member.open_mode == "SHUTDOWN":
                raise DataGuardError("ORA-01034: ORACLE not available")
            if member.open_mode == "STARTED" and sql not in _NOMOUNT_READABLE:
                raise DataGuardError("ORA-01507: database not mounted")
            if sql in (q.ROLE_SQL, DATABASE_SQL, dq.CDB_SQL):
                # The profile keeps what a preflight test sets (NOARCHIVELOG, ...).
                p = Profile.load(SimulatedOracle(self.dg.member_root(self.name)))
                row = self.dg.database(self.name)
                return [
                    {
                        **row,
                        "cdb": p.cdb,
                        "log_mode": p.log_mode,
                        "force_logging": p.force_logging,
                        "platform_name": p.platform_name,
                    }
                ]
            if sql == q.STATS_SQL:
                return [
                    r
                    for r in self.dg.stats(self.name)
                    if r["name"] in ("transport lag", "apply lag")
                ]
            if sql == q.CLOCK_SQL:
                return [{"now": self.dg.clock_text(self.name)}]
            if sql == q.MRP_SQL:
                return self.dg.processes(self.name)
        except DataGuardError as exc:
            raise _error(exc) from None
        doctor = SimulatedSql(SimulatedOracle(self.dg.member_root(self.name)))
        answer = doctor.answers.get(sql)
        if answer is None:
            raise OracleSessionError(
                "ORA-00942: table or view does not exist (simulated: statement not modelled)",
                code="ORA-00942",
            )
        return answer(Profile.load(doctor.db), binds)
