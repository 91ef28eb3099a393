"""The bucket `catalog rebuild` reads: the workload's history as real objects in a
`FilesystemStore`, written through the driver (create-only, fsynced, metadata sidecars) with
the archiver's own keys and object metadata (`services/archiver/keys.py`), an `owner.json`,
and one manifest per backup in the format the rebuild reads.

Writing 100,000 objects this way takes minutes (every object is fsynced three times), so the
bucket is kept under the cache directory and reused while its shape is unchanged; a marker
written last says it is complete (a dot-name: never listed as an object).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.catalog.workload import DATABASE, Workload
from services.archiver.keys import log_key, object_metadata, owner_key
from services.blobstore import Digest, FilesystemStore, crc32c_of_bytes
from services.blobstore.owner import Owner

PREFIX = "bench"
#: Bump when what is written changes, so a stale cached bucket is not reused.
FORMAT = 1
_IN_FLIGHT = 64


def bucket_dir(cache: Path, workload: Workload) -> Path:
    shape = f"{workload.logs}-t{workload.threads}-b{workload.backups}-v{FORMAT}"
    return cache / f"catalog-bucket-{shape}"


def ensure_bucket(cache: Path, workload: Workload, log: Callable[[str], None]) -> Path:
    """The bucket's root, written first if the cache does not hold it complete."""
    root = bucket_dir(cache, workload)
    marker = root / ".complete"
    if marker.exists():
        log(f"bucket: {workload.logs} log objects cached in {root}")
        return root
    log(f"bucket: writing {workload.logs} log objects to {root} (once; cached)")
    asyncio.run(_write(root, workload, log))
    marker.write_text("complete\n")
    return root


async def _write(root: Path, workload: Workload, log: Callable[[str], None]) -> None:
    # put_stream's blocking steps run in the default executor: wide enough to overlap fsyncs.
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(32))
    store = FilesystemStore(root)
    owner = Owner(DATABASE.engine.value, DATABASE.system_id, DATABASE.name)
    await store.put_stream(owner_key(PREFIX, DATABASE.uid), owner.document())
    gate = asyncio.Semaphore(_IN_FLIGHT)

    async def put_log(thread: int, sequence: int) -> None:
        found = workload.log(thread, sequence, PREFIX)
        logged = workload.logged_file(found)
        data = f"redo {thread}/{sequence}\n".encode()
        metadata = object_metadata(logged, Digest(crc32c_of_bytes(data), len(data)), "none")
        async with gate:
            await store.put_stream(log_key(PREFIX, logged), data, metadata)

    for sequence in range(1, workload.per_thread + 1, 1000):
        stop = min(sequence + 1000, workload.per_thread + 1)
        await asyncio.gather(
            *(
                put_log(thread, s)
                for s in range(sequence, stop)
                for thread in range(1, workload.threads + 1)
            )
        )
        log(f"  bucket: {(stop - 1) * workload.threads} of {workload.logs} logs written")
    for j in range(workload.backups):
        backup = workload.backup(j, PREFIX)
        document = {"format": 1, "backup": backup.model_dump(mode="json")}
        await store.put_stream(backup.manifest_key, json.dumps(document, sort_keys=True).encode())
