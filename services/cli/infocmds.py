"""`tidemark info [DB]`: one page per database, what `pgbackrest info` and `cnpg status` give.

Per database: its backups (id, kind, lineage, start and consistent positions, completion time),
archiving (last archived log's time, RPO lag, gaps), the restorable windows with the first
recoverability point, and the next scheduled full backup and verification from its policy.
`--output json` prints the same as one document (see docs/cli.md).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Annotated, Any

import typer

from services.catalog.client import CatalogClient, CatalogError
from services.cli.locate import StateDir, find_state_dir
from services.cli.output import OutputFormat, OutputOption, emit_json
from services.cli.querycmds import check_uid, show_time
from services.cli.schedule import next_run
from services.cli.stackcmds import console, resolve_nats, unreachable
from services.planner.client import PlannerClient, PlannerError
from services.settings import NatsSettings
from services.stack.probe import connect_once


async def gather(bus: NatsSettings, uid: str | None) -> list[dict[str, Any]]:
    try:
        nc = await connect_once(bus)
    except Exception as exc:
        raise CatalogError(503, unreachable(bus, exc)) from exc
    try:
        catalog = CatalogClient(nc)
        planner = PlannerClient(nc, timeout=10.0)
        uids = (
            [uid] if uid else sorted(s.database.uid for s in (await catalog.databases()).databases)
        )
        pages = []
        for one in uids:
            windows = await catalog.windows(one)
            try:
                policy = (await planner.policy(one)).policy
            except PlannerError:
                policy = None  # the planner is down: the rest of the page still stands
            now = datetime.now(UTC)
            first = min((w.start_time for w in windows.windows if w.start_time), default=None)
            pages.append(
                {
                    "database": windows.database.model_dump(mode="json"),
                    "backups": [b.model_dump(mode="json") for b in windows.backups],
                    "archiving": {
                        "last_archived_at": windows.last_archived_at,
                        "rpo_lag_s": windows.rpo_lag_s,
                        "gaps": [g.model_dump(mode="json") for g in windows.gaps],
                    },
                    "windows": [w.model_dump(mode="json") for w in windows.windows],
                    "first_recoverability_point": first,
                    "policy": None if policy is None else policy.model_dump(mode="json"),
                    "next_full_backup": policy and next_run(policy.full_cron, now),
                    "next_verification": policy and next_run(policy.verify_cron, now),
                }
            )
        return pages
    finally:
        await nc.close()


def _t(value: Any) -> str:
    if isinstance(value, datetime):
        return show_time(value)
    return "-" if value is None else str(value)


def render(page: dict[str, Any]) -> None:
    db = page["database"]
    console.print(f"[bold]{db['uid']}[/] ({db['engine']} {db['name']})", highlight=False)
    arch = page["archiving"]
    lag = "unknown" if arch["rpo_lag_s"] is None else f"{arch['rpo_lag_s']:.0f}s"
    console.print(
        f"  archiving: last log {_t(arch['last_archived_at'])}, RPO lag {lag}, "
        f"{len(arch['gaps'])} gaps",
        highlight=False,
    )
    console.print(f"  first recoverability point: {_t(page['first_recoverability_point'])}")
    for w in page["windows"]:
        console.print(
            f"  window on {w['lineage']}: after {w['start']} up to {w['end']} "
            f"({_t(w['start_time'])} .. {_t(w['end_time'])})",
            highlight=False,
        )
    for b in page["backups"]:
        console.print(
            f"  backup {b['backup_id']} {b['kind']} on {b['lineage']}: {b['start']} .. "
            f"{b['consistent_at']}, completed {b['completed_at']}",
            highlight=False,
        )
    if not page["backups"]:
        console.print("  no backups")
    console.print(
        f"  next full backup: {_t(page['next_full_backup'])}   next verification: "
        f"{_t(page['next_verification'])}",
        highlight=False,
    )


def register(app: typer.Typer) -> None:
    app.add_typer(backups_app, name="backups")

    @app.command()
    def info(
        database: Annotated[str | None, typer.Argument(help="database uid (default: all)")] = None,
        output: OutputOption = OutputFormat.TEXT,
        state_dir: StateDir = None,
        nats_url: Annotated[str | None, typer.Option("--nats-url", help="NATS URL")] = None,
    ) -> None:
        """Backups, archiving health, restorable windows and next runs, per database."""
        if database is not None:
            check_uid(database)
        bus = resolve_nats(nats_url, find_state_dir(state_dir))
        try:
            pages = asyncio.run(gather(bus, database))
        except CatalogError as exc:
            console.print(f"[red]✗ {exc.error}[/]")
            raise typer.Exit(2 if exc.status in (400, 404) else 1) from None
        if output is OutputFormat.JSON:
            emit_json({"databases": pages})
            return
        for page in pages:
            render(page)
        if not pages:
            console.print("no databases in the catalog yet")


backups_app = typer.Typer(help="A database's backups, as the catalog indexes them.")


@backups_app.command("list")
def backups_list(
    database: Annotated[str, typer.Argument(help="database uid")],
    output: OutputOption = OutputFormat.TEXT,
    state_dir: StateDir = None,
    nats_url: Annotated[str | None, typer.Option("--nats-url", help="NATS URL")] = None,
) -> None:
    """Each backup: id, kind, lineage, start and consistent positions, completion time."""
    check_uid(database)
    bus = resolve_nats(nats_url, find_state_dir(state_dir))
    try:
        pages = asyncio.run(gather(bus, database))
    except CatalogError as exc:
        console.print(f"[red]✗ {exc.error}[/]")
        raise typer.Exit(2 if exc.status in (400, 404) else 1) from None
    backups = pages[0]["backups"]
    if output is OutputFormat.JSON:
        emit_json({"database": database, "backups": backups})
        return
    for b in backups:
        console.print(
            f"{b['backup_id']}  {b['kind']}  {b['lineage']}  {b['start']} .. {b['consistent_at']}"
            f"  completed {b['completed_at']}",
            highlight=False,
        )
    if not backups:
        console.print(f"{database}: no backups")
