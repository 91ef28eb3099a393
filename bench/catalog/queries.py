"""Query latency, as a client sees it: NATS request/reply to the running catalog service.

Three kinds of request, interleaved (one of each in turn, the order rotating), so a noisy spell
of the machine lands on all of them alike:

- `window`: `tm.qry.catalog.windows` for the database (lineages, windows with their 500 bases,
  backups, gaps, RPO lag), the reply as the timeline page gets it;
- `plan`: `tm.qry.catalog.restore_plan` to a random target inside the window, half times and
  half SCNs; the reply lists every log object from the chosen base to the target (~1,000);
- `ping`: `$SRV.PING` answered by the same service process: the same transport and event loop,
  and no index work at all — the trivial lookup the two others are compared with.

Latency is request sent → reply received; every reply is checked (no error header; a plan names
objects), so a refusal can never pass for a fast answer.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

from nats.aio.client import Client

from bench.catalog.service import PING
from bench.catalog.workload import DATABASE, STEP, Workload, time_at
from schemas import Scn
from schemas.catalog import (
    QUERY_PREFIX,
    CheckRequest,
    RestorePlanReply,
    WindowsReply,
    WindowsRequest,
)
from schemas.messages import RestoreTarget, TargetPosition, TargetTime

KINDS = ("window", "plan", "ping")


@dataclass
class Latencies:
    """Milliseconds per request kind, per round."""

    rounds: list[dict[str, list[float]]] = field(default_factory=list)

    def all(self, kind: str) -> list[float]:
        return [ms for r in self.rounds for ms in r[kind]]

    def p99(self, kind: str) -> float:
        return percentile(self.all(kind), 99)

    def median(self, kind: str) -> float:
        return statistics.median(self.all(kind))

    def ratio(self, kind: str, baseline: str) -> float:
        """Median over rounds of (kind's median ÷ baseline's median), both from one round."""
        return statistics.median(
            statistics.median(r[kind]) / statistics.median(r[baseline]) for r in self.rounds
        )


def percentile(values: list[float], pct: float) -> float:
    """The nearest-rank percentile: a value that was measured, never an interpolation."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * pct // 100))
    return ordered[int(rank) - 1]


def random_target(workload: Workload, rng: random.Random) -> RestoreTarget:
    start, end = workload.window()
    if rng.random() < 0.5:
        return TargetPosition(position=Scn(value=rng.randrange(start + 1, end)))
    # A time restorable for sure: after the first backup completed, before the chain ends.
    low, high = workload.time_window()
    span = (high - low).total_seconds()
    return TargetTime(at=low + timedelta(seconds=rng.uniform(1, span - 1)))


class CatalogClient:
    """Requests to the catalog, timed and checked."""

    def __init__(self, nc: Client) -> None:
        self.nc = nc
        self.windows = WindowsRequest(database=DATABASE.uid).model_dump_json().encode()

    async def _timed(self, subject: str, payload: bytes) -> tuple[float, bytes]:
        started = time.perf_counter()
        reply = await self.nc.request(subject, payload, timeout=30)
        elapsed = (time.perf_counter() - started) * 1000
        error = (reply.headers or {}).get("Nats-Service-Error-Code")
        if error:
            raise RuntimeError(f"{subject} refused ({error}): {reply.data[:300]!r}")
        return elapsed, reply.data

    async def window(self) -> float:
        ms, data = await self._timed(f"{QUERY_PREFIX}.windows", self.windows)
        if b'"windows":[{' not in data:
            raise RuntimeError("the windows reply has no restorable window")
        return ms

    async def wait_caught_up(self, timeout_s: float = 600) -> float:
        """When the catalog first answers a window request: a restarted catalog answers pings
        at once but refuses queries (503) while it loads its store and catches up."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            reply = await self.nc.request(f"{QUERY_PREFIX}.windows", self.windows, timeout=30)
            if (reply.headers or {}).get("Nats-Service-Error-Code") != "503":
                return time.perf_counter()
            await asyncio.sleep(0.05)
        raise RuntimeError(f"the catalog was still catching up after {timeout_s:.0f} s")

    async def check_window(self, workload: Workload) -> None:
        """The catalog's one window is the workload's, with every backup in it."""
        _, data = await self._timed(f"{QUERY_PREFIX}.windows", self.windows)
        reply = WindowsReply.model_validate_json(data)
        found = [(w.start.value, w.end.value, len(w.bases)) for w in reply.windows]
        if found != [(*workload.window(), workload.backups)]:
            raise RuntimeError(f"the catalog's windows are {found}, not the workload's")

    async def plan(self, target: RestoreTarget) -> tuple[float, int]:
        request = CheckRequest(database=DATABASE.uid, target=target)
        ms, data = await self._timed(
            f"{QUERY_PREFIX}.restore_plan", request.model_dump_json().encode()
        )
        objects = len(RestorePlanReply.model_validate_json(data).objects)
        if objects == 0:
            raise RuntimeError(f"the plan to {target} lists no object")
        return ms, objects

    async def ping(self) -> float:
        ms, _ = await self._timed(PING, b"")
        return ms


async def measure_queries(
    nc: Client, workload: Workload, per_round: int, rounds: int, log: Callable[[str], None]
) -> tuple[Latencies, list[int]]:
    """`rounds` rounds of `per_round` requests of each kind; the objects each plan listed."""
    client = CatalogClient(nc)
    rng = random.Random(20260101)
    result = Latencies()
    planned: list[int] = []
    for _ in range(5):  # warm-up: first requests pay for connections and caches
        await client.window()
        await client.plan(random_target(workload, rng))
        await client.ping()
    for round_no in range(rounds):
        samples: dict[str, list[float]] = {kind: [] for kind in KINDS}
        for i in range(per_round):
            order = KINDS[i % 3 :] + KINDS[: i % 3]
            for kind in order:
                if kind == "window":
                    samples[kind].append(await client.window())
                elif kind == "plan":
                    ms, objects = await client.plan(random_target(workload, rng))
                    samples[kind].append(ms)
                    planned.append(objects)
                else:
                    samples[kind].append(await client.ping())
        result.rounds.append(samples)
        log(
            f"  round {round_no + 1} queries: window p50 {statistics.median(samples['window']):.2f}"
            f" ms, plan p50 {statistics.median(samples['plan']):.2f} ms, ping p50 "
            f"{statistics.median(samples['ping']):.2f} ms"
        )
    return result, planned


def check_times(workload: Workload) -> None:
    """The time window the targets are drawn from lies inside the SCN window."""
    start, end = workload.window()
    low, high = workload.time_window()
    if not time_at(start) <= low < high <= time_at(end) or end - start < 2 * STEP:
        raise RuntimeError("the workload's window is too short to draw targets from")
