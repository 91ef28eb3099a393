"""RMAN scripts, built from typed specs and nothing else.

A script is text another program executes with SYSDBA rights, so nothing is pasted into it raw:
every identifier (tag, command id) matches a strict pattern, every path is absolute and made of
a small safe alphabet (no quote can close the literal it sits in), every number is an int. A
value that does not fit is refused when the spec is built, long before RMAN sees it.

The scripts, and the choices in them:

- Backups take their settings for the session only (`SET COMPRESSION ALGORITHM`, `SET
  ENCRYPTION`), never `CONFIGURE`, so a backup leaves the database's persistent RMAN
  configuration as it found it; the one exception is controlfile autobackup, which exists only
  as configuration and is used only when the spec asks for it.
- Every run carries `SET COMMAND ID TO '<job id>'`, so V$RMAN_STATUS and V$SESSION rows of the
  run can be found by the job that started it.
- Channels are allocated explicitly with a FORMAT inside the staging directory: the backup
  watches for each finished piece there and uploads it (`backup.py`).
- `PLUS ARCHIVELOG` switches logs before and after, so the redo the datafile backups need to
  become consistent is archived (and backed up) by the time the backup ends.
- Restores stage pieces and logs into one directory, register them with `CATALOG START WITH
  ... NOPROMPT`, and recover `SET UNTIL` a point that is exclusive (changes at or after it are
  not applied) before `OPEN RESETLOGS` starts a new incarnation.
- Dates are written `TO_DATE('YYYY-MM-DD HH24:MI:SS', ...)` with the format spelled out, so the
  session's NLS settings cannot change what a target time means.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

__all__ = [
    "BackupScript",
    "Channels",
    "RestoreScript",
    "SnapshotRecoverScript",
    "UntilScn",
    "UntilSequence",
    "UntilTime",
    "preview_script",
    "validate_database_script",
    "validate_restore_script",
]

Tag = Annotated[str, StringConstraints(pattern=r"^[A-Za-z][A-Za-z0-9_]{0,29}$")]
"""An RMAN tag: a letter, then letters, digits, underscores; 30 characters at most."""

CommandId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")]
"""`SET COMMAND ID` value: a job id (a UUID fits)."""

SafePath = Annotated[str, StringConstraints(pattern=r"^/[A-Za-z0-9._/-]{0,1000}[A-Za-z0-9._-]$")]
"""An absolute path with no quote, space, `%` or other character RMAN would interpret."""

SafeDir = Annotated[str, StringConstraints(pattern=r"^/[A-Za-z0-9._/-]{0,1000}$")]
"""An absolute directory path (same alphabet); written with a trailing slash."""


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Channels(_Spec):
    """Disk channels writing into the staging directory (`%U` keeps piece names unique)."""

    count: int = Field(default=1, ge=1, le=64)
    device: Literal["DISK"] = "DISK"
    stage_dir: SafeDir

    def allocate(self) -> list[str]:
        fmt = _dir(self.stage_dir) + "%d_%T_%U"
        return [
            f"ALLOCATE CHANNEL ch{n} DEVICE TYPE {self.device} FORMAT '{fmt}';"
            for n in range(1, self.count + 1)
        ]


Algorithm = Literal["BASIC", "LOW", "MEDIUM", "HIGH"]


class BackupScript(_Spec):
    """One backup run: a level 0 / level 1 / full database backup with its archived logs,
    control file and spfile."""

    command_id: CommandId
    tag: Tag
    level: Literal[0, 1] | None = Field(default=0, description="None: a full (non-incremental)")
    cumulative: bool = False
    channels: Channels
    section_size_mb: int | None = Field(default=None, ge=1, le=32 * 1024 * 1024)
    compression: Algorithm | None = None
    encryption: bool = False
    plus_archivelog: bool = True
    controlfile: Literal["explicit", "autobackup"] = "explicit"

    def render(self) -> str:
        if self.cumulative and self.level != 1:
            raise ValueError("CUMULATIVE applies only to an incremental level 1 backup")
        lines: list[str] = []
        if self.controlfile == "autobackup":
            lines.append("CONFIGURE CONTROLFILE AUTOBACKUP ON;")
        if self.compression is not None:
            lines.append(f"SET COMPRESSION ALGORITHM '{self.compression}';")
        lines.append(f"SET ENCRYPTION {'ON' if self.encryption else 'OFF'};")
        body = [f"SET COMMAND ID TO '{self.command_id}';", *self.channels.allocate()]
        if self.controlfile == "autobackup":
            cf_format = _dir(self.channels.stage_dir) + "%F"
            body.append(f"SET CONTROLFILE AUTOBACKUP FORMAT FOR DEVICE TYPE DISK TO '{cf_format}';")
        words = ["BACKUP"]
        words.append("AS COMPRESSED BACKUPSET" if self.compression else "AS BACKUPSET")
        if self.level is not None:
            words.append(f"INCREMENTAL LEVEL {self.level}")
            if self.cumulative:
                words.append("CUMULATIVE")
        if self.section_size_mb is not None:
            words.append(f"SECTION SIZE {self.section_size_mb}M")
        words.append(f"DATABASE TAG '{self.tag}'")
        if self.plus_archivelog:
            words.append("PLUS ARCHIVELOG")
        body.append(" ".join(words) + ";")
        if self.controlfile == "explicit":
            body.append(f"BACKUP CURRENT CONTROLFILE TAG '{self.tag}';")
            body.append(f"BACKUP SPFILE TAG '{self.tag}';")
        return _join(lines, body, [])


class UntilScn(_Spec):
    kind: Literal["scn"] = "scn"
    scn: int = Field(ge=1, lt=1 << 64)

    def clause(self) -> str:
        return f"SET UNTIL SCN {self.scn};"


class UntilTime(_Spec):
    """A time in the database's own time zone (naive; seconds precision, as redo has it)."""

    kind: Literal["time"] = "time"
    at: datetime

    def clause(self) -> str:
        stamp = self.at.strftime("%Y-%m-%d %H:%M:%S")
        return f"SET UNTIL TIME \"TO_DATE('{stamp}','YYYY-MM-DD HH24:MI:SS')\";"


