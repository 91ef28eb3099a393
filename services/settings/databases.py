"""The databases Tidemark protects, each declared once (`[[databases]]` at the top level).

    [[databases]]
    uid = "orders-db"
    engine = "postgres"
    name = "orders"
    system_id = 7312001234567890123          # SELECT system_identifier FROM pg_control_system()
    node = "db-node-1"                       # optional: the node that hosts it (default: any
                                             # node reading this file)

    [databases.postgres]
    data_dir = "/var/lib/postgresql/16/main"
    port = 5432
    os_user = "postgres"                     # runs pg_ctl, pg_basebackup, restore_command
    socket_dir = "/var/run/postgresql"
    spool_dir = "/var/lib/tidemark/spool/orders-db"     # where walpush hands WAL to the archiver
    pg_wal_dir = "/var/lib/postgresql/16/main/pg_wal"   # optional: read ahead of archive_command

    [[databases]]
    uid = "erp-prod"
    engine = "oracle"
    name = "ERPPROD"
    system_id = 1234567890                   # SELECT dbid FROM v$database

    [databases.oracle]
    oracle_home = "/u01/app/oracle/product/19.0.0/dbhome_1"
    oracle_sid = "ERPPROD"
    staging_dir = "/var/lib/tidemark/oracle-stage/erp-prod"
    dsn = "erp-db:1521/ERPPROD"
    user = "C##TIDEMARK"
    password_file = "/var/run/secrets/tidemark/erp-prod"
    archive_dest_id = 1                      # LOG_ARCHIVE_DEST_1, streamed from this node

From the environment: `TIDEMARK_DATABASES='[{"uid": ...}]'` (JSON).

The executor and the archiver each read their view of the same declaration: when the settings
load, `executor.databases` (`HostedDatabase`: what the engines need) and `archiver.databases`
(`ArchivedDatabase`: what the streamer needs) are derived from the databases of this node.
Declaring a database twice is how the executor's spool and the archiver's came to disagree, so
the per-section lists are no longer written by hand: a settings file that still has them is
read as before, with a warning that says how to move; one that has both forms is refused.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas import DatabaseUid, DbName, Engine
from services.archiver.settings import ArchivedDatabase
from services.engines.settings import (
    HostedDatabase,
    OracleConnection,
    OracleInstance,
    PostgresInstance,
)

__all__ = [
    "LEGACY_LISTS_WARNING",
    "DeclaredDatabase",
    "DeclaredOracle",
    "DeclaredPostgres",
]

LEGACY_LISTS_WARNING = (
    "archiver.databases and executor.databases are deprecated: declare each database once as "
    "[[databases]] (uid, engine, name, system_id, node) with its [databases.postgres] "
    "(data_dir, port, os_user, socket_dir, spool_dir, pg_wal_dir) or [databases.oracle] "
    "(oracle_home, oracle_sid, staging_dir, the session, archive_dest_id) section; "
    "see services/settings/databases.py"
)
"""What a settings file in the old form is told (the lists are still used as given)."""


class DeclaredPostgres(PostgresInstance):
    """A PostgreSQL cluster: where it lives (the engine's `PostgresInstance`) and where its WAL
    goes (the archiver's spool)."""

    spool_dir: Path = Field(description="the wal-push spool: walpush writes, the archiver reads")
    pg_wal_dir: Path | None = Field(
        default=None,
        description="the cluster's pg_wal, read ahead of archive_command (optional)",
    )

    def instance(self) -> PostgresInstance:
        return PostgresInstance.model_validate(self.model_dump(exclude={"spool_dir", "pg_wal_dir"}))


_ARCHIVER_ORACLE = {"archive_dest_id", "gap_grace_s", "full_read_s"}


class DeclaredOracle(OracleInstance):
    """An Oracle database: the engine's `OracleInstance` (home, SID, staging, the session) and
    what the archiver streams from (the archive destination and its cadence)."""

    archive_dest_id: int = Field(
        default=1, ge=1, le=31, description="the LOG_ARCHIVE_DEST_n streamed from"
    )
    gap_grace_s: float = Field(
        default=300.0,
        ge=0,
        description="how long a switched log may be missing from the destination before it "
        "is reported as a gap (ARCn may finish logs out of order)",
    )
    full_read_s: float = Field(
        default=60.0,
        gt=0,
        description="how often V$ARCHIVED_LOG is read whole, not just past the last RECID",
    )

    def instance(self) -> OracleInstance:
        return OracleInstance.model_validate(self.model_dump(exclude=_ARCHIVER_ORACLE))

    def connection(self) -> OracleConnection:
        return OracleConnection.model_validate(
            self.model_dump(include=set(OracleConnection.model_fields))
        )


class DeclaredDatabase(BaseModel):
    """One database, declared once; the executor and the archiver of its node both serve it."""

    # A refused Oracle DSN may carry a password: never print the input back.
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    uid: DatabaseUid
    engine: Engine
    name: DbName
    system_id: int = Field(
        ge=0,
        lt=1 << 64,
        description="PostgreSQL system identifier / Oracle DBID: what proves a log is this "
        "database's, so it is never guessed from the first file seen",
    )
    node: str | None = Field(
        default=None,
        min_length=1,
        description="the node that hosts it; default: every node that reads this declaration",
    )
    postgres: DeclaredPostgres | None = None
    oracle: DeclaredOracle | None = None

    @model_validator(mode="after")
    def _engine_section(self) -> DeclaredDatabase:
        sections = {Engine.POSTGRES: self.postgres, Engine.ORACLE: self.oracle}
        for engine, section in sections.items():
            if self.engine is engine and section is None:
                raise ValueError(
                    f"database {self.uid}: a {engine.value} database needs "
                    f"[databases.{engine.value}]"
                )
            if self.engine is not engine and section is not None:
                raise ValueError(
                    f"database {self.uid}: [databases.{engine.value}] is for {engine.value} "
                    "databases"
                )
        return self

    def hosted_on(self, node: str) -> bool:
        return self.node is None or self.node == node

    def hosted(self) -> HostedDatabase:
        """The executor's (and the engines') view."""
        return HostedDatabase(
            uid=self.uid,
            engine=self.engine,
            name=self.name,
            system_id=self.system_id,
            postgres=None if self.postgres is None else self.postgres.instance(),
            oracle=None if self.oracle is None else self.oracle.instance(),
        )

    def archived(self) -> ArchivedDatabase:
        """The archiver's view."""
        fields: dict[str, object] = {}
        if self.postgres is not None:
            fields = {"spool_dir": self.postgres.spool_dir, "pg_wal_dir": self.postgres.pg_wal_dir}
        if self.oracle is not None:
            fields = {
                "oracle": self.oracle.connection(),
                **{name: getattr(self.oracle, name) for name in sorted(_ARCHIVER_ORACLE)},
            }
        return ArchivedDatabase.model_validate(
            {
                "uid": self.uid,
                "engine": self.engine,
                "name": self.name,
                "system_id": self.system_id,
                **fields,
            }
        )
