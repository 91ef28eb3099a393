"""What the `dataguard` method says to Oracle, and how it reads the answers.

Statements are constants; the one value DDL must carry (a DB_UNIQUE_NAME: ALTER DATABASE takes
no binds) is checked against `UNIQUE_NAME` before it is written into one. Scripts for the tools
are built here too, so the golden files under tests/golden/oracle/ pin every byte the engine
emits:

    duplicate_script        RMAN: the standby from the running primary (FROM ACTIVE DATABASE,
                            backup sets pulled by auxiliary channels)
    startup_mount_script    RMAN: a down instance started and mounted (the old primary after
                            its switchover shut it down)
    validate_script         DGMGRL: VALIDATE DATABASE <standby> (broker configurations only)

Readers, each refusing a shape it does not know rather than guessing:

    parse_interval          V$DATAGUARD_STATS VALUE ('+00 00:00:03'): seconds, None when empty
    parse_dg_time           TIME_COMPUTED / DATUM_TIME ('06/03/2024 11:18:52'), standby local
    judge_lag               the lag gate's reading: seconds, or unknown with the reason
                            (an empty value, a missing row, a DATUM_TIME too old)
    parse_validate          dgmgrl's VALIDATE output: ready for switchover or not, and why
                            (dgmgrl exits 0 when the answer is No: the words decide)
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

__all__ = [
    "CLOCK_SQL",
    "MRP_SQL",
    "OPEN_SQL",
    "ROLE_SQL",
    "START_APPLY_SQL",
    "STATS_SQL",
    "STOP_APPLY_SQL",
    "UNIQUE_NAME",
    "Lag",
    "Validation",
    "duplicate_script",
    "judge_lag",
    "parse_dg_time",
    "parse_interval",
    "parse_validate",
    "startup_mount_script",
    "switchover_sql",
    "validate_script",
]

UNIQUE_NAME = re.compile(r"^[A-Z][A-Z0-9_]{0,29}$")
"""A DB_UNIQUE_NAME as the method writes it (upper case, unquoted, 30 characters at most)."""

ROLE_SQL = """\
SELECT db_unique_name, dbid, database_role, open_mode, switchover_status, current_scn
  FROM v$database"""
"""Who this database is now: read on both sides before and after every role change."""

STATS_SQL = """\
SELECT name, value, unit, time_computed, datum_time
  FROM v$dataguard_stats
 WHERE name IN ('transport lag', 'apply lag')"""
"""Strings, all of them (VALUE an interval, the times MM/DD/YYYY HH24:MI:SS): parsed here."""

CLOCK_SQL = "SELECT TO_CHAR(SYSDATE, 'MM/DD/YYYY HH24:MI:SS') AS now FROM dual"
"""The standby's own clock, in the format and zone of DATUM_TIME, for the staleness rule."""

MRP_SQL = "SELECT name, action FROM v$dataguard_process WHERE name LIKE 'MRP%'"
"""Redo Apply's process (V$DATAGUARD_PROCESS, 12.2+; V$MANAGED_STANDBY is deprecated)."""

START_APPLY_SQL = "ALTER DATABASE RECOVER MANAGED STANDBY DATABASE DISCONNECT FROM SESSION"
"""Redo Apply in the background (real-time apply is the default from 12.1)."""

STOP_APPLY_SQL = "ALTER DATABASE RECOVER MANAGED STANDBY DATABASE CANCEL"

OPEN_SQL = "ALTER DATABASE OPEN"


def _name(unique_name: str) -> str:
    if not UNIQUE_NAME.fullmatch(unique_name):
        raise ValueError(f"{unique_name!r} is not a DB_UNIQUE_NAME (A-Z, 0-9, _; 30 at most)")
    return unique_name


def switchover_sql(target: str, *, verify: bool = False, force: bool = False) -> str:
    """`ALTER DATABASE SWITCHOVER TO <target> [VERIFY | FORCE]` (12.1+ syntax)."""
    if verify and force:
        raise ValueError("VERIFY and FORCE do not go together")
    suffix = " VERIFY" if verify else " FORCE" if force else ""
    return f"ALTER DATABASE SWITCHOVER TO {_name(target)}{suffix}"


def duplicate_script(*, channels: int = 2, section_size_mb: int = 512) -> str:
    """The standby from the primary while it runs: RMAN connected to both as argv says (wallet
    aliases, never a password), the auxiliary channels pulling compressed backup sets in
    sections, DORECOVER so the standby is consistent when the command returns."""
    if not 1 <= channels <= 16:
        raise ValueError("1 to 16 auxiliary channels")
    if not 64 <= section_size_mb <= 65_536:
        raise ValueError("a section size of 64 to 65536 MB")
    lines = ["RUN {"]
    lines += [f"  ALLOCATE CHANNEL prim{n} DEVICE TYPE DISK;" for n in range(1, channels + 1)]
    lines += [
        f"  ALLOCATE AUXILIARY CHANNEL stby{n} DEVICE TYPE DISK;" for n in range(1, channels + 1)
    ]
    lines += [
        "  DUPLICATE TARGET DATABASE FOR STANDBY FROM ACTIVE DATABASE",
        f"    USING COMPRESSED BACKUPSET SECTION SIZE {section_size_mb}M",
        "    DORECOVER NOFILENAMECHECK;",
        "}",
    ]
    return "\n".join(lines) + "\n"


def startup_mount_script() -> str:
    return "STARTUP MOUNT;\n"


def validate_script(standby: str) -> str:
    return f"VALIDATE DATABASE {_name(standby)};\n"


