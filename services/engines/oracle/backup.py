"""An RMAN backup streamed into the object store, piece by piece, manifest last.

    <prefix>/<uid>/backups/<backup-id>/pieces/<piece file name>   one object per RMAN piece
    <prefix>/<uid>/backups/<backup-id>/manifest.json               written last

RMAN writes pieces into a staging directory; each "piece handle=<path> tag=<tag> comment=NONE"
line means that piece is complete, so it is uploaded then (and its local file removed once the
store holds it), while RMAN goes on with the next. Local space is a few pieces, never the whole
backup (El Carro stages it all, see reference/elcarro.md §4).

The manifest holds the `backup.completed` payload under "backup" (so `catalog rebuild` reads it
as any other backup) and, under "oracle", what a restore needs: every piece with its size and
crc32c, every datafile with its checkpoint and absolute-fuzzy SCN, the incarnation table.
`start` = S_B (min checkpoint SCN), `consistent_at` = M_B (max absolute-fuzzy/checkpoint SCN):
reference/oracle.md §1. The SCNs come from V$BACKUP_DATAFILE through `OracleViews`, not from
RMAN's text output, which does not print them.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Final, Literal, Protocol

from pydantic import AfterValidator, Field, StringConstraints

from schemas import Incarnation, Scn, StrictModel
from schemas.messages import BackupCompleted, BackupSpec
from services.blobstore import BlobStore
from services.engines.base import EngineError, JobContext
from services.engines.oracle.runner import OracleHome, Tool, run_tool
from services.engines.oracle.scripts import BackupScript, Channels

MANIFEST_FORMAT: Final = "tidemark.oracle-rman/1"
PIECE_RE = re.compile(r"^piece handle=(\S+)(?: tag=(\S+))? comment=")
"""The line RMAN prints when a piece is complete. A control file autobackup's piece line has no
tag (`piece handle=<path> comment=NONE`): a parser that required one would never upload it."""
AUTOBACKUP_START = "Starting Control File and SPFILE Autobackup"
AUTOBACKUP_END = "Finished Control File and SPFILE Autobackup"


@dataclass(frozen=True)
class BackupDatafileRow:
    """One V$BACKUP_DATAFILE row of a backup (file 0 is the control file)."""

    file: int
    checkpoint_scn: int
    absolute_fuzzy_scn: int | None
    incremental_level: int | None
    resetlogs_id: int


@dataclass(frozen=True)
class IncarnationRow:
    """One V$DATABASE_INCARNATION row."""

    incarnation: int
    resetlogs_scn: int
    resetlogs_id: int
    prior: int
    status: str


class OracleViews(Protocol):
    """What the engine reads through an Oracle session (python-oracledb, or the simulator's)."""

    async def dbid(self) -> int: ...

    async def current_scn(self) -> int: ...

    async def incarnations(self) -> list[IncarnationRow]: ...

    async def backup_datafiles(self, tag: str) -> list[BackupDatafileRow]:
        """The datafile rows of every backup set whose pieces carry `tag`."""
        ...


def _no_dot_dot(name: str) -> str:
    if ".." in name:
        raise ValueError("a piece name must not contain '..'")
    return name


PieceName = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$"),
    AfterValidator(_no_dot_dot),
]
"""A piece's file name as RMAN wrote it (`%d_%T_%U`, `c-…`): one path segment, no leading dot,
no `..`. A restore stages the piece under this name, so a manifest must not be able to name a path
outside the staging directory (`../…`, an absolute path)."""


class Piece(StrictModel):
    name: PieceName
    key: str
    size: int = Field(ge=0)
    crc32c: str
    tag: str | None = Field(default=None, description="None: an autobackup piece (no tag line)")
    controlfile: bool = Field(default=False, description="holds the control file backup")


class Datafile(StrictModel):
    file: int = Field(ge=0)
    checkpoint_scn: int = Field(ge=0)
    absolute_fuzzy_scn: int | None = None
    incremental_level: int | None = None
    resetlogs_id: int


class IncarnationEntry(StrictModel):
    number: int
    resetlogs_scn: int
    resetlogs_id: int
    prior: int
    status: str


class OracleBackup(StrictModel):
    """What a restore needs beyond the `backup.completed` payload."""

    dbid: int
    tag: str
    level: Literal[0, 1] | None
    pieces: list[Piece]
    datafiles: list[Datafile]
    incarnations: list[IncarnationEntry]


class OracleManifest(StrictModel):
    format: Literal["tidemark.oracle-rman/1"] = MANIFEST_FORMAT
    backup: BackupCompleted
    oracle: OracleBackup


def backup_prefix(prefix: str, uid: str, backup_id: str) -> str:
    base = f"{prefix.rstrip('/')}/{uid}" if prefix else uid
    return f"{base}/backups/{backup_id}/"


def make_stage(root: Path, prefix: str) -> Path:
    """A fresh 0700 directory under `root` (pieces may hold unencrypted data)."""
    root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=root))


def recovery_points(datafiles: list[Datafile]) -> tuple[int, int]:
    """(S_B, M_B) of a base: min checkpoint, max absolute-fuzzy-or-checkpoint, datafiles only."""
    files = [d for d in datafiles if d.file > 0]
    if not files:
        raise EngineError.of("the backup recorded no datafiles", code="TM-ORA-010")
    start = min(d.checkpoint_scn for d in files)
    consistent = max(d.absolute_fuzzy_scn or d.checkpoint_scn for d in files)
    return start, consistent


