"""The method advisor: which way to move a database, from the facts and the user's constraints.

    tm.qry.planner.advise   AdviceRequest → Advice

`advise` is a pure function. Each method has a row in `RULES`: the conditions that rule it out
(each a question with the sentence given when the answer is no) and how its duration and
downtime are estimated. The table in docs/migration.md is this table; a test holds them equal.
A method survives when no condition rules it out and its estimated downtime fits both the
budget and the window; survivors are ranked by downtime, then duration.

What each PostgreSQL method cannot do is a condition of its own row: a physical copy keeps the
release, so a major upgrade leaves `logical-upgrade` and `dump` (the refusal says so);
`logical-upgrade` cannot carry tables without a replica identity, unlogged tables or large
objects (the refusal names them and says to fix them first or use `dump`); none of them works
while the target lacks an extension the source uses. `dump` fences the source for the whole
dump and restore, so its downtime is its whole duration, and a budget or window shorter than
that rules it out with both figures.

Oracle's rows follow Oracle's own order of preference (reference: MOS 2471245.1 and the cloud
migration guides): Data Guard first for the same platform, release and character sets, whole
databases; Data Pump for a character-set change, a subset of schemas, or small data (its
downtime is the whole export and import, so a small database is where it fits a budget);
XTTS for a byte-order change, a version jump or data too large to export in the window (its
downtime is the final incremental and the metadata, not the size). A ranked method the planner
does not run yet says so (`built: false`): `migrate start` refuses it (TM-MIG-METHOD).

Estimates are first-order and say so: copy time is size over bandwidth, catch-up needs the
bandwidth to exceed the write rate, and each method's fixed cutover cost is a named constant
below (PostgreSQL's are bounds over what `bench/migrate` measures; Oracle's are Oracle's published
expectations per technology). They rank methods; they are not promises.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from nats.micro.request import Request
from nats.micro.service import Service
from pydantic import ValidationError

from schemas.messages.advice import (
    Advice,
    AdviceConstraints,
    AdviceRequest,
    MethodAdvice,
    MigrationFacts,
    RuledOut,
    Scope,
)
from schemas.messages.migrations import METHOD_ENGINE, MigrationMethod
from services.planner.migration_record import METHODS_BUILT

__all__ = [
    "ADVISE_SUBJECT",
    "RULES",
    "Condition",
    "MethodRule",
    "advise",
    "rules_table",
    "serve_advice",
]

ADVISE_SUBJECT = "tm.qry.planner.advise"

NAMED_IN_A_REASON = 5
"""Tables or extensions a reason names; the rest are counted."""

STREAM_CUTOVER_S = 5.0
"""Physical standby promote: fence, final replay, promote (a bound; see docs/migration.md)."""
ARCHIVE_CUTOVER_S = 10.0
"""Roll-forward from the archive: log switch, upload, fetch and replay of the last segment
(`make bench-migrate` measured 1.4-2.9 s on a local store; a remote bucket adds round trips)."""
LOGICAL_CUTOVER_S = 60.0
"""Logical replication: final catch-up, sequences set, subscription dropped."""
DATAGUARD_CUTOVER_S = 300.0
"""Oracle's expectation for a Data Guard switchover: under 5 minutes."""
RMAN_CUTOVER_S = 1800.0
"""RMAN roll-forward: the last archived logs, recovery, OPEN RESETLOGS."""
XTTS_METADATA_S = 1800.0
"""XTTS: the final incremental is small; the FTEX metadata import dominates (object count)."""
XTTS_INCREMENT_S = 3600.0
"""Changes accumulated between XTTS incrementals (one an hour)."""
REBUILD_FACTOR = 2.0
"""Logical copies: export then import, indexes rebuilt: about twice the transfer time."""


@dataclass(frozen=True)
class Condition:
    """One requirement of a method: `holds` answers it; `refusal` is said when it does not."""

    holds: Callable[[MigrationFacts, AdviceConstraints], bool]
    refusal: Callable[[MigrationFacts, AdviceConstraints], str]
    rule: str
    """The requirement as the docs' table states it."""


