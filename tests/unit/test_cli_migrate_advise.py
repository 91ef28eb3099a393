"""`tidemark migrate advise`: what logical replication cannot carry reaches the advisor's facts."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from typer.testing import CliRunner

from schemas.messages import AdviceRequest, MigrationMethod
from services.cli import migratecmds as mc
from services.cli.main import app
from services.planner.advisor import advise
from services.planner.migration_record import METHODS_BUILT

pytestmark = pytest.mark.unit

NOWHERE = "nats://127.0.0.1:1"


def invoke(*argv: str) -> Any:
    return CliRunner().invoke(app, list(argv), env={"COLUMNS": "200"})


def test_advise_carries_what_logical_replication_cannot_into_the_facts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    asked: list[AdviceRequest] = []

    async def answer(_nc: Any, _subject: str, request: AdviceRequest, _reply: Any) -> Any:
        asked.append(request)
        return advise(request)

    monkeypatch.setattr(mc, "ask_planner", answer)
    monkeypatch.setattr(mc, "run_with_planner", lambda _bus, work: asyncio.run(work(None, None)))
    advise_argv = ["migrate", "advise", "orders-db", "--engine", "postgres", "--nats-url", NOWHERE]
    facts = ["--size", "10GiB", "--bandwidth", "100MiB/s", "--write-rate", "1MiB/s"]
    result = invoke(
        *advise_argv,
        *facts,
        *["--source-version", "15", "--target-version", "18", "--downtime-budget", "10m"],
        *["--table-without-identity", "public.events", "--unlogged-table", "public.cache"],
        *["--large-objects", "3", "--missing-extension", "postgis"],
    )
    assert result.exit_code == 1, result.output  # postgis missing: no method fits
    given = asked[0].facts
    assert given.tables_without_identity == ["public.events"]
    assert given.unlogged_tables == ["public.cache"]
    assert given.large_objects == 3
    assert given.extensions_missing_on_target == ["postgis"]
    assert "public.events (no primary key, no replica identity)" in result.output
    bad = invoke(*advise_argv, *facts, "--source-version", "15", "--unlogged-table", "cache")
    assert bad.exit_code == 2
    assert "--unlogged-table: wants schema.table" in bad.output


def test_advise_carries_oracles_platforms_character_sets_and_schemas(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    asked: list[AdviceRequest] = []

    async def answer(_nc: Any, _subject: str, request: AdviceRequest, _reply: Any) -> Any:
        asked.append(request)
        return advise(request)

    monkeypatch.setattr(mc, "ask_planner", answer)
    monkeypatch.setattr(mc, "run_with_planner", lambda _bus, work: asyncio.run(work(None, None)))
    argv = ["migrate", "advise", "erp", "--engine", "oracle", "--nats-url", NOWHERE]
    sizes = ["--size", "2TiB", "--bandwidth", "200MiB/s", "--write-rate", "2MiB/s"]
    result = invoke(
        *argv,
        *sizes,
        *["--source-version", "19", "--downtime-budget", "4h"],
        *[
            "--source-platform",
            "AIX-Based Systems (64-bit)",
            "--target-platform",
            "Linux x86 64-bit",
        ],
        *["--source-charset", "AL32UTF8"],
    )
    assert result.exit_code == 0, result.output
    given = asked[-1].facts
    # The byte orders come from the platforms V$TRANSPORTABLE_PLATFORM knows.
    assert (given.source_endianness.value, given.target_endianness.value) == ("big", "little")
    # A method the planner does not run yet is ranked, and said to be advice only.
    built = MigrationMethod.XTTS in METHODS_BUILT
    assert ("xtts (not built yet)" in result.output) is not built
    assert "byte order" in result.output

    result = invoke(
        *argv, *sizes, "--source-version", "19", "--downtime-budget", "48h",
        *["--schema", "app", "--schema", "hr"],
    )  # fmt: skip
    assert asked[-1].facts.schemas == ["APP", "HR"]
    assert "not a subset of schemas (APP, HR)" in " ".join(result.output.split())

    bad = invoke(*argv, *sizes, "--source-version", "19", "--schema", "app;drop")
    assert bad.exit_code == 2
    assert "--schema: wants an Oracle user name" in bad.output
    wrong = invoke(
        *argv, *sizes, "--source-version", "19",
        *["--source-platform", "Linux x86 64-bit", "--source-endianness", "big"],
    )  # fmt: skip
    assert wrong.exit_code == 2
    assert "Linux x86 64-bit is little endian" in wrong.output
    pg = invoke(
        "migrate", "advise", "orders-db", "--engine", "postgres", "--nats-url", NOWHERE,
        *sizes, "--source-version", "15", "--schema", "public",
    )  # fmt: skip
    assert pg.exit_code == 2
    assert "schemas are an Oracle fact" in pg.output
