"""The `executor` settings section: the databases this node hosts and how to reach them.

    [executor]
    concurrency = 2                 # jobs at once on this node (one per database, always)
    job_timeout_s = 21600
    queue_limit = 16                # commands held at once, running or waiting their turn

    [[executor.databases]]
    uid = "orders-db"
    engine = "postgres"
    name = "orders"
    system_id = 7312001234567890123

    [executor.databases.postgres]
    data_dir = "/var/lib/postgresql/15/main"
    port = 5432
    os_user = "postgres"            # runs pg_ctl, pg_basebackup, restore_command
    socket_dir = "/var/run/postgresql"
    bin_dir = "/usr/lib/postgresql/15/bin"   # default: found by pg_bindir()

    [[executor.databases]]
    uid = "erp-prod"
    engine = "oracle"
    name = "ERPPROD"
    system_id = 1234567890                   # SELECT dbid FROM v$database

    [executor.databases.oracle]
    oracle_home = "/u01/app/oracle/product/19.0.0/dbhome_1"
    oracle_sid = "ERPPROD"                   # rman/expdp run as this instance, OS-authenticated
    staging_dir = "/var/lib/tidemark/oracle-stage/erp-prod"   # pieces between RMAN and the store
    dsn = "erp-db:1521/ERPPROD"              # the session: as [archiver.databases.oracle]
    user = "C##TIDEMARK"
    password_file = "/var/run/secrets/tidemark/erp-prod"
    time_zone = "UTC"

From the environment: `TIDEMARK_EXECUTOR__DATABASES='[{"uid": ...}]'` (JSON).
No secret is a value here: PostgreSQL is reached as its OS user over the local socket (peer
authentication), Oracle's tools as the instance's OS user (`/`), and a password, where one is
needed, is a file reference or a wallet.

This module imports nothing from `services/` but the archiver's settings (the settings model
imports both): the Oracle session is configured by the archiver's `OracleConnection`, so one
database's session reads the same in both sections.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas import DatabaseRef, DatabaseUid, DbName, Engine
from services.archiver.settings import OracleConnection


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PostgresInstance(_Section):
    """Where a PostgreSQL cluster lives on this node."""

    data_dir: Path
    port: int = Field(default=5432, ge=1, le=65535)
    socket_dir: Path = Field(default=Path("/var/run/postgresql"))
    os_user: str = Field(default="postgres", pattern=r"^[a-z_][a-z0-9_-]{0,31}$")
    bin_dir: Path | None = Field(default=None, description="default: found by pg_bindir()")
    dbname: str = Field(default="postgres", description="database connected to for checks")
    password_file: Path | None = Field(
        default=None,
        description="a .pgpass-format file (host:port:database:user:password, mode 0600), "
        "if peer authentication is not used",
    )


class OracleSnapshots(_Section):
    """Storage-snapshot backups (`kind = "snapshot"`) of an Oracle database running in a pod
    on this node: where to find the pod, which VolumeSnapshotClass to use, how long to wait."""

    namespace: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
    pod_selector: str = Field(
        min_length=1, max_length=500, description="label selector of the database's pod"
    )
    snapshot_class: str = Field(pattern=r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
    node_name: str | None = Field(
        default=None,
        description="the node the pod must run on; default TIDEMARK_NODE (the chart sets it "
        "to the executor pod's spec.nodeName), else the host name",
    )
    ready_timeout_s: float = Field(
        default=600.0, gt=0, le=3600, description="longest wait for status.readyToUse"
    )
    poll_s: float = Field(default=2.0, gt=0, le=60, description="between readiness checks")


class OracleInstance(OracleConnection):
    """Where an Oracle database lives on this node, and the session the engine reads its V$
    views through (`OracleConnection`'s fields: dsn, user + password_file or wallet_dir,
    thick_mode, time_zone). RMAN itself runs as the instance's OS user, never with these."""

    oracle_home: Path = Field(description="the home the database runs from; tools come from bin/")
    oracle_sid: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_$#]{0,29}$")
    staging_dir: Path = Field(
        description="RMAN writes pieces here before they go to the store, and a restore stages "
        "them here (a few pieces at a time for a backup, the whole chain for a restore)"
    )
    channels: int = Field(default=2, ge=1, le=64, description="RMAN disk channels of a backup")
    backup_attempts: int = Field(
        default=3,
        ge=1,
        le=10,
        description="RMAN backup runs per job while the failure is retryable (ORA-19511, ...)",
    )
    retry_base_s: float = Field(
        default=30.0, ge=0, le=3600, description="wait before the second run; doubled after"
    )
    snapshots: OracleSnapshots | None = Field(
        default=None, description="storage-snapshot backups through the Kubernetes API"
    )