@dataclass(frozen=True)
class MethodRule:
    method: MigrationMethod
    conditions: tuple[Condition, ...]
    duration_s: Callable[[MigrationFacts], float]
    downtime_s: Callable[[MigrationFacts], float]
    estimate: str
    """How duration and downtime are estimated, as the docs' table states it."""
    downtime_is: str | None = None
    """What the downtime is made of, said beside an estimate over the budget or the window
    where the `estimate` alone would not explain it (the whole copy, not a cutover)."""


def _copy_s(f: MigrationFacts) -> float:
    return f.size_bytes / f.bandwidth_bytes_s


def _catch_up_s(f: MigrationFacts) -> float:
    # While the copy ran, the source wrote write_rate * copy_s more; the target gains on it at
    # bandwidth - write_rate. `_catches_up` rules the method out before this divides by <= 0.
    return f.write_rate_bytes_s * _copy_s(f) / (f.bandwidth_bytes_s - f.write_rate_bytes_s)


def _named(names: list[str]) -> str:
    shown = ", ".join(names[:NAMED_IN_A_REASON])
    more = len(names) - NAMED_IN_A_REASON
    return f"{shown} and {more} more" if more > 0 else shown


def _upgrade_methods(f: MigrationFacts) -> str:
    # Derived from RULES (read at call time, after it is defined): the engine's methods that do
    # not keep the release.
    methods = [
        rule.method.value
        for rule in RULES
        if METHOD_ENGINE[rule.method] is f.engine
        and all(c is not SAME_VERSION for c in rule.conditions)
    ]
    return " or ".join(methods)


NOT_MANAGED = Condition(
    lambda f, c: not f.managed_source,
    lambda f, c: (
        "a managed cloud source allows no physical replication, archive command or "
        "RMAN access from outside: only the logical methods reach it"
    ),
    "source is not a managed cloud database",
)
SAME_VERSION = Condition(
    lambda f, c: f.source_version == f.target_version,
    lambda f, c: (
        f"a physical copy keeps the release: source is {f.source_version}, target "
        f"{f.target_version}; a major upgrade moves by {_upgrade_methods(f)}"
    ),
    "same major release on both sides",
)
SAME_ENDIAN = Condition(
    lambda f, c: f.source_endianness == f.target_endianness,
    lambda f, c: (
        f"a physical copy keeps the byte order: source is {f.source_endianness} endian, "
        f"target {f.target_endianness}"
    ),
    "same endianness (platform)",
)
SAME_CHARSET = Condition(
    lambda f, c: f.source_charset.upper() == f.target_charset.upper(),
    lambda f, c: (
        f"a physical copy keeps the character set: source is {f.source_charset}, target "
        f"{f.target_charset}"
    ),
    "same character set",
)
CATCHES_UP = Condition(
    lambda f, c: f.bandwidth_bytes_s > f.write_rate_bytes_s,
    lambda f, c: (
        f"the source writes {f.write_rate_bytes_s:.0f} B/s and the link carries "
        f"{f.bandwidth_bytes_s:.0f} B/s: the target would never catch up"
    ),
    "bandwidth exceeds the write rate (the target catches up)",
)
WHOLE_CLUSTER = Condition(
    lambda f, c: c.scope is Scope.CLUSTER or f.databases_in_cluster == 1,
    lambda f, c: (
        f"a physical copy moves the whole cluster; {f.databases_in_cluster} databases "
        "are in it and one was asked for"
    ),
    "whole cluster, or the only database in it",
)
NOT_NEWER_SOURCE = Condition(
    lambda f, c: f.target_version >= f.source_version,
    lambda f, c: f"the target ({f.target_version}) is older than the source ({f.source_version})",
    "target release not older than the source",
)
PG_LOGICAL = Condition(
    lambda f, c: f.source_version >= 10,
    lambda f, c: (
        f"logical replication needs PostgreSQL 10 or later; the source is {f.source_version}"
    ),
    "source PostgreSQL 10 or later (logical replication)",
)
PER_DATABASE = Condition(
    lambda f, c: c.scope is Scope.DATABASE or f.databases_in_cluster == 1,
    lambda f, c: (
        "logical replication moves one database at a time, not a whole cluster (roles "
        "and other databases are not carried)"
    ),
    "one database (not a whole cluster)",
)
WHOLE_CDB = Condition(
    lambda f, c: not f.multitenant or c.scope is Scope.CLUSTER,
    lambda f, c: (
        "Data Guard and RMAN restores work on whole CDBs; one PDB out of a shared CDB "
        "moves with XTTS"
    ),
    "non-CDB, or the whole CDB",
)
XTTS_TDE = Condition(
    lambda f, c: not (f.encrypted and f.source_endianness != f.target_endianness),
    lambda f, c: (
        "encrypted tablespaces cross endianness only decrypted: XTTS with TDE is same-endian only"
    ),
    "not encrypted across an endian change",
)

