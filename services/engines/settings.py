"""What an engine needs to know about the databases it drives: one section per engine.

These are the engine's own settings models, below every service: the executor hands them to
the engine drivers, and the archiver's Oracle source opens its session with the same
`OracleConnection`, so one database's session reads the same everywhere. Where a database is
declared (once, in the top-level `[[databases]]`) is `services/settings/databases.py`.

No secret is a value here: PostgreSQL is reached as its OS user over the local socket (peer
authentication), Oracle's tools as the instance's OS user (`/`), and a password, where one is
needed, is a file reference or a wallet.
"""

from __future__ import annotations

import re
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from schemas import DatabaseRef, DatabaseUid, DbName, Engine

__all__ = [
    "EngineSettings",
    "HostedDatabase",
    "OracleConnection",
    "OracleInstance",
    "OracleSnapshots",
    "PostgresInstance",
]


class _Section(BaseModel):
    # An Oracle DSN refused for carrying a password must not be printed back in the error.
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)


# `user/password@host`: a DSN that carries a password would put it in settings, logs and errors.
_DSN_WITH_PASSWORD = re.compile(r"^[^@/\s]+/[^@]*@")


class OracleConnection(_Section):
    """How to reach an Oracle database (the shape `services.engines.oracle.session` connects
    with). Credentials: `user` + `password_file`, or `wallet_dir` (an external password store:
    the directory with the wallet's sqlnet.ora and tnsnames.ora; thick mode, since thin mode has
    no external authentication; `dsn` is then the wallet's alias)."""

    dsn: str = Field(min_length=1, max_length=1024, description="easy connect string or alias")
    user: str | None = Field(default=None, min_length=1, max_length=128)
    password_file: Path | None = Field(default=None, description="a file holding the password")
    wallet_dir: Path | None = Field(
        default=None, description="external password store (wallet + sqlnet.ora); thick mode"
    )
    thick_mode: bool = Field(
        default=False, description="Oracle Client libraries: 11.2 databases, wallets"
    )
    client_lib_dir: Path | None = Field(
        default=None, description="thick mode: where the Oracle Client libraries are"
    )
    time_zone: str = Field(
        default="UTC", description="the database server's time zone (IANA), checked on connect"
    )
    arraysize: int = Field(default=500, ge=1, le=100_000, description="rows per fetch")

    @field_validator("dsn")
    @classmethod
    def _no_password_in_dsn(cls, value: str) -> str:
        if _DSN_WITH_PASSWORD.match(value):
            # Not echoed back: the value is the secret.
            raise ValueError("the DSN carries a password (user/password@...): use password_file")
        return value

    @field_validator("time_zone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"time_zone {value!r} is not an IANA time zone") from None
        return value

    @model_validator(mode="after")
    def _one_way_to_log_in(self) -> OracleConnection:
        if (self.password_file is None) == (self.wallet_dir is None):
            raise ValueError("give password_file (with user) or wallet_dir, not both or neither")
        if self.password_file is not None and self.user is None:
            raise ValueError("password_file needs user")
        if self.wallet_dir is not None and not self.thick_mode:
            raise ValueError("wallet_dir (external authentication) needs thick_mode = true")
        if self.client_lib_dir is not None and not self.thick_mode:
            raise ValueError("client_lib_dir is for thick_mode")
        return self


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
    datapump_directory: str = Field(
        default="DATA_PUMP_DIR",
        pattern=r"^[A-Z][A-Z0-9_$#]{0,127}$",
        description="the directory object the `datapump` method's dump files and logs go to",
    )
    datapump_dir: Path | None = Field(
        default=None,
        description="that directory object's path as this node sees it (where dump files are "
        "staged to and from the store); default staging_dir/datapump",
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


class EngineSettings(_Section):
    """What the engine drivers read: the databases of this node and the tunables of their
    operations. The executor's section extends it with how the executor itself runs jobs."""

    backup_part_mib: int = Field(
        default=64, ge=5, le=5120, description="a base backup is stored in parts of this size"
    )
    prefetch: int = Field(
        default=4, ge=0, le=64, description="WAL segments fetched ahead during recovery"
    )
    databases: list[HostedDatabase] = Field(
        default_factory=list,
        description="derived from the top-level [[databases]] (this node's); not set by hand",
    )
    postgres_bin_dirs: list[Path] = Field(
        default_factory=list,
        max_length=16,
        description="PostgreSQL bin directories of this node beside /usr/lib/postgresql/*/bin "
        "(each asked its version): where a migration's target release is found",
    )

    @model_validator(mode="after")
    def _unique_databases(self) -> EngineSettings:
        uids = [d.uid for d in self.databases]
        if len(uids) != len(set(uids)):
            raise ValueError("executor.databases lists a database uid twice")
        return self

    def database(self, uid: str) -> HostedDatabase | None:
        return next((d for d in self.databases if d.uid == uid), None)
