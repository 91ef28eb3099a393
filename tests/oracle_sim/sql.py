"""Simulated SQL for `tidemark doctor oracle`: the V$/DBA_ statements it runs, answered from the
simulated database. Not Oracle.

`SimulatedSql(db)` is a `DoctorSource`. It answers exactly the statements of
`services/engines/oracle/doctor_sql.py` and the engine's `rows.py` it is given, by their text;
any other statement is refused with ORA-00942 (as a real database refuses a view this user cannot
see), and `execute` runs `SimulatedOracle.execute` (so `SWITCHOVER … VERIFY` gets its ORA-00900).

The facts the rest of the simulator does not model (release, banner, parameters, online and
standby logs, password file, keystore, options, archive destinations) come from a `Profile`
kept in `profile.json` next to `state.json`; its defaults are the simulator's assumptions
(`doctor.SIMULATOR`). `Profile.save(db)` with other values makes a database that contradicts
them (NOARCHIVELOG, a missing standby log, ASM, 18c...). V$DATABASE's LOG_MODE and
FORCE_LOGGING are overridden from the profile for the doctor only: `rman` still archives.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field

from services.engines.oracle import doctor_sql as q
from services.engines.oracle.rows import (
    ARCHIVED_LOGS_SQL,
    DATABASE_SQL,
    INCARNATIONS_SQL,
    THREADS_SQL,
    TIMEZONE_SQL,
)
from services.engines.oracle.session import OracleSessionError
from tests.oracle_sim.db import SimulatedOracle, SimulatedOracleError

__all__ = ["LogGroups", "Profile", "SimulatedSql"]

MiB = 1024 * 1024


class LogGroups(BaseModel):
    model_config = ConfigDict(extra="forbid")
    groups: int
    bytes: int = 200 * MiB


class Profile(BaseModel):
    """What the doctor's views say beyond the simulated database's state."""

    model_config = ConfigDict(extra="forbid")

    version: str = "19.0.0.0.0"
    banner: str = "Oracle Database 19c Enterprise Edition Release 19.0.0.0.0 - Production"
    log_mode: str = "ARCHIVELOG"
    force_logging: str = "YES"
    cdb: str = "NO"
    platform_id: int = 13
    platform_name: str = "Linux x86 64-bit"
    endian_format: str = "Little"
    db_time_zone: str = "+00:00"
    parameters: dict[str, str] = Field(
        default_factory=lambda: {
            "compatible": "19.0.0",
            "remote_login_passwordfile": "EXCLUSIVE",
            "standby_file_management": "AUTO",
            "db_recovery_file_dest": "",
            "log_archive_format": "%t_%s_%r.arc",
            "dg_broker_start": "FALSE",
            "control_file_record_keep_time": "30",
            "archive_lag_target": "900",
        }
    )
    archive_destination: str | None = None
    """LOG_ARCHIVE_DEST_1's DESTINATION (default: the simulated arch/ directory)."""
    online_logs: LogGroups = LogGroups(groups=3)
    standby_logs: dict[int, LogGroups] | None = None
    """Per thread; None: groups + 1 of the online size on every thread."""
    password_file_users: dict[str, str] = Field(default_factory=lambda: {"SYS": "TRUE"})
    wallet_status: str = "NOT_AVAILABLE"
    encrypted_tablespaces: int = 0
    block_change_tracking: str = "ENABLED"
    options: dict[str, str] = Field(
        default_factory=lambda: {
            "Incremental backup and recovery": "TRUE",
            "Parallel backup and recovery": "TRUE",
            "Block Change Tracking": "TRUE",
            "Backup Encryption": "TRUE",
            "Advanced Compression": "TRUE",
            "Oracle Data Guard": "TRUE",
        }
    )
    unrecoverable_files: int = 0
    directories: dict[str, str] = Field(default_factory=lambda: {"DATA_PUMP_DIR": "/u01/dpdump"})
    roles: list[str] = Field(default_factory=lambda: ["DATAPUMP_EXP_FULL_DATABASE"])

    @classmethod
    def load(cls, db: SimulatedOracle) -> Profile:
        path = db.root / "profile.json"
        return cls.model_validate_json(path.read_text()) if path.exists() else cls()

    def save(self, db: SimulatedOracle) -> None:
        (db.root / "profile.json").write_text(self.model_dump_json(indent=2))


Rows = list[dict[str, Any]]