SAME_PLATFORM = Condition(
    lambda f, c: (
        f.source_platform is None
        or f.target_platform is None
        or f.source_platform.lower() == f.target_platform.lower()
    ),
    lambda f, c: (
        f"a standby or a restore runs the source's datafiles on the target's platform: source "
        f"is {f.source_platform}, target {f.target_platform}; a heterogeneous pair must be one "
        "MOS 413484.1 lists, which the advisor does not judge: across platforms, xtts or datapump"
    ),
    "same platform (when both are given)",
)
SAME_NCHAR = Condition(
    lambda f, c: (
        f.source_nchar_charset is None
        or f.target_nchar_charset is None
        or f.source_nchar_charset.upper() == f.target_nchar_charset.upper()
    ),
    lambda f, c: (
        f"datafiles keep the national character set: source is {f.source_nchar_charset}, "
        f"target {f.target_nchar_charset} (a transportable plug-in fails with ORA-39123 + "
        "ORA-19736); a change moves by datapump"
    ),
    "same national character set (when both are given)",
)
TRANSPORT_CHARSET = Condition(
    lambda f, c: f.source_charset.upper() == f.target_charset.upper(),
    lambda f, c: (
        f"transported tablespaces keep the character set: source is {f.source_charset}, target "
        f"{f.target_charset} (a strict binary subset also transports; the advisor does not "
        "judge one); a change moves by datapump"
    ),
    "same character set",
)
WHOLE_DATABASE = Condition(
    lambda f, c: not f.schemas,
    lambda f, c: (
        f"moves whole databases (or whole tablespaces), not a subset of schemas "
        f"({_named(f.schemas)}): a subset moves by datapump (SCHEMAS=)"
    ),
    "the whole database, not a subset of schemas",
)
FTEX_RELEASES = Condition(
    lambda f, c: f.source_version >= 11 and f.target_version >= 12,
    lambda f, c: (
        "full transportable export/import needs a source of 11.2.0.3 or later and a target "
        f"of 12.1 or later: source is {f.source_version}, target {f.target_version}"
    ),
    "source 11.2.0.3 or later, target 12.1 or later (full transportable export/import)",
)

EXTENSIONS_ON_TARGET = Condition(
    lambda f, c: not f.extensions_missing_on_target,
    lambda f, c: (
        "the source uses extensions the target does not offer "
        f"({_named(f.extensions_missing_on_target)}): install them on the target first (every "
        "method brings over the schema or the catalog that uses them)"
    ),
    "every extension the source uses is available on the target",
)
REPLICA_IDENTITY = Condition(
    lambda f, c: not f.tables_without_identity,
    lambda f, c: (
        "logical replication cannot carry the UPDATEs and DELETEs of "
        f"{_named(f.tables_without_identity)} (no primary key, no replica identity): fix "
        "first (a primary key or REPLICA IDENTITY FULL) or use dump"
    ),
    "every table has a primary key or a replica identity",
)
ALL_LOGGED = Condition(
    lambda f, c: not f.unlogged_tables,
    lambda f, c: (
        f"logical replication does not carry unlogged tables ({_named(f.unlogged_tables)}): "
        "fix first (ALTER TABLE ... SET LOGGED) or use dump"
    ),
    "no unlogged tables (not replicated)",
)
NO_LARGE_OBJECTS = Condition(
    lambda f, c: f.large_objects == 0,
    lambda f, c: (
        f"logical replication does not carry large objects ({f.large_objects} in the "
        "source): fix first (move them into bytea columns) or use dump"
    ),
    "no large objects (not replicated)",
)