@dataclass
class _Uploader:
    store: BlobStore
    key_prefix: str
    ctx: JobContext
    pieces: list[Piece]
    tasks: list[asyncio.Task[None]]
    limit: asyncio.Semaphore

    controlfile_next: bool = False
    in_autobackup: bool = False

    async def on_line(self, line: str) -> None:
        if "including current control file in backup set" in line:
            self.controlfile_next = True
        if line.startswith(AUTOBACKUP_START):
            self.in_autobackup = True
        elif line.startswith(AUTOBACKUP_END):
            self.in_autobackup = False
        match = PIECE_RE.match(line)
        if match is None:
            return
        handle, tag = Path(match.group(1)), match.group(2)
        controlfile, self.controlfile_next = self.controlfile_next or self.in_autobackup, False
        self.tasks.append(asyncio.create_task(self._upload(handle, tag, controlfile)))
        await self.ctx.progress("backup", done=len(self.tasks), message=f"piece {handle.name}")

    async def _upload(self, path: Path, tag: str | None, controlfile: bool) -> None:
        async with self.limit:
            info = await self.store.put_file(
                self.key_prefix + "pieces/" + path.name,
                path,
                {"engine": "oracle", "tag": tag or ""},
            )
            self.pieces.append(
                Piece(
                    name=path.name,
                    key=info.key,
                    size=info.size,
                    crc32c=info.crc32c,
                    tag=tag,
                    controlfile=controlfile,
                )
            )
            # The store holds it: the local copy is only taking space now.
            await asyncio.to_thread(path.unlink)


async def run_backup(
    home: OracleHome,
    views: OracleViews,
    *,
    uid: str,
    backup_id: str,
    spec: BackupSpec,
    level: Literal[0, 1] | None,
    channels: int,
    stage_root: Path,
    store: BlobStore,
    prefix: str,
    ctx: JobContext,
    controlfile: Literal["explicit", "autobackup"] = "explicit",
) -> OracleManifest:
    """Back up the database with RMAN, stream the pieces to the store, write the manifest."""
    started_at = datetime.now(UTC)
    tag = spec.tag or f"TM_{backup_id.replace('-', '')[:27]}"
    key_prefix = backup_prefix(prefix, uid, backup_id)
    stage = await asyncio.to_thread(make_stage, stage_root, "backup-")
    script = BackupScript(
        command_id=str(ctx.job_id),
        tag=tag,
        level=level,
        cumulative=spec.cumulative,
        channels=Channels(count=channels, stage_dir=str(stage)),
        compression=None if spec.compression.value == "none" else _algorithm(spec),
        controlfile=controlfile,
    )
    uploader = _Uploader(store, key_prefix, ctx, [], [], asyncio.Semaphore(channels))
    try:
        result = await run_tool(home, Tool.RMAN, script.render(), on_line=uploader.on_line)
        await asyncio.gather(*uploader.tasks)
    finally:
        for task in uploader.tasks:
            task.cancel()
        await asyncio.gather(*uploader.tasks, return_exceptions=True)
        await asyncio.to_thread(shutil.rmtree, stage, True)
    result.raise_for_failure("RMAN backup")
    rows = await views.backup_datafiles(tag)
    incarnations = await views.incarnations()
    datafiles = [
        Datafile(
            file=r.file,
            checkpoint_scn=r.checkpoint_scn,
            absolute_fuzzy_scn=r.absolute_fuzzy_scn,
            incremental_level=r.incremental_level,
            resetlogs_id=r.resetlogs_id,
        )
        for r in rows
    ]
    start, consistent = recovery_points(datafiles)
    current = next(i for i in incarnations if i.status == "CURRENT")
    lineage = Incarnation(
        resetlogs_id=current.resetlogs_id,
        resetlogs_scn=Scn(value=current.resetlogs_scn),
        number=current.incarnation,
        prior_resetlogs_id=next(
            (i.resetlogs_id for i in incarnations if i.incarnation == current.prior), None
        ),
    )
    pieces = sorted(uploader.pieces, key=lambda p: p.name)
    completed = BackupCompleted(
        backup_id=backup_id,
        job_id=ctx.job_id,
        spec=spec,
        lineage=lineage,
        start=Scn(value=start),
        consistent_at=Scn(value=consistent),
        started_at=started_at,
        completed_at=max(datetime.now(UTC), started_at),
        size_bytes=sum(p.size for p in pieces),
        piece_count=len(pieces),
        manifest_key=key_prefix + "manifest.json",
    )
    manifest = OracleManifest(
        backup=completed,
        oracle=OracleBackup(
            dbid=await views.dbid(),
            tag=tag,
            level=level,
            pieces=pieces,
            datafiles=datafiles,
            incarnations=[
                IncarnationEntry(
                    number=i.incarnation,
                    resetlogs_scn=i.resetlogs_scn,
                    resetlogs_id=i.resetlogs_id,
                    prior=i.prior,
                    status=i.status,
                )
                for i in incarnations
            ],
        ),
    )
    await put_manifest(store, completed.manifest_key, manifest, stage_root)
    return manifest


def _algorithm(spec: BackupSpec) -> Literal["BASIC", "LOW", "MEDIUM", "HIGH"]:
    value = spec.compression.value.upper()
    if value not in ("BASIC", "LOW", "MEDIUM", "HIGH"):
        raise EngineError.of(
            f"RMAN has no {spec.compression.value} compression (BASIC, LOW, MEDIUM, HIGH)",
            code="TM-ORA-011",
        )
    return value  # type: ignore[return-value]


async def put_manifest(store: BlobStore, key: str, manifest: StrictModel, scratch: Path) -> None:
    """Write a manifest (the last object of a backup) through a file in `scratch`."""
    fd, name = tempfile.mkstemp(prefix="manifest-", dir=scratch)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(manifest.model_dump_json(indent=1).encode())
        await store.put_file(key, name, {"engine": "oracle", "kind": "manifest"})
    finally:
        os.unlink(name)