# -- V$DATAGUARD_STATS ------------------------------------------------------------------------

_INTERVAL = re.compile(r"^\+(\d{2,}) (\d{2}):(\d{2}):(\d{2})(?:\.\d+)?$")
_DG_TIME = "%m/%d/%Y %H:%M:%S"


def parse_interval(value: str | None) -> float | None:
    """'+DD HH:MI:SS' as seconds; None for an empty VALUE (lag unknown, never 0). Anything else
    is a shape this reader does not know: ValueError, not a guess."""
    text = (value or "").strip()
    if not text:
        return None
    found = _INTERVAL.fullmatch(text)
    if found is None:
        raise ValueError(f"V$DATAGUARD_STATS VALUE {text!r} is not '+DD HH:MI:SS'")
    days, hours, minutes, seconds = (int(g) for g in found.groups())
    if hours > 23 or minutes > 59 or seconds > 59:
        raise ValueError(f"V$DATAGUARD_STATS VALUE {text!r} is out of range")
    return float(((days * 24 + hours) * 60 + minutes) * 60 + seconds)


def parse_dg_time(value: str | None) -> datetime | None:
    """TIME_COMPUTED / DATUM_TIME text (standby local time, no zone); None when empty."""
    text = (value or "").strip()
    if not text:
        return None
    try:
        return datetime.strptime(text, _DG_TIME)
    except ValueError:
        raise ValueError(f"V$DATAGUARD_STATS time {text!r} is not MM/DD/YYYY HH24:MI:SS") from None


@dataclass(frozen=True)
class Lag:
    """One reading of the gate: `seconds` (the worse of transport and apply lag) or None,
    with `unknown` saying why nothing can be said."""

    seconds: float | None
    transport_s: float | None
    apply_s: float | None
    datum_age_s: float | None
    unknown: str = ""

    @property
    def known(self) -> bool:
        return self.seconds is not None


def judge_lag(
    rows: Sequence[Mapping[str, object]], now: str | None, *, stale_after_s: float
) -> Lag:
    """The lag of a standby from its V$DATAGUARD_STATS rows and its own clock (`CLOCK_SQL`).

    The numbers are computed from data the primary sends; when it stops arriving they keep
    their last value and only DATUM_TIME tells (Oracle: a DATUM_TIME that does not move means
    no data is received). So a reading is unknown, and the gate closed, when a row is missing,
    a value is empty, or the newest DATUM_TIME is more than `stale_after_s` behind the
    standby's clock: a zero lag with an old DATUM_TIME proves nothing."""
    by_name = {str(r["name"]).strip().lower(): r for r in rows}
    missing = [n for n in ("transport lag", "apply lag") if n not in by_name]
    if missing:
        why = (
            "V$DATAGUARD_STATS has no rows (not a standby, or not yet receiving)"
            if len(missing) == 2
            else f"V$DATAGUARD_STATS has no {missing[0]} row"
        )
        return Lag(None, None, None, None, why)
    transport = parse_interval(_text(by_name["transport lag"]["value"]))
    applied = parse_interval(_text(by_name["apply lag"]["value"]))
    datums = [parse_dg_time(_text(r["datum_time"])) for r in by_name.values()]
    clock = parse_dg_time(now)
    known = [d for d in datums if d is not None]
    age = (clock - max(known)).total_seconds() if known and clock is not None else None
    if transport is None or applied is None:
        empty = "transport lag" if transport is None else "apply lag"
        return Lag(None, transport, applied, age, f"{empty} is empty (unknown, not 0)")
    if age is None:
        return Lag(None, transport, applied, None, "no DATUM_TIME to judge the numbers by")
    if age > stale_after_s:
        return Lag(
            None,
            transport,
            applied,
            age,
            f"stale: DATUM_TIME is {age:.0f} s old (more than {stale_after_s:g} s): no redo "
            "has arrived since, the values are from then",
        )
    return Lag(max(transport, applied), transport, applied, max(age, 0.0))


def _text(value: object) -> str | None:
    return None if value is None else str(value)


# -- dgmgrl VALIDATE DATABASE -----------------------------------------------------------------

_READY = re.compile(r"^\s*Ready for Switchover:\s*(Yes|No)\b", re.IGNORECASE)
_ROLE = re.compile(r"^\s*Database Role:\s*(.+?)\s*$", re.IGNORECASE)
_ERROR = re.compile(r"^\s*(?:Error|Warning):\s*(.+?)\s*$")
_SYNTAX = re.compile(r"Syntax error before or at", re.IGNORECASE)


@dataclass(frozen=True)
class Validation:
    ready: bool
    role: str
    findings: tuple[str, ...]


def parse_validate(lines: Iterable[str]) -> Validation:
    """dgmgrl's VALIDATE DATABASE output. Ready only on "Ready for Switchover: Yes" with no
    Error line; a syntax error, or output without the line, raises ValueError (dgmgrl's exit
    status says none of this)."""
    ready: bool | None = None
    role = ""
    findings: list[str] = []
    for line in lines:
        if _SYNTAX.search(line):
            raise ValueError(f"dgmgrl refused the command: {line.strip()}")
        if found := _READY.match(line):
            ready = found.group(1).lower() == "yes"
        elif found := _ROLE.match(line):
            role = found.group(1)
        elif found := _ERROR.match(line):
            findings.append(found.group(0).strip())
    if ready is None:
        raise ValueError("dgmgrl printed no 'Ready for Switchover:' line")
    errors = [f for f in findings if f.lower().startswith("error")]
    return Validation(ready=ready and not errors, role=role, findings=tuple(findings))
