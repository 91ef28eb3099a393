"""The doctor in the migration saga's `validating` phase: the checks of `tidemark doctor oracle`
(`doctor.py`) that a method relies on, run on each side before anything changes.

    CHECKS_OF    method -> which doctor checks must hold, per side and options (one row per
                 method; a method adds its row here)
    examine_side the doctor on one side through the step's own SQL session; what does not hold,
                 or could not be checked, comes back as the preflight's problems

Every check named in a method's row counts, advisory ones too: `datapump_roles` is advice for
a database in general, but a Data Pump job over other users' schemas fails without the roles.
A check that could not be checked (a view this user cannot read) is a problem as well, never a
pass: the migration would be the first to find out. What only the method knows (the schemas
there or not, the database link) stays with the method's steps (`migration_steps.py`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from schemas.messages import MigrationMethod
from schemas.messages.migrations import StepSide
from services.engines.oracle import doctor
from services.engines.oracle.datapump import DataPumpSql
from services.engines.settings import OracleInstance

__all__ = ["CHECKS_OF", "SideFindings", "SqlDoctorSource", "examine_side"]

Selects = Callable[[StepSide, Mapping[str, str]], tuple[str, ...]]
"""The doctor checks one side must pass, from the side and the request's options."""


def _datapump(side: StepSide, options: Mapping[str, str]) -> tuple[str, ...]:
    if side == "target":
        return ("release", "datapump_directory", "datapump_roles")
    over_link = bool(options.get("network_link"))
    # Over a link the source writes no file: its directory object is not used.
    staged = () if over_link else ("datapump_directory",)
    return ("release", "tde_keystore", *staged, "datapump_roles")


def _dataguard(side: StepSide, options: Mapping[str, str]) -> tuple[str, ...]:
    if side == "target":
        # An instance started NOMOUNT has no V$DATABASE: the method reads what it can say.
        return ()
    return (
        "release",
        "archivelog",
        "force_logging",
        "password_file",
        "standby_redo_logs",
        "standby_file_management",
        "platform",
        "tde_keystore",
    )


CHECKS_OF: dict[MigrationMethod, Selects] = {
    MigrationMethod.DATAPUMP: _datapump,
    MigrationMethod.DATAGUARD: _dataguard,
}
"""Each Oracle method's doctor checks, per side (`doctor.CHECKS` names)."""


@dataclass(frozen=True)
class SqlDoctorSource:
    """`doctor.DoctorSource` over a migration step's SQL (python-oracledb, or the simulator's):
    the same session the step's other statements use, so the doctor sees what they will."""

    sql: DataPumpSql

    async def rows(self, sql: str, binds: Mapping[str, object]) -> list[dict[str, Any]]:
        return await self.sql.rows("doctor", sql, **binds)

    async def execute(self, sql: str) -> None:
        await self.sql.call("doctor", sql)


@dataclass(frozen=True)
class SideFindings:
    problems: list[str]
    facts: dict[str, str]
    report: doctor.Report


async def examine_side(
    method: MigrationMethod,
    side: StepSide,
    options: Mapping[str, str],
    name: str,
    instance: OracleInstance,
    sql: DataPumpSql,
    *,
    staging_path: str,
) -> SideFindings:
    """The method's doctor checks on one side; `name` prefixes each problem."""
    select = CHECKS_OF.get(method)
    if select is None:
        return SideFindings([], {}, doctor.Report(name, (), (), {}))
    report = await doctor.examine(
        SqlDoctorSource(sql),
        doctor.DoctorOptions(
            time_zone=instance.time_zone,
            datapump_directory=instance.datapump_directory,
            datapump_path=staging_path,
            only=frozenset(select(side, options)),
        ),
        dsn=instance.dsn,
    )
    problems = []
    for check in report.checks:
        if check.verdict is doctor.Verdict.FAILS:
            problems.append(
                f"{name}: doctor {check.name}: {check.observed or '(nothing)'}, expected "
                f"{check.expected}" + (f" ({check.why})" if check.why else "")
            )
        elif check.verdict is doctor.Verdict.NOT_CHECKED:
            problems.append(f"{name}: doctor {check.name} could not be checked: {check.why}")
    facts = {f"doctor_{k}": v[:500] for k, v in report.facts.items() if k in _KEPT}
    facts["doctor_checks"] = ",".join(c.name for c in report.checks)[:500]
    return SideFindings([p[:500] for p in problems], facts, report)


_KEPT = frozenset({"version", "platform", "cdb"})
"""The doctor's facts worth keeping in the preflight's result (the advisor's inputs)."""
