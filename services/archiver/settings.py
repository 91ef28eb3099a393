"""The `archiver` settings section: where logs go, how fast, and which databases this node archives.

    [archiver]
    store_url = "gs://archive/tidemark"      # default: file://<state_dir>/store
    prefix = "prod"                          # keys: <prefix>/<database-uid>/...
    parallelism = 4
    compression = "zstd"

    [[archiver.databases]]
    uid = "orders-db"
    engine = "postgres"
    name = "orders"
    system_id = 7312001234567890123          # SELECT system_identifier FROM pg_control_system()
    spool_dir = "/var/lib/tidemark/spool/orders-db"
    pg_wal_dir = "/var/lib/postgresql/15/main/pg_wal"   # optional: read ahead of archive_command

    [[archiver.databases]]
    uid = "erp-prod"
    engine = "oracle"
    name = "ERPPROD"
    system_id = 1234567890                   # SELECT dbid FROM v$database
    archive_dest_id = 1                      # LOG_ARCHIVE_DEST_1, read from this node

    [archiver.databases.oracle]
    dsn = "erp-db:1521/ERPPROD"              # easy connect, or a tnsnames/wallet alias
    user = "C##TIDEMARK"                     # needs SELECT on the V$ views (SELECT_CATALOG_ROLE)
    password_file = "/var/run/secrets/tidemark/erp-prod"   # or wallet_dir + thick_mode
    time_zone = "UTC"                        # the server's zone: V$ DATE values carry none

From the environment: `TIDEMARK_ARCHIVER__DATABASES='[{"uid": ...}]'` (JSON).

No secret is a value here: a password is a file reference, or lives in a wallet.
This module imports nothing from `services/` (the settings model imports it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas import DatabaseRef, DatabaseUid, DbName, Engine
from services.engines.settings import OracleConnection

__all__ = ["ArchivedDatabase", "ArchiverSettings", "OracleConnection"]


class _Section(BaseModel):
    # An Oracle DSN refused for carrying a password must not be printed back in the error.
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)


class ArchivedDatabase(_Section):
    """One database whose logs this node streams.

    `system_id` is required: it is what proves a segment belongs to this database and what the
    prefix-ownership check compares, so guessing it from the first file seen would let a
    misconfigured spool claim someone else's archive.
    """

    uid: DatabaseUid
    engine: Engine
    name: DbName
    system_id: int = Field(ge=0, lt=1 << 64, description="PostgreSQL system identifier / DBID")
    spool_dir: Path | None = Field(default=None, description="PostgreSQL: the wal-push spool")
    pg_wal_dir: Path | None = Field(
        default=None,
        description="PostgreSQL: the cluster's pg_wal, read ahead of archive_command (optional)",
    )
    archive_dest_id: int = Field(
        default=1, ge=1, le=31, description="Oracle: the LOG_ARCHIVE_DEST_n streamed from"
    )
    oracle: OracleConnection | None = Field(default=None, description="Oracle: the session")
    gap_grace_s: float = Field(
        default=300.0,
        ge=0,
        description="Oracle: how long a switched log may be missing from the destination "
        "before it is reported as a gap (ARCn may finish logs out of order)",
    )
    full_read_s: float = Field(
        default=60.0,
        gt=0,
        description="Oracle: how often V$ARCHIVED_LOG is read whole, not just past the last "
        "RECID, and the destination checked against V$LOG_HISTORY",
    )

    @model_validator(mode="after")
    def _spool_for_postgres(self) -> ArchivedDatabase:
        if self.engine is Engine.POSTGRES and self.spool_dir is None:
            raise ValueError(f"database {self.uid}: a PostgreSQL database needs spool_dir")
        if self.engine is not Engine.POSTGRES and self.pg_wal_dir is not None:
            raise ValueError(f"database {self.uid}: pg_wal_dir is for PostgreSQL databases")
        if self.engine is Engine.ORACLE and self.oracle is None:
            raise ValueError(f"database {self.uid}: an Oracle database needs its oracle section")
        if self.engine is not Engine.ORACLE and self.oracle is not None:
            raise ValueError(f"database {self.uid}: the oracle section is for Oracle databases")
        return self

    @property
    def ref(self) -> DatabaseRef:
        return DatabaseRef(
            uid=self.uid, engine=self.engine, name=self.name, system_id=self.system_id
        )


class ArchiverSettings(_Section):
    """How the archiver streams. Defaults suit the embedded stack."""

    store_url: str | None = Field(
        default=None, description="blob store URL; default file://<state_dir>/store"
    )
    prefix: str = Field(
        default="",
        pattern=r"^$|^[A-Za-z0-9._=-]+(/[A-Za-z0-9._=-]+)*$",
        description="key prefix before <database-uid>/ (no leading or trailing /)",
    )
    parallelism: int = Field(default=4, ge=1, le=64, description="uploads in flight per node")
    compression: Literal["none", "zstd"] = "none"
    zstd_level: int = Field(default=3, ge=1, le=19)
    rescan_s: float = Field(
        default=1.0, gt=0, description="safety rescan when no notification arrives"
    )
    request_deadline_s: float = Field(
        default=60.0,
        gt=0,
        description="GCS: how long one request is retried before its log gives up its slot",
    )
    retry_base_s: float = Field(default=0.5, gt=0, description="first retry delay of a log")
    retry_max_s: float = Field(default=60.0, gt=0, description="longest retry delay of a log")
    journal_path: Path | None = Field(
        default=None, description="default <state_dir>/archiver/journal.sqlite"
    )
    journal_keep_days: float = Field(
        default=7.0, gt=0, description="how long released logs stay in the journal"
    )
    databases: list[ArchivedDatabase] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_databases(self) -> ArchiverSettings:
        uids = [d.uid for d in self.databases]
        if len(uids) != len(set(uids)):
            raise ValueError("archiver.databases lists a database uid twice")
        modes = {d.oracle.thick_mode for d in self.databases if d.oracle is not None}
        if len(modes) > 1:
            # python-oracledb runs one mode per process: the first thick session would fail
            # every thin one, or the reverse.
            raise ValueError("archiver.databases mixes thick_mode and thin Oracle sessions")
        return self

    def store_url_for(self, state_dir: Path) -> str:
        return self.store_url or f"file://{(state_dir / 'store').absolute()}"

    def journal_for(self, state_dir: Path) -> Path:
        return self.journal_path or state_dir / "archiver" / "journal.sqlite"
