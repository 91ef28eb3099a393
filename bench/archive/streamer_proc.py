"""The archiver's streamer as its own process, as in production: `python -m
bench.archive.streamer_proc '<json>'`, run by `ours.streaming`.

The benchmark's own process spawns every `archive_command` (a fork of a large, threaded
process), so an archiver living in it would be stalled by each fork and pay copy-on-write
faults afterwards: costs no deployed archiver pays. Here it runs alone: the `Streamer` over a
`PostgresSpoolSource`, a `Journal`, the store and a `Publisher` on the benchmark's nats-server,
until SIGTERM, which stops it gracefully (exit 0); any failure exits non-zero.

The JSON names `nats_url`, `journal` (path), `database` (an `ArchivedDatabase`), `settings`
(`ArchiverSettings`), `node` and `source`.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Any

from services.archiver.journal import Journal
from services.archiver.postgres import PostgresSpoolSource
from services.archiver.settings import ArchivedDatabase, ArchiverSettings
from services.archiver.streamer import Streamer
from services.blobstore import open_store
from services.bus import Publisher, connect, ensure_topology
from services.bus.settings import BusSettings, NatsSettings


async def serve(config: dict[str, Any]) -> None:
    settings = ArchiverSettings.model_validate(config["settings"])
    database = ArchivedDatabase.model_validate(config["database"])
    assert settings.store_url is not None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    nc = await connect(NatsSettings(url=config["nats_url"]), name="tidemark-bench")
    journal = Journal(Path(config["journal"]))
    store = open_store(settings.store_url)
    try:
        js = nc.jetstream()
        await ensure_topology(js, BusSettings())
        streamer = Streamer(
            sources=[PostgresSpoolSource(database)],
            journal=journal,
            store=store,
            events=Publisher(js, source=config["source"]),
            settings=settings,
            node=config["node"],
            source_name=config["source"],
        )
        task = asyncio.create_task(streamer.run(), name="bench streamer")
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()  # the loop never ends by itself: surface why it did
            raise RuntimeError("the streamer stopped by itself")
        await streamer.stop()
        await task
        stopped.cancel()
    finally:
        await store.close()
        journal.close()
        await nc.close()


def main(argv: list[str]) -> int:
    (text,) = argv
    asyncio.run(serve(json.loads(text)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
