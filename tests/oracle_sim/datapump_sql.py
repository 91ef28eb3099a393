"""`DataPumpSql` over the simulated dictionary: the engine's Data Pump statements answered by
statement, from `dictionary.py` and `db.py`. Not Oracle.

Only the engine's own constants are answered, and the doctor's (`doctor_sql.py`, through
`sql.py`, for the migration preflight); anything else raises ORA-00900, as a statement the
simulator does not model should fail a test loudly. Rows are keyed by lower-case column name,
as the real session keys them.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.engines.oracle import datapump as dp
from services.engines.oracle import doctor_sql as q
from services.engines.oracle import migration_steps as ms
from services.engines.oracle.session import OracleSessionError
from tests.oracle_sim.dictionary import ORACLE_USERS, SimulatedDictionary
from tests.oracle_sim.sql import Profile, SimulatedSql


@dataclass
class SimulatedDataPumpSql:
    dictionary: SimulatedDictionary
    statements: list[str] | None = None

    @classmethod
    def of(cls, root: Path) -> SimulatedDataPumpSql:
        return cls(SimulatedDictionary.of(root), [])

    async def rows(self, what: str, sql: str, **binds: object) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self._rows, sql, binds)

    async def call(self, what: str, sql: str, **binds: object) -> None:
        await asyncio.to_thread(self._call, sql, binds)

    def _note(self, sql: str) -> None:
        if self.statements is not None:
            self.statements.append(sql)
        if self.dictionary.db.read().open_mode != "READ WRITE":
            raise OracleSessionError(
                "ORA-01034: ORACLE not available", code="ORA-01034", retryable=True
            )

    def _rows(self, sql: str, binds: dict[str, object]) -> list[dict[str, Any]]:
        self._note(sql)
        d = self.dictionary.read()
        if sql == dp.CURRENT_SCN_SQL:
            return [{"current_scn": self.dictionary.db.read().current_scn}]
        if sql == dp.DIRECTORY_SQL:
            path = d.directories.get(str(binds["name"]))
            return [] if path is None else [{"directory_path": path}]
        if sql == dp.DB_LINK_SQL:
            return [{"db_link": binds["name"]}] if binds["name"] in d.links else []
        if sql == dp.USER_SQL:
            return [{"username": binds["name"]}] if binds["name"] in d.users else []
        if sql == ms.ACCOUNT_SQL:
            if binds["name"] not in d.users:
                return []
            return [{"account_status": "LOCKED" if binds["name"] in d.locked else "OPEN"}]
        if sql == q.DATAPUMP_DIRECTORY_SQL:
            path = d.directories.get(str(binds["name"]))
            return (
                [] if path is None else [{"directory_name": binds["name"], "directory_path": path}]
            )
        if sql == q.DATAPUMP_ROLES_SQL:
            return [{"granted_role": r} for r in sorted(d.roles)]
        if sql == dp.APP_USERS_SQL:
            return [{"username": u} for u in sorted(d.users) if u not in ORACLE_USERS]
        if sql == dp.JOB_SQL:
            return [
                {k: v for k, v in job.items() if k != "degree"}
                for job in self.dictionary.jobs()
                if job["job_name"] == binds["job_name"]
            ]
        owner = binds.get("owner")
        mine = [o for o in d.objects if o.owner == owner]
        if sql == dp.OBJECT_COUNTS_SQL:
            counts = Counter(
                o.type for o in mine if not o.generated and not o.name.startswith("BIN$")
            )
            return [{"object_type": t, "objects": n} for t, n in sorted(counts.items())]
        if sql == dp.INVALID_SQL:
            return [
                {"object_type": o.type, "object_name": o.name}
                for o in sorted(mine, key=lambda o: (o.type, o.name))
                if o.status == "INVALID" and not o.name.startswith("BIN$")
            ]
        if sql == dp.ROW_COUNTS_SQL:
            return [
                {"table_name": o.name, "row_count": len(o.rows or [])}
                for o in sorted(mine, key=lambda o: o.name)
                if o.type == "TABLE" and not o.dropped
            ]
        # The doctor's other statements (`preflight.py`), answered as `tidemark doctor oracle`'s
        # tests answer them: from the database and its profile (`sql.py`).
        answer = SimulatedSql(self.dictionary.db).answers.get(sql)
        if answer is not None:
            return answer(Profile.load(self.dictionary.db), binds)
        raise OracleSessionError("ORA-00900: invalid SQL statement (simulated)", code="ORA-00900")

    def _call(self, sql: str, binds: dict[str, object]) -> None:
        self._note(sql)
        if sql in (ms.LOCK_SQL, ms.UNLOCK_SQL):
            with self.dictionary.transaction() as d:
                name = str(binds["name"])
                if name not in d.users:
                    raise OracleSessionError(
                        f"ORA-01918: user '{name}' does not exist", code="ORA-01918"
                    )
                if sql == ms.LOCK_SQL and name not in d.locked:
                    d.locked.append(name)
                if sql == ms.UNLOCK_SQL and name in d.locked:
                    d.locked.remove(name)
            return
        if sql != dp.RECOMPILE_SQL:
            raise OracleSessionError(
                "ORA-00900: invalid SQL statement (simulated)", code="ORA-00900"
            )
        with self.dictionary.transaction() as d:
            for o in d.objects:
                if o.owner == binds["owner"] and o.status == "INVALID" and o.compiles:
                    o.status = "VALID"