PG_PHYSICAL = (
    NOT_MANAGED,
    SAME_VERSION,
    SAME_ENDIAN,
    SAME_CHARSET,
    WHOLE_CLUSTER,
    EXTENSIONS_ON_TARGET,
    CATCHES_UP,
)
"""What both PostgreSQL physical copies need: the same cluster, byte for byte, on the target."""

RULES: tuple[MethodRule, ...] = (
    MethodRule(
        MigrationMethod.PHYSICAL_STREAM,
        PG_PHYSICAL,
        lambda f: _copy_s(f) + _catch_up_s(f),
        lambda f: STREAM_CUTOVER_S,
        f"copy = size / bandwidth, then catch-up; downtime = promote ({STREAM_CUTOVER_S:.0f} s)",
    ),
    MethodRule(
        MigrationMethod.PHYSICAL_ARCHIVE,
        PG_PHYSICAL,
        lambda f: _copy_s(f) + _catch_up_s(f),
        lambda f: ARCHIVE_CUTOVER_S,
        "restore = size / bandwidth, then roll forward; downtime = last segment through the "
        f"bucket ({ARCHIVE_CUTOVER_S:.0f} s)",
    ),
    MethodRule(
        MigrationMethod.LOGICAL_UPGRADE,
        (
            PG_LOGICAL,
            NOT_NEWER_SOURCE,
            PER_DATABASE,
            REPLICA_IDENTITY,
            ALL_LOGGED,
            NO_LARGE_OBJECTS,
            EXTENSIONS_ON_TARGET,
            CATCHES_UP,
        ),
        lambda f: REBUILD_FACTOR * _copy_s(f) + _catch_up_s(f),
        lambda f: LOGICAL_CUTOVER_S,
        f"copy = {REBUILD_FACTOR:.0f} * size / bandwidth (indexes rebuilt); downtime = final "
        f"catch-up and sequences ({LOGICAL_CUTOVER_S:.0f} s)",
    ),
    MethodRule(
        MigrationMethod.DUMP,
        (NOT_NEWER_SOURCE, EXTENSIONS_ON_TARGET),
        lambda f: 0.0,
        lambda f: REBUILD_FACTOR * _copy_s(f),
        f"no copy before cutover; downtime = dump + restore = {REBUILD_FACTOR:.0f} * size / "
        "bandwidth",
        "dump + restore: the source is fenced from the dump's start to the restore's end",
    ),
    MethodRule(
        MigrationMethod.DATAGUARD,
        (
            NOT_MANAGED,
            SAME_VERSION,
            SAME_PLATFORM,
            SAME_ENDIAN,
            SAME_CHARSET,
            SAME_NCHAR,
            WHOLE_CDB,
            WHOLE_DATABASE,
            CATCHES_UP,
        ),
        lambda f: _copy_s(f) + _catch_up_s(f),
        lambda f: DATAGUARD_CUTOVER_S,
        f"duplicate = size / bandwidth, then apply; downtime = switchover "
        f"({DATAGUARD_CUTOVER_S:.0f} s)",
    ),
    MethodRule(
        MigrationMethod.RMAN,
        (
            NOT_MANAGED,
            SAME_VERSION,
            SAME_PLATFORM,
            SAME_ENDIAN,
            SAME_CHARSET,
            SAME_NCHAR,
            WHOLE_CDB,
            WHOLE_DATABASE,
            CATCHES_UP,
        ),
        lambda f: _copy_s(f) + _catch_up_s(f),
        lambda f: RMAN_CUTOVER_S,
        "restore = size / bandwidth, then logs; downtime = last logs, recover, open "
        f"({RMAN_CUTOVER_S:.0f} s)",
    ),
    MethodRule(
        MigrationMethod.XTTS,
        (
            NOT_MANAGED,
            NOT_NEWER_SOURCE,
            FTEX_RELEASES,
            TRANSPORT_CHARSET,
            SAME_NCHAR,
            XTTS_TDE,
            WHOLE_DATABASE,
            CATCHES_UP,
        ),
        lambda f: _copy_s(f) + _catch_up_s(f),
        lambda f: f.write_rate_bytes_s * XTTS_INCREMENT_S / f.bandwidth_bytes_s + XTTS_METADATA_S,
        "copy = size / bandwidth; downtime = final incremental (an hour of writes) + "
        f"metadata import ({XTTS_METADATA_S:.0f} s)",
    ),
    MethodRule(
        MigrationMethod.DATAPUMP,
        (NOT_NEWER_SOURCE,),
        lambda f: 0.0,
        lambda f: REBUILD_FACTOR * _copy_s(f),
        f"no copy before cutover; downtime = export + import = {REBUILD_FACTOR:.0f} * size / "
        "bandwidth",
        "export + import: the source is fenced from the export's start to the import's end",
    ),
)


