"""The `rman` migration method's statements answered by the simulated database (`db.py`) and
its `Profile` (release, platform, byte order). Not Oracle.

Only the engine's own constants (`services/engines/oracle/rman_migration.py`) are answered;
anything else is ORA-00900, so a statement the simulator does not model fails a test loudly.
An instance with no database answers V$INSTANCE only (ORA-01507 for the rest, as in NOMOUNT);
a shut-down one nothing (ORA-01034). Sessions are not modelled: the kill of the fence's
sessions is accepted and does nothing, and RESTRICTED SESSION alone keeps inserts out
(ORA-01035, `db.insert_row`).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from services.engines.oracle import rman_migration as rm
from services.engines.oracle.session import OracleSessionError
from tests.oracle_sim.db import SimulatedOracle, SimulatedOracleError
from tests.oracle_sim.sql import Profile

__all__ = ["SimulatedRmanSql"]


def _error(text: str, *, retryable: bool = False) -> OracleSessionError:
    return OracleSessionError(text, code=text.split(":", 1)[0], retryable=retryable)


@dataclass
class SimulatedRmanSql:
    db: SimulatedOracle
    statements: list[str] = field(default_factory=list)

    async def rows(self, what: str, sql: str, **binds: object) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self._rows, sql)

    async def call(self, what: str, sql: str, **binds: object) -> None:
        await asyncio.to_thread(self._call, sql)

    def _rows(self, sql: str) -> list[dict[str, Any]]:
        self.statements.append(sql)
        st = self.db.read()
        if st.open_mode == "SHUTDOWN":
            raise _error("ORA-01034: ORACLE not available", retryable=True)
        profile = Profile.load(self.db)
        if sql == rm.INSTANCE_SQL:
            status = {"STARTED": "STARTED", "MOUNTED": "MOUNTED"}.get(st.open_mode, "OPEN")
            return [
                {
                    "version": profile.version,
                    "logins": "RESTRICTED" if st.restricted else "ALLOWED",
                    "status": "OPEN MIGRATE" if st.upgrade_pending else status,
                }
            ]
        if st.no_database or st.open_mode == "STARTED":
            raise _error("ORA-01507: database not mounted")
        cf = st.controlfile
        if sql == rm.SOURCE_SQL:
            return [
                {
                    "dbid": cf.dbid,
                    "current_scn": st.current_scn,
                    "open_mode": st.open_mode,
                    "platform_name": profile.platform_name,
                    "endian_format": profile.endian_format,
                    "now_utc": st.now().replace(tzinfo=None),
                }
            ]
        if sql == rm.TARGET_SQL:
            media = st.media
            if media is not None and media.checkpoint_scn:
                checkpoint: int | None = min(media.checkpoint_scn.values())
            elif media is not None:
                checkpoint = None  # mounted, nothing restored yet
            else:
                checkpoint = min(d.checkpoint_scn for d in st.datafiles)
            return [
                {
                    "dbid": cf.dbid,
                    "open_mode": st.open_mode,
                    "resetlogs_change#": cf.incarnation().resetlogs_scn,
                    "checkpoint_change#": checkpoint,
                }
            ]
        if sql == rm.FINAL_LOGS_SQL:
            rid = cf.incarnation().resetlogs_id
            enabled = {t.thread for t in cf.threads if t.enabled}
            out: dict[int, dict[str, Any]] = {}
            for log in cf.archived_logs:
                if log.dest_id != 1 or log.resetlogs_id != rid or log.thread not in enabled:
                    continue
                row = out.setdefault(
                    log.thread,
                    {"thread#": log.thread, "resetlogs_id": rid, "sequence#": 0, "next_change#": 0},
                )
                row["sequence#"] = max(row["sequence#"], log.sequence)
                row["next_change#"] = max(row["next_change#"], log.next_scn)
            return [out[t] for t in sorted(out)]
        raise _error("ORA-00900: invalid SQL statement (simulated)")

    def _call(self, sql: str) -> None:
        self.statements.append(sql)
        if sql == rm.KILL_SESSIONS_SQL:
            return
        if sql in (rm.RESTRICT_SQL, rm.UNRESTRICT_SQL, rm.SWITCH_SQL):
            try:
                self.db.execute(sql)
            except SimulatedOracleError as exc:
                raise _error(str(exc)) from None
            return
        raise _error("ORA-00900: invalid SQL statement (simulated)")
