"""A migration program (a wave) through the whole stack on real PostgreSQL: four clusters, each
moved by its own physical-stream migration with its own short cutover window, started by the
planner at most two at a time on the one node, and started from a program file by the CLI.

What it proves: every migration completes; each one's fence lies inside its own window (never
before it, never in another's); no more than two of the program's migrations ran at once; and
`tidemark migrate status PROGRAM` shows the four databases.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from schemas import Envelope, utcnow
from schemas.messages import (
    MigrationCompleted,
    MigrationFailed,
    MigrationRequested,
    ProgramFinished,
    ProgramStatusReply,
)
from schemas.messages.programs import program_migration_id
from services.demo.cluster import free_port
from tests.e2e.migration_stack import NODE, migration_stack, scratch_root, target_dir
from tests.e2e.pitr_stack import PitrStack, StackFailed, protect, run_cli

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(400)]

SOURCES = ("wave-a", "wave-b", "wave-c", "wave-d")
PROGRAM = "wave-e2e"

OPENS_S = (25, 37, 52, 64)
"""When each entry's window opens, in seconds after the program is sent. The first two start at
once; the last two only when a slot frees (a migration of the first two completed), so their
windows leave them time to copy and catch up."""
WINDOW_S = 8


@pytest.fixture(scope="module")
def root() -> Iterator[Path]:
    yield from scratch_root("tm-e2e-wave-")


@pytest_asyncio.fixture(scope="module")
async def stack(root: Path) -> AsyncIterator[PitrStack]:
    async for started in migration_stack(root, lambda: [protect(root, uid) for uid in SOURCES]):
        yield started


def _iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


def _program_file(root: Path, sent_at: datetime) -> tuple[Path, list[tuple[datetime, datetime]]]:
    """The program as a user writes it: defaults once, one entry per database, its window."""
    windows = [
        (sent_at + timedelta(seconds=s), sent_at + timedelta(seconds=s + WINDOW_S)) for s in OPENS_S
    ]
    lines = [
        f'program = "{PROGRAM}"',
        "max_per_source_node = 2",
        "max_per_target_node = 2",
        'reason = "e2e: a wave of four"',
        "",
        "[defaults]",
        f'node = "{NODE}"',
        'method = "physical-stream"',
        'downtime_budget = "30s"',
        'lag_max_bytes = "16MiB"',
        'lag_hold = "1s"',
    ]
    for uid, (start, end) in zip(SOURCES, windows, strict=True):
        lines += [
            "",
            "[[entries]]",
            f'source = "{uid}"',
            f'to = "{uid}-new"',
            f'data_dir = "{target_dir(root, f"{uid}-new")}"',
            f"port = {free_port()}",
            f'windows = ["{_iso(start)}/{_iso(end)}"]',
        ]
    path = root / "wave.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path, windows


def _most_at_once(events: list[Envelope[Any]], ids: set[Any]) -> int:
    """The most of `ids` that were requested and not yet final at one moment."""
    running: set[Any] = set()
    most = 0
    for event in events:
        migration_id = getattr(event.data, "migration_id", None)
        if migration_id not in ids:
            continue
        if isinstance(event.data, MigrationRequested):
            running.add(migration_id)
            most = max(most, len(running))
        elif isinstance(event.data, MigrationCompleted | MigrationFailed):
            running.discard(migration_id)
    return most


async def test_a_wave_of_four_cuts_each_database_over_only_inside_its_own_window(
    stack: PitrStack, root: Path
) -> None:
    state = ("--state-dir", str(stack.stack.state_dir))
    mark = stack.recorder.mark()
    sent_at = utcnow()
    path, windows = _program_file(root, sent_at)
    code, out = await run_cli("migrate", "program", "start", str(path), *state)
    assert code == 0, out[-3000:]
    assert f"tidemark migrate status {PROGRAM}" in out, out
    ids = [program_migration_id(PROGRAM, p) for p in range(1, len(SOURCES) + 1)]

    finished = await stack.recorder.wait_for(
        lambda e: isinstance(e.data, ProgramFinished) and e.data.program_id == PROGRAM,
        since=mark,
        timeout=OPENS_S[-1] + WINDOW_S + 90,
        what=f"migration.program.finished of {PROGRAM}",
    )
    outcomes = {o.source: o for o in finished.data.entries}
    failed = {uid: o.failure for uid, o in outcomes.items() if o.phase != "completed"}
    assert failed == {}, failed

    events = stack.recorder.since(mark)
    completed = {
        e.data.migration_id: e.data for e in events if isinstance(e.data, MigrationCompleted)
    }
    for position, (migration_id, (start, end)) in enumerate(zip(ids, windows, strict=True), 1):
        done = completed.get(migration_id)
        if done is None:
            raise StackFailed(f"entry {position}: no migration.completed of {migration_id}")
        assert start <= done.fenced_at < end, (
            f"entry {position} fenced at {done.fenced_at}, its window is [{start}, {end})"
        )
        print(
            f"{SOURCES[position - 1]}: fenced {(done.fenced_at - start).total_seconds():.2f} s "
            f"into its window, downtime {done.downtime_s:.2f} s"
        )
    assert _most_at_once(events, set(ids)) == 2

    code, out = await run_cli("migrate", "status", PROGRAM, *state)
    assert code == 0, out
    print(out)
    for uid in SOURCES:
        assert f"{uid} → {uid}-new" in out, out
    assert "4 completed" in out, out
    code, out = await run_cli("migrate", "status", PROGRAM, "--output", "json", *state)
    assert code == 0, out
    view = ProgramStatusReply.model_validate(json.loads(out)).programs[0]
    assert view.phase == "finished"
    assert [e.source for e in view.entries] == list(SOURCES)
    assert all(e.migration is not None and e.migration.phase == "completed" for e in view.entries)
