"""A consumer process that takes one message and never acknowledges it (killed by the test).

Usage: python stuck_consumer.py NATS_URL DURABLE FILTER MAX_DELIVER READY_FILE
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import nats

from schemas.messages import RunBackup
from services.bus import Consumer, Publisher
from services.settings import BusSettings


async def main(url: str, durable: str, subject: str, max_deliver: int, ready: Path) -> None:
    nc = await nats.connect(url)
    js = nc.jetstream()

    async def hang(message: object, delivery: object) -> None:
        ready.write_text("taken")
        await asyncio.Event().wait()

    settings = BusSettings(ack_wait_s=1.5, max_deliver=max_deliver, heartbeat_s=60)
    consumer = Consumer(
        js,
        stream="TM_CMD",
        durable=durable,
        filter_subjects=[subject],
        handlers={RunBackup: hang},
        settings=settings,
        publisher=Publisher(js, source="executor"),
    )
    await consumer.start()
    await asyncio.Event().wait()


if __name__ == "__main__":
    url, durable, subject, max_deliver, ready = sys.argv[1:6]
    asyncio.run(main(url, durable, subject, int(max_deliver), Path(ready)))
