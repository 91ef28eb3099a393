"""Our `dump` method, measured when its engine steps exist (`services/engines/postgres/migration/
dump.py`); until then the report says why not, and prints no figure for it.

    fresh 18 cluster ─▶ [timed] `dump_to_store` (18's pg_dump -Fd -j2 of the source into a
    spool, uploaded into a `FilesystemStore` while the source's fingerprint is read, the
    manifest) ─▶ [timed] `restore_from_store` (downloaded, the database created, 18's
    pg_restore -j2, the target's fingerprint) ─▶ the two fingerprints compared (must not
    differ) ─▶ cluster and store removed

as the executor calls them (`migration/steps.py`'s dump steps: the target release's pg_dump
reads the source; the parity step compares the manifest's fingerprint with the restore's, and
reads neither side again), with the jobs of the by-hand baseline
(`upgrade_baselines.time_dump_restore`), against the same source with no load, in the same
round. The store, the spools and the baseline's dump directory are on the same disk (/tmp).
Not timed, as the by-hand baseline has none either: the executor's `vacuumdb --analyze-only`
after the restore.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

from bench.migrate import newer
from bench.migrate.rounds import quiesce
from bench.migrate.settings import MigrateBenchSettings
from bench.migrate.source import Source
from bench.migrate.upgrade_baselines import DB, JOBS, RESTORED_DB, DumpRestore
from services.blobstore import FilesystemStore
from services.engines.postgres.migration import PgInstance
from services.engines.postgres.migration.fingerprints import Fingerprint, compare
from tests.integration.migration_rig import instance_of

ENGINE_MODULE = "services.engines.postgres.migration.dump"
NEEDED = ("dump_to_store", "restore_from_store")
KEY_PREFIX = "bench-dump"
_FINGERPRINT = "fingerprint"
"""The name the dump steps call `fingerprints.fingerprint` by (see `_timed_fingerprints`)."""

FingerprintTimes = dict[int, list[float]]
"""The seconds of each fingerprint read, by the port of the instance read."""


def unavailable_reason() -> str | None:
    """Why the dump method cannot be measured in this tree (None: it can)."""
    try:
        module = importlib.import_module(ENGINE_MODULE)
    except ModuleNotFoundError as exc:
        if exc.name != ENGINE_MODULE:
            raise
        return f"its engine steps ({ENGINE_MODULE}) do not exist in this tree"
    missing = [name for name in NEEDED if not hasattr(module, name)]
    if missing:
        return f"{ENGINE_MODULE} has no {', '.join(missing)}"
    return None


def time_dump_method(source: Source, settings: MigrateBenchSettings) -> DumpRestore:
    store_dir = Path(tempfile.mkdtemp(prefix="tidemark-bench-dump-", dir="/tmp"))
    try:
        with newer.fresh_cluster(settings) as new, _timed_fingerprints() as spent:
            target = instance_of(new)
            times, differences = asyncio.run(
                _dump_and_restore(
                    source,
                    target,
                    FilesystemStore(store_dir),
                    dump_spool=new.user_dir("dump-spool"),
                    restore_spool=new.user_dir("restore-spool"),
                )
            )
    finally:
        shutil.rmtree(store_dir, ignore_errors=True)
    if differences:
        raise RuntimeError("the dump method's restore differs: " + "; ".join(differences))
    return replace(
        times,
        source_fingerprint_s=sum(spent.get(source.instance.port, [])),
        target_fingerprint_s=sum(spent.get(target.port, [])),
    )


@contextlib.contextmanager
def _timed_fingerprints() -> Iterator[FingerprintTimes]:
    """The seconds of each `fingerprint` the dump steps read (the parity halves, part of the
    method's time; the by-hand tools read none), for the report to say how much of the total
    they are. A timing wrapper around the module's own function, for the block only: the steps
    have no seam for it, and their behaviour is unchanged."""
    from services.engines.postgres.migration import dump

    spent: FingerprintTimes = {}
    original: Callable[[PgInstance, str], Fingerprint] = getattr(dump, _FINGERPRINT)

    def timed(instance: PgInstance, dbname: str) -> Fingerprint:
        started = time.monotonic()
        try:
            return original(instance, dbname)
        finally:
            spent.setdefault(instance.port, []).append(time.monotonic() - started)

    setattr(dump, _FINGERPRINT, timed)
    try:
        yield spent
    finally:
        setattr(dump, _FINGERPRINT, original)


async def _dump_and_restore(
    source: Source,
    target: PgInstance,
    store: FilesystemStore,
    *,
    dump_spool: Path,
    restore_spool: Path,
) -> tuple[DumpRestore, list[str]]:
    # Imported here: the module may not exist in this tree (see unavailable_reason).
    from services.engines.postgres.migration.dump import dump_to_store, restore_from_store

    # As the executor's fence step: the target release's pg_dump (a newer one reads an older
    # server) on the source.
    reader = replace(source.instance, bindir=target.bindir)
    quiesce()
    started = time.monotonic()
    manifest = await dump_to_store(
        reader, DB, store=store, key_prefix=KEY_PREFIX, jobs=JOBS, spool=dump_spool
    )
    dumped = time.monotonic()
    outcome = await restore_from_store(
        target, RESTORED_DB, store=store, key_prefix=KEY_PREFIX, jobs=JOBS, spool=restore_spool
    )
    times = DumpRestore(dumped - started, time.monotonic() - dumped)
    return times, compare(manifest.fingerprint, outcome.fingerprint)