class HostedDatabase(_Section):
    """One database this node runs operations for."""

    uid: DatabaseUid
    engine: Engine
    name: DbName
    system_id: int | None = Field(default=None, ge=0, lt=1 << 64)
    postgres: PostgresInstance | None = None
    oracle: OracleInstance | None = None

    @model_validator(mode="after")
    def _engine_section(self) -> HostedDatabase:
        if self.engine is Engine.POSTGRES and self.postgres is None:
            raise ValueError(f"database {self.uid}: a PostgreSQL database needs [postgres]")
        if self.engine is not Engine.POSTGRES and self.postgres is not None:
            raise ValueError(f"database {self.uid}: [postgres] is for PostgreSQL databases")
        if self.engine is Engine.ORACLE and self.oracle is None:
            raise ValueError(f"database {self.uid}: an Oracle database needs [oracle]")
        if self.engine is not Engine.ORACLE and self.oracle is not None:
            raise ValueError(f"database {self.uid}: [oracle] is for Oracle databases")
        return self

    @property
    def ref(self) -> DatabaseRef:
        return DatabaseRef(
            uid=self.uid, engine=self.engine, name=self.name, system_id=self.system_id
        )


class ExecutorSettings(_Section):
    """How the executor runs jobs. Defaults suit the embedded stack."""

    concurrency: int = Field(default=2, ge=1, le=64, description="jobs at once on this node")
    job_timeout_s: float = Field(default=6 * 3600.0, gt=0, description="a job's longest run")
    heartbeat_s: float = Field(default=5.0, gt=0, description="node heartbeat in tm_nodes")
    journal_path: Path | None = Field(
        default=None, description="default <state_dir>/executor/jobs.sqlite"
    )
    scratch_dir: Path | None = Field(
        default=None, description="verification restores; default <state_dir>/executor/scratch"
    )
    backup_part_mib: int = Field(
        default=64, ge=5, le=5120, description="a base backup is stored in parts of this size"
    )
    prefetch: int = Field(
        default=4, ge=0, le=64, description="WAL segments fetched ahead during recovery"
    )
    queue_limit: int = Field(
        default=16,
        ge=1,
        le=1024,
        description="commands taken at once (running and waiting for their database or a slot)",
    )
    progress_interval_s: float = Field(
        default=0.5, gt=0, description="job.progress at most this often per job (phases always)"
    )
    cancel_grace_s: float = Field(
        default=30.0, gt=0, description="how long a cancelled engine may take to clean up"
    )
    journal_keep_days: float = Field(
        default=30.0, gt=0, description="how long finished jobs stay in the journal"
    )
    databases: list[HostedDatabase] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_databases(self) -> ExecutorSettings:
        uids = [d.uid for d in self.databases]
        if len(uids) != len(set(uids)):
            raise ValueError("executor.databases lists a database uid twice")
        return self

    def journal_for(self, state_dir: Path) -> Path:
        return self.journal_path or state_dir / "executor" / "jobs.sqlite"

    def scratch_for(self, state_dir: Path) -> Path:
        return self.scratch_dir or state_dir / "executor" / "scratch"

    def database(self, uid: str) -> HostedDatabase | None:
        return next((d for d in self.databases if d.uid == uid), None)