class UntilSequence(_Spec):
    """Stop before log `sequence` of `thread` (exclusive)."""

    kind: Literal["sequence"] = "sequence"
    sequence: int = Field(ge=1)
    thread: int = Field(ge=1, le=65535)

    def clause(self) -> str:
        return f"SET UNTIL SEQUENCE {self.sequence} THREAD {self.thread};"


Until = Annotated[UntilScn | UntilTime | UntilSequence, Field(discriminator="kind")]


class RestoreScript(_Spec):
    """Restore the database in place from pieces staged out of the store, recover until a
    point, open a new incarnation."""

    command_id: CommandId
    dbid: int = Field(ge=1, lt=1 << 32)
    controlfile_piece: SafePath
    stage_dir: SafeDir
    until: Until
    incarnation: int | None = Field(
        default=None,
        ge=1,
        description="RESET DATABASE TO INCARNATION n, when the target's "
        "incarnation is not the restored control file's current one",
    )
    channels: int = Field(default=1, ge=1, le=64)

    def render(self) -> str:
        head = [
            f"SET DBID {self.dbid};",
            "STARTUP FORCE NOMOUNT;",
            f"RESTORE CONTROLFILE FROM '{self.controlfile_piece}';",
            "ALTER DATABASE MOUNT;",
            f"CATALOG START WITH '{_dir(self.stage_dir)}' NOPROMPT;",
        ]
        if self.incarnation is not None:
            head.append(f"RESET DATABASE TO INCARNATION {self.incarnation};")
        body = [
            f"SET COMMAND ID TO '{self.command_id}';",
            *_disk_channels(self.channels),
            self.until.clause(),
            "RESTORE DATABASE;",
            "RECOVER DATABASE;",
        ]
        return _join(head, body, ["ALTER DATABASE OPEN RESETLOGS;"])


class SnapshotRecoverScript(_Spec):
    """Recover a database whose volumes were just made from storage snapshots taken in backup
    mode: the control file and datafiles are already in place (nothing is restored), so the
    instance mounts them, catalogs the logs staged from the store, recovers until a point and
    opens a new incarnation. The snapshot's control file is a current one, so an incomplete
    recovery needs no `USING BACKUP CONTROLFILE`; a real 19c run has still to confirm that."""

    command_id: CommandId
    stage_dir: SafeDir
    until: Until

    def render(self) -> str:
        head = [
            "STARTUP FORCE MOUNT;",
            f"CATALOG START WITH '{_dir(self.stage_dir)}' NOPROMPT;",
        ]
        body = [
            f"SET COMMAND ID TO '{self.command_id}';",
            self.until.clause(),
            "RECOVER DATABASE;",
        ]
        return _join(head, body, ["ALTER DATABASE OPEN RESETLOGS;"])


def preview_script(command_id: str, until: Until) -> str:
    """Which backups and logs a restore to `until` would use, reading metadata only."""
    spec = _Probe(command_id=command_id, until=until)
    return _join(
        [],
        [
            f"SET COMMAND ID TO '{spec.command_id}';",
            spec.until.clause(),
            "RESTORE DATABASE PREVIEW;",
        ],
        [],
    )


def validate_restore_script(command_id: str, until: Until, stage_dir: str | None = None) -> str:
    """Read every piece a restore to `until` needs, write nothing (after cataloging
    `stage_dir`, when the pieces were staged from the store)."""
    spec = _Probe(command_id=command_id, until=until, stage_dir=stage_dir)
    head = [f"CATALOG START WITH '{_dir(spec.stage_dir)}' NOPROMPT;"] if spec.stage_dir else []
    body = [
        f"SET COMMAND ID TO '{spec.command_id}';",
        spec.until.clause(),
        "RESTORE DATABASE VALIDATE;",
    ]
    return _join(head, body, [])


def validate_database_script(command_id: str) -> str:
    """Check the live datafiles for physical and logical corruption."""
    spec = _Probe(command_id=command_id, until=UntilScn(scn=1))
    return _join(
        [], [f"SET COMMAND ID TO '{spec.command_id}';", "VALIDATE CHECK LOGICAL DATABASE;"], []
    )


class _Probe(_Spec):
    command_id: CommandId
    until: Until
    stage_dir: SafeDir | None = None


def _disk_channels(count: int) -> list[str]:
    return [f"ALLOCATE CHANNEL ch{n} DEVICE TYPE DISK;" for n in range(1, count + 1)]


def _dir(path: str) -> str:
    return path if path.endswith("/") else path + "/"


def _join(head: list[str], run: list[str], tail: list[str]) -> str:
    lines = [*head]
    if run:
        lines.append("RUN {")
        lines.extend(f"  {line}" for line in run)
        lines.append("}")
    lines.extend(tail)
    return "\n".join(lines) + "\n"