def _fmt(seconds: float) -> str:
    # One decimal past two minutes, so an estimate just over a budget never reads as equal to it.
    if seconds < 120:
        return f"{seconds:.0f} s"
    value, unit = (seconds / 60, "min") if seconds < 7200 else (seconds / 3600, "h")
    return f"{value:.1f}".removesuffix(".0") + f" {unit}"


def advise(request: AdviceRequest) -> Advice:
    """Rank the engine's methods for these facts and constraints; say why the rest are out."""
    facts, limits = request.facts, request.constraints
    fits: list[tuple[float, float, MethodRule]] = []
    ruled_out: list[RuledOut] = []
    for rule in RULES:
        if METHOD_ENGINE[rule.method] is not facts.engine:
            continue
        reasons = [c.refusal(facts, limits) for c in rule.conditions if not c.holds(facts, limits)]
        if not reasons:
            downtime = rule.downtime_s(facts)
            estimated = f"estimated downtime {_fmt(downtime)}" + (
                f" ({rule.downtime_is})" if rule.downtime_is else ""
            )
            if downtime > limits.downtime_budget_s:
                reasons.append(
                    f"{estimated} exceeds the budget of {_fmt(limits.downtime_budget_s)}"
                )
            if limits.window_s is not None and downtime > limits.window_s:
                reasons.append(f"{estimated} does not fit the {_fmt(limits.window_s)} window")
        if reasons:
            ruled_out.append(RuledOut(method=rule.method, reasons=reasons))
        else:
            fits.append((rule.downtime_s(facts), rule.duration_s(facts), rule))
    fits.sort(key=lambda item: (item[0], item[1]))
    ranked = [
        MethodAdvice(
            method=rule.method,
            built=rule.method in METHODS_BUILT,
            rank=rank,
            estimated_duration_s=duration,
            estimated_downtime_s=downtime,
            why=rule.estimate,
        )
        for rank, (downtime, duration, rule) in enumerate(fits, start=1)
    ]
    return Advice(ranked=ranked, ruled_out=ruled_out)


def rules_table() -> list[tuple[str, str, str, str]]:
    """(method, engine, requirements, estimate) per row, as docs/migration.md shows them."""
    return [
        (
            rule.method.value,
            METHOD_ENGINE[rule.method].value,
            "; ".join(c.rule for c in rule.conditions),
            rule.estimate,
        )
        for rule in RULES
    ]


async def serve_advice(service: Service) -> None:
    """Add `tm.qry.planner.advise` to the planner's micro service (`nats.micro.Service`).

    A malformed request is answered `400` with what is wrong; the answer is pure, so any
    replica gives the same one.
    """

    async def handler(request: Request) -> None:
        try:
            asked = AdviceRequest.model_validate_json(request.data or b"{}")
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'request'}: {e['msg']}"
                for e in exc.errors()[:5]
            )
            await request.respond_error("400", f"bad AdviceRequest: {problems}")
            return
        await request.respond(advise(asked).model_dump_json().encode())

    await service.add_endpoint(name="advise", subject=ADVISE_SUBJECT, handler=handler)
