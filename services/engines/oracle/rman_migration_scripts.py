"""The RMAN scripts of the `rman` migration method, built from typed specs (the rules of
`scripts.py` hold: validated identifiers, safe absolute paths, integers).

    RestoreCopyScript   the target's first copy: a new instance gets the chain's control file,
                        catalogs the staged pieces and logs, restores the datafiles and recovers
                        them UNTIL SCN the archive's end, and stays MOUNTED (never opened)
    RollForwardScript   one round: the logs staged since the last round cataloged, then
                        RECOVER DATABASE UNTIL SCN the archive's new end (exclusive, so the
                        copy holds every change below it and none at or after it)
    OpenScript          the point of no return: ALTER DATABASE OPEN RESETLOGS, or OPEN
                        RESETLOGS UPGRADE when the target's home is a newer release than the
                        database's (a plain open there ends in ORA-39700)

The recovery target is always an SCN: the catalog's rule speaks in SCNs, and the archive's end
on several threads is the lowest chain end, which no single `UNTIL SEQUENCE … THREAD` says.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from services.engines.oracle.scripts import (
    CommandId,
    SafeDir,
    SafePath,
    _dir,
    _disk_channels,
    _join,
)

__all__ = ["OpenScript", "RestoreCopyScript", "RollForwardScript"]


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RestoreCopyScript(_Spec):
    """Restore the newest level 0 + level 1 chain into a new instance and recover it until
    `until_scn` (exclusive), leaving it mounted for the next round."""

    command_id: CommandId
    dbid: int = Field(ge=1, lt=1 << 32)
    controlfile_piece: SafePath
    stage_dir: SafeDir
    until_scn: int = Field(ge=1, lt=1 << 64)
    channels: int = Field(default=1, ge=1, le=64)

    def render(self) -> str:
        head = [
            f"SET DBID {self.dbid};",
            "STARTUP FORCE NOMOUNT;",
            f"RESTORE CONTROLFILE FROM '{self.controlfile_piece}';",
            "ALTER DATABASE MOUNT;",
            f"CATALOG START WITH '{_dir(self.stage_dir)}' NOPROMPT;",
        ]
        body = [
            f"SET COMMAND ID TO '{self.command_id}';",
            *_disk_channels(self.channels),
            f"SET UNTIL SCN {self.until_scn};",
            "RESTORE DATABASE;",
            "RECOVER DATABASE;",
        ]
        return _join(head, body, [])


class RollForwardScript(_Spec):
    """One roll-forward round of a mounted copy: catalog the newly staged logs, recover to
    `until_scn` (exclusive)."""

    command_id: CommandId
    stage_dir: SafeDir
    until_scn: int = Field(ge=1, lt=1 << 64)
    channels: int = Field(default=1, ge=1, le=64)

    def render(self) -> str:
        head = [f"CATALOG START WITH '{_dir(self.stage_dir)}' NOPROMPT;"]
        body = [
            f"SET COMMAND ID TO '{self.command_id}';",
            *_disk_channels(self.channels),
            f"RECOVER DATABASE UNTIL SCN {self.until_scn};",
        ]
        return _join(head, body, [])


class OpenScript(_Spec):
    """Open the recovered copy as a new incarnation; `upgrade` when its home is newer."""

    upgrade: bool = False

    def render(self) -> str:
        words = "ALTER DATABASE OPEN RESETLOGS UPGRADE;" if self.upgrade else None
        return _join([], [], [words or "ALTER DATABASE OPEN RESETLOGS;"])
