"""The method advisor's question and answer (`tm.qry.planner.advise`, request/reply).

The question is what the preflight gathers about both sides (facts) and what the user can
accept (constraints); the answer ranks the methods that fit, with estimates, and says why each
other method is ruled out.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import Field, StringConstraints, model_validator

from schemas._base import StrictModel
from schemas.database import Engine
from schemas.messages.migrations import MAX_DOWNTIME_BUDGET_S, MigrationMethod


class Endianness(StrEnum):
    LITTLE = "little"
    BIG = "big"


class Scope(StrEnum):
    """What moves: one database (a PostgreSQL database, an Oracle PDB) or the whole cluster/CDB."""

    DATABASE = "database"
    CLUSTER = "cluster"


Version = Annotated[int, Field(ge=7, le=99, description="major release (PostgreSQL 15, Oracle 19)")]
Charset = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,40}$")]

_IDENTIFIER = r'(?:[a-z_][a-z0-9_]*|"(?:[^"]|"")+")'
QualifiedTable = Annotated[
    str,
    StringConstraints(max_length=260, pattern=rf"^{_IDENTIFIER}\.{_IDENTIFIER}$"),
    Field(description="schema.table as PostgreSQL's format('%I.%I') writes it (quoted if need be)"),
]
ExtensionName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}$")]
MAX_NAMED_TABLES = 1000
"""Tables named per fact. One is enough to rule a method out; a preflight that finds more
names the first ones (the reason names five and counts the rest)."""
MAX_NAMED_EXTENSIONS = 100

PlatformName = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9 ()\[\]._/-]{0,100}$"),
    Field(description="Oracle: V$DATABASE.PLATFORM_NAME, e.g. 'Linux x86 64-bit'"),
]
PLATFORM_ENDIANNESS: dict[str, Endianness] = {
    "linux x86 64-bit": Endianness.LITTLE,
    "aix-based systems (64-bit)": Endianness.BIG,
    "solaris[tm] oe (64-bit)": Endianness.BIG,
    "solaris operating system (x86-64)": Endianness.LITTLE,
    "microsoft windows x86 64-bit": Endianness.LITTLE,
}
"""Rows of V$TRANSPORTABLE_PLATFORM (PLATFORM_NAME lower-cased → ENDIAN_FORMAT): a platform
named here must come with its own byte order. Others are taken as given."""
OracleName = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Za-z][A-Za-z0-9_$#]{0,127}$"),
    Field(description="an Oracle schema (user) name, unquoted"),
]
MAX_SCHEMAS = 1000


class MigrationFacts(StrictModel):
    """What the preflight found. Rates are bytes per second; sizes include indexes."""

    engine: Engine
    source_version: Version
    target_version: Version
    size_bytes: int = Field(ge=0)
    write_rate_bytes_s: float = Field(ge=0, description="redo/WAL generated per second")
    bandwidth_bytes_s: float = Field(gt=0, description="usable throughput source → target")
    source_endianness: Endianness = Endianness.LITTLE
    target_endianness: Endianness = Endianness.LITTLE
    source_charset: Charset
    target_charset: Charset
    encrypted: bool = Field(default=False, description="TDE (Oracle) or an encrypting fork")
    multitenant: bool = Field(default=False, description="Oracle CDB with PDBs")
    databases_in_cluster: int = Field(
        default=1, ge=1, description="PostgreSQL databases, or Oracle PDBs, in the source cluster"
    )
    managed_source: bool = Field(
        default=False,
        description="a managed cloud database (RDS and the like): no physical replication, "
        "no archive_command, no RMAN access from outside",
    )
    tables_without_identity: list[QualifiedTable] = Field(
        default_factory=list,
        max_length=MAX_NAMED_TABLES,
        description="PostgreSQL: tables whose UPDATEs and DELETEs logical replication cannot "
        "carry (no primary key and REPLICA IDENTITY DEFAULT, NOTHING, or an identity index gone)",
    )
    unlogged_tables: list[QualifiedTable] = Field(
        default_factory=list,
        max_length=MAX_NAMED_TABLES,
        description="PostgreSQL: UNLOGGED tables (not in the WAL, so not replicated)",
    )
    large_objects: int = Field(
        default=0, ge=0, description="PostgreSQL: large objects (pg_largeobject; not replicated)"
    )
    extensions_missing_on_target: list[ExtensionName] = Field(
        default_factory=list,
        max_length=MAX_NAMED_EXTENSIONS,
        description="PostgreSQL: extensions the source has installed that the target's binaries "
        "do not offer (not in its pg_available_extensions)",
    )
    source_platform: PlatformName | None = Field(
        default=None, description="Oracle: the source's platform; none: only its byte order"
    )
    target_platform: PlatformName | None = None
    source_nchar_charset: Charset | None = Field(
        default=None, description="Oracle: the national character set (NLS_NCHAR_CHARACTERSET)"
    )
    target_nchar_charset: Charset | None = None
    schemas: list[OracleName] = Field(
        default_factory=list,
        max_length=MAX_SCHEMAS,
        description="Oracle: the schemas to move (Data Pump SCHEMAS=); empty: the whole database",
    )

    @model_validator(mode="after")
    def _consistent(self) -> MigrationFacts:
        if self.schemas and self.engine is not Engine.ORACLE:
            raise ValueError(
                "schemas are an Oracle fact (Data Pump SCHEMAS=): a PostgreSQL migration moves "
                "one database or the whole cluster"
            )
        for side, platform, endianness in (
            ("source", self.source_platform, self.source_endianness),
            ("target", self.target_platform, self.target_endianness),
        ):
            known = PLATFORM_ENDIANNESS.get((platform or "").lower())
            if known is not None and known is not endianness:
                raise ValueError(
                    f"the {side} platform {platform} is {known} endian "
                    f"(V$TRANSPORTABLE_PLATFORM), not {endianness}"
                )
        return self


class AdviceConstraints(StrictModel):
    downtime_budget_s: float = Field(gt=0, le=MAX_DOWNTIME_BUDGET_S)
    window_s: float | None = Field(
        default=None, gt=0, description="length of the cutover window; none: no window"
    )
    scope: Scope = Scope.DATABASE


class AdviceRequest(StrictModel):
    facts: MigrationFacts
    constraints: AdviceConstraints


class MethodAdvice(StrictModel):
    method: MigrationMethod
    built: bool = Field(
        default=True,
        description="the planner runs this method; false: advice only, a request is refused "
        "(TM-MIG-METHOD) until its steps exist",
    )
    rank: int = Field(ge=1)
    estimated_duration_s: float = Field(ge=0, description="request to ready, before cutover")
    estimated_downtime_s: float = Field(ge=0, description="fence to the target accepting writes")
    why: str


class RuledOut(StrictModel):
    method: MigrationMethod
    reasons: list[str] = Field(min_length=1)


class Advice(StrictModel):
    ranked: list[MethodAdvice]
    ruled_out: list[RuledOut]
