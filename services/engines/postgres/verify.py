"""Verify a PostgreSQL base backup by restoring it, not by trusting it.

A backup is good when it can become a running database. So verification restores the named base
into ``<scratch_dir>/<backup_id>-<uuid8>`` and checks, in order:

1. ``manifest``: it parses and names its parts;
2. ``download``: every part matches its crc32c and the tar extracts safely;
3. ``pg_verifybackup -n``: every file matches PostgreSQL's own ``backup_manifest`` (``-n``: the
   backup was taken with ``-X none``, its WAL is in the archive, not in the backup);
4. ``recovery``: it recovers from the archive to ``recovery_target='immediate'`` (the earliest
   consistent point: this proves the WAL from start to end of backup is there and replays) on a
   private socket with no TCP listener and archiving off, so it can neither clash with nor
   archive into anything;
5. ``query``: ``SELECT count(*) FROM pg_class`` answers, and, where the ``amcheck`` extension is
   installed, ``bt_index_check`` passes on every catalog B-tree index.

The scratch cluster is stopped and its directory removed whatever happens. A check that fails
makes ``ok`` false with the reason in ``checks``; only trouble that says nothing about the backup
(an unreachable store, this node's own problems) raises ``EngineError``, so it is retried rather
than recorded as a bad backup.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import tempfile
import uuid
from pathlib import Path

from schemas.messages import VerifyResult
from services.blobstore import BlobStore
from services.engines.base import EngineError, JobContext
from services.engines.postgres.extract import extract_base, load_manifest, prepare_data_dir
from services.engines.postgres.fetchserver import FetchStats
from services.engines.postgres.instance import Instance
from services.engines.postgres.manifest import BaseManifest
from services.engines.postgres.oscmd import OsCommandError, check_traversable, chown_to
from services.engines.postgres.recovery import recover
from services.engines.postgres.walfile import format_lsn
from services.engines.settings import EngineSettings, HostedDatabase

__all__ = ["verify"]

CHECK_LENGTH = 200

AMCHECK_SQL = (
    "SELECT count(bt_index_check(c.oid)) FROM pg_index i "
    "JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am a ON a.oid = c.relam "
    "WHERE a.amname = 'btree' AND i.indisvalid AND c.relnamespace = 'pg_catalog'::regnamespace"
)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


class _Checks:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.ok = True

    def passed(self, name: str, detail: str) -> None:
        self.lines.append(f"{name}: ok, {detail}"[:CHECK_LENGTH])

    def failed(self, name: str, detail: str) -> None:
        self.ok = False
        self.lines.append(f"{name}: FAILED, {' '.join(detail.split())}"[:CHECK_LENGTH])


async def verify(
    db: HostedDatabase,
    *,
    backup_id: str,
    manifest_key: str,
    store: BlobStore,
    prefix: str,
    scratch_dir: str,
    ctx: JobContext,
    settings: EngineSettings,
) -> VerifyResult:
    """Restore ``backup_id`` into a scratch directory, check it, remove it; see the module doc."""
    if db.postgres is None:
        raise EngineError.of(f"database {db.uid} is not a PostgreSQL database")
    source = Instance.of(db.postgres)
    tag = uuid.uuid4().hex[:8]
    base = Path(scratch_dir) / f"{backup_id}-{tag}"
    checks = _Checks()
    await ctx.progress("prepare", message=f"verifying {backup_id} in {base}")

    try:
        manifest = await load_manifest(store, manifest_key)
    except EngineError as exc:
        if exc.failure.retryable:
            raise
        checks.failed("manifest", exc.failure.reason)
        return VerifyResult(backup_id=backup_id, ok=False, checks=checks.lines)
    pg = manifest.postgres
    checks.passed("manifest", f"{len(pg.parts)} parts, {pg.tar_bytes} tar bytes, tl {pg.timeline}")

    base.mkdir(mode=0o700, parents=True)
    # The socket lives in a short private directory: a scratch path under a deep state
    # directory would pass the socket path's 107-byte limit and the server would not start.
    sockets = Path(tempfile.mkdtemp(prefix="tm-verify-"))
    inst = Instance(
        data_dir=base / "data",
        port=_free_port(),
        socket_dir=sockets,
        user=source.user,
        bindir=source.bindir,
        dbname=source.dbname,
        password_file=source.password_file,
    )
    try:
        chown_to(base, inst.user)
        chown_to(sockets, inst.user)
        try:
            check_traversable(base, inst.user)
        except OsCommandError as exc:
            raise EngineError.of(f"scratch directory unusable: {exc}") from exc
        inst.data_dir.mkdir(mode=0o700)
        chown_to(inst.data_dir, inst.user)
        await _run_checks(inst, manifest, store, prefix, db.uid, ctx, settings, tag, checks)
    finally:
        with contextlib.suppress(Exception):
            await inst.stop("immediate")
        await asyncio.to_thread(shutil.rmtree, base, True)
        await asyncio.to_thread(shutil.rmtree, sockets, True)
    return VerifyResult(backup_id=backup_id, ok=checks.ok, checks=checks.lines)


async def _run_checks(
    inst: Instance,
    manifest: BaseManifest,
    store: BlobStore,
    prefix: str,
    uid: str,
    ctx: JobContext,
    settings: EngineSettings,
    tag: str,
    checks: _Checks,
) -> None:
    pg = manifest.postgres
    try:
        members = await extract_base(store, manifest, inst.data_dir, inst.user, ctx)
    except EngineError as exc:
        if exc.failure.retryable:
            raise
        checks.failed("download", exc.failure.reason)
        return
    checks.passed("download", f"{len(pg.parts)} parts match their crc32c, {members} files")
    prepare_data_dir(inst.data_dir, inst.user)

    code, out = await inst.run(
        inst.bindir / "pg_verifybackup", "-n", "-q", inst.data_dir, timeout=3600
    )
    if code != 0:
        checks.failed("pg_verifybackup", out or f"exit {code}")
        return
    checks.passed("pg_verifybackup", "every file matches backup_manifest")

    consistent = manifest.backup.consistent_at.value
    try:
        outcome = await recover(
            inst,
            store=store,
            prefix=prefix,
            uid=uid,
            plan_keys=[],
            settings={
                "recovery_target": "immediate",
                "recovery_target_timeline": str(pg.timeline),
                "recovery_target_action": "promote",
            },
            overrides={
                "port": str(inst.port),
                "unix_socket_directories": str(inst.socket_dir),
                "listen_addresses": "",
                "archive_mode": "off",
                "archive_command": "",
            },
            ctx=ctx,
            prefetch=settings.prefetch,
            tag=f"verify-{tag}",
            start_lsn=manifest.backup.start.value,
            goal_lsn=consistent,
            stats=FetchStats(),
        )
    except EngineError as exc:
        if exc.failure.retryable:
            raise
        checks.failed("recovery", exc.failure.reason)
        return
    if outcome.branch_lsn < consistent:
        checks.failed(
            "recovery",
            f"ended at {format_lsn(outcome.branch_lsn)}, before the backup's end "
            f"{format_lsn(consistent)}",
        )
        return
    checks.passed(
        "recovery",
        f"consistent at {format_lsn(outcome.branch_lsn)} (backup end {format_lsn(consistent)})",
    )

    code, out = await inst.psql("SELECT count(*) FROM pg_class")
    if code != 0:
        checks.failed("query", out)
        return
    checks.passed("query", f"pg_class has {out} rows")

    code, out = await inst.psql("SELECT count(*) FROM pg_available_extensions WHERE name='amcheck'")
    if code != 0 or out.strip() != "1":
        checks.passed("amcheck", "skipped: the amcheck extension is not installed")
        return
    code, out = await inst.psql("CREATE EXTENSION IF NOT EXISTS amcheck")
    if code == 0:
        code, out = await inst.psql(AMCHECK_SQL)
    if code != 0:
        checks.failed("amcheck", out)
        return
    checks.passed("amcheck", f"bt_index_check passed on {out} catalog indexes")