class SimulatedSql:
    """`DoctorSource` over a `SimulatedOracle` and its `Profile`; counts statements run."""

    def __init__(self, db: SimulatedOracle) -> None:
        self.db = db
        self.statements: list[str] = []
        self.answers: dict[str, Callable[[Profile, Mapping[str, object]], Rows]] = {
            DATABASE_SQL: self._database,
            INCARNATIONS_SQL: lambda p, b: db.incarnations(),
            THREADS_SQL: lambda p, b: db.threads(),
            TIMEZONE_SQL: self._offset,
            ARCHIVED_LOGS_SQL: self._archived_logs,
            q.ARCHIVED_NEWEST_SQL: self._archived_newest,
            q.INSTANCE_SQL: lambda p, b: [
                {"instance_name": "TMSIM", "version": p.version, "thread#": 1}
            ],
            q.BANNER_SQL: lambda p, b: [{"banner": p.banner}],
            q.CDB_SQL: lambda p, b: [{"cdb": p.cdb}],
            q.PLATFORM_SQL: lambda p, b: [
                {
                    "platform_id": p.platform_id,
                    "platform_name": p.platform_name,
                    "endian_format": p.endian_format or None,
                }
            ],
            q.TIME_ZONES_SQL: lambda p, b: [
                {
                    "db_time_zone": p.db_time_zone,
                    "session_time_zone": self._offset(p, b)[0]["tz_offset"],
                }
            ],
            q.PARAMETERS_SQL: lambda p, b: [
                {"name": k, "value": v or None} for k, v in sorted(p.parameters.items())
            ],
            q.ARCHIVE_DESTS_SQL: lambda p, b: [
                {
                    "dest_id": 1,
                    "dest_name": "LOG_ARCHIVE_DEST_1",
                    "status": "VALID",
                    "target": "PRIMARY",
                    "destination": p.archive_destination or str(db.arch_dir),
                    "error": None,
                }
            ],
            q.ONLINE_LOGS_SQL: self._online_logs,
            q.STANDBY_LOGS_SQL: self._standby_logs,
            q.PASSWORD_FILE_USERS_SQL: lambda p, b: [
                {"username": u, "sysdba": s} for u, s in sorted(p.password_file_users.items())
            ],
            q.ENCRYPTION_WALLET_SQL: lambda p, b: [
                {"wrl_type": "FILE", "status": p.wallet_status, "wallet_type": "UNKNOWN"}
            ],
            q.ENCRYPTED_TABLESPACES_SQL: lambda p, b: [{"n": p.encrypted_tablespaces}],
            q.BLOCK_CHANGE_TRACKING_SQL: lambda p, b: [
                {"status": p.block_change_tracking, "filename": None}
            ],
            q.OPTIONS_SQL: lambda p, b: [
                {"parameter": k, "value": v} for k, v in sorted(p.options.items())
            ],
            q.UNRECOVERABLE_SQL: lambda p, b: [
                {
                    "files": p.unrecoverable_files,
                    "newest": 12_345 if p.unrecoverable_files else None,
                }
            ],
            q.DATAPUMP_DIRECTORY_SQL: lambda p, b: [
                {"directory_name": n, "directory_path": d}
                for n, d in p.directories.items()
                if n == b["name"]
            ],
            q.DATAPUMP_ROLES_SQL: lambda p, b: [{"granted_role": r} for r in sorted(p.roles)],
        }

    async def rows(self, sql: str, binds: Mapping[str, object]) -> Rows:
        self.statements.append(sql)
        answer = self.answers.get(sql)
        if answer is None:
            raise OracleSessionError(
                "ORA-00942: table or view does not exist (simulated: statement not modelled)",
                code="ORA-00942",
            )
        return await asyncio.to_thread(lambda: answer(Profile.load(self.db), binds))

    async def execute(self, sql: str) -> None:
        self.statements.append(sql)
        try:
            await asyncio.to_thread(self.db.execute, sql)
        except SimulatedOracleError as exc:
            raise OracleSessionError(str(exc), code=str(exc).split(":", 1)[0]) from None

    def _database(self, p: Profile, b: Mapping[str, object]) -> Rows:
        row = self.db.database()
        return [{**row, "log_mode": p.log_mode, "force_logging": p.force_logging}]

    def _offset(self, p: Profile, b: Mapping[str, object]) -> Rows:
        offset = datetime.now(ZoneInfo(self.db.read().time_zone)).utcoffset()
        minutes = int(offset.total_seconds()) // 60 if offset else 0
        sign = "-" if minutes < 0 else "+"
        return [{"tz_offset": f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"}]

    def _readable(self, dest_id: object) -> Rows:
        return [
            r
            for r in self.db.archived_logs(int(str(dest_id)))
            if (r["archived"], r["status"], r["standby_dest"]) == ("YES", "A", "NO")
        ]

    def _archived_newest(self, p: Profile, b: Mapping[str, object]) -> Rows:
        rows = self._readable(b["dest_id"])
        return [{"copies": len(rows), "max_recid": max((r["recid"] for r in rows), default=None)}]

    def _archived_logs(self, p: Profile, b: Mapping[str, object]) -> Rows:
        after = int(str(b["after_recid"]))
        rows = [r for r in self._readable(b["dest_id"]) if r["recid"] > after]
        return sorted(rows, key=lambda r: (r["thread#"], r["sequence#"]))

    def _threads(self) -> list[int]:
        return [int(t["thread#"]) for t in self.db.threads() if t["enabled"] != "DISABLED"]

    def _online_logs(self, p: Profile, b: Mapping[str, object]) -> Rows:
        return [
            {
                "thread#": t,
                "groups": p.online_logs.groups,
                "max_bytes": p.online_logs.bytes,
                "block_size": 512,
            }
            for t in self._threads()
        ]

    def _standby_logs(self, p: Profile, b: Mapping[str, object]) -> Rows:
        default = LogGroups(groups=p.online_logs.groups + 1, bytes=p.online_logs.bytes)
        per_thread = (
            p.standby_logs
            if p.standby_logs is not None
            else dict.fromkeys(self._threads(), default)
        )
        return [
            {"thread#": t, "groups": g.groups, "min_bytes": g.bytes}
            for t, g in sorted(per_thread.items())
            if g.groups
        ]
