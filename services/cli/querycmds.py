"""`tidemark windows DB` and `tidemark check DB --to TIME|--scn N|--lsn X`: ask the catalog."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, TypeVar

import typer
from pydantic import TypeAdapter, ValidationError
from rich.table import Table

from schemas import DatabaseUid, Lsn, Scn
from schemas.catalog import CheckReply, WindowsReply
from schemas.messages import RestoreTarget, TargetPosition, TargetTime
from services.catalog.client import CatalogClient, CatalogError
from services.cli.locate import StateDir, find_state_dir
from services.cli.output import OutputFormat, OutputOption, emit_json
from services.cli.stackcmds import console, resolve_nats, unreachable
from services.settings import NatsSettings
from services.stack.probe import connect_once

T = TypeVar("T")

NatsUrl = Annotated[
    str | None, typer.Option("--nats-url", help="NATS URL (default: the running stack's)")
]


def parse_target(to: str | None, scn: int | None, lsn: str | None) -> RestoreTarget:
    """Exactly one of --to, --scn, --lsn; a time without a zone is taken as UTC."""
    given = [name for name, v in (("--to", to), ("--scn", scn), ("--lsn", lsn)) if v is not None]
    if len(given) != 1:
        raise typer.BadParameter("give exactly one of --to TIME, --scn N or --lsn X/Y")
    try:
        if scn is not None:
            if scn < 0:
                raise typer.BadParameter("--scn must not be negative")
            return TargetPosition(position=Scn(value=scn))
        if lsn is not None:
            return TargetPosition(position=Lsn.parse(lsn))
        assert to is not None
        try:
            at = datetime.fromisoformat(to.replace("Z", "+00:00"))
        except ValueError:
            raise typer.BadParameter(
                f"--to {to!r} is not a time; use ISO 8601, e.g. 2026-03-01T12:05:00Z"
            ) from None
        if at.tzinfo is None:
            at = at.replace(tzinfo=UTC)
        return TargetTime(at=at)
    except ValidationError as exc:
        raise typer.BadParameter(_first_error(exc)) from None
    except (ValueError, OverflowError) as exc:
        raise typer.BadParameter(str(exc)) from None


def _first_error(exc: ValidationError) -> str:
    error = exc.errors(include_url=False, include_input=False)[0]
    where = ".".join(str(part) for part in error["loc"])
    return f"{where}: {error['msg']}" if where else error["msg"]


_UID = TypeAdapter(DatabaseUid)


def check_uid(value: str) -> str:
    """A database uid, checked before anything is sent: it becomes a subject token and an
    object-key prefix, so `orders.>` or `../x` must never reach the bus."""
    try:
        return _UID.validate_python(value)
    except ValidationError:
        raise typer.BadParameter(
            f"{value!r} is not a database uid (lower-case letters, digits and '-', "
            "neither first nor last a '-', at most 63)"
        ) from None


DatabaseArg = Annotated[str, typer.Argument(help="database uid", callback=check_uid)]


def ask(bus: NatsSettings, question: Callable[[CatalogClient], Awaitable[T]]) -> T:
    async def run() -> T:
        try:
            nc = await connect_once(bus)
        except Exception as exc:
            raise CatalogError(503, unreachable(bus, exc)) from exc
        try:
            return await question(CatalogClient(nc))
        finally:
            await nc.close()

    try:
        return asyncio.run(run())
    except CatalogError as exc:
        console.print(f"[red]✗ {exc.error}[/]")
        raise typer.Exit(2 if exc.status in (400, 404) else 1) from None


def show_time(value: datetime) -> str:
    """A time as the CLI prints it: full precision, UTC, and accepted back by `--to` exactly
    (a window start shown to the second would be refused as before the window)."""
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _t(value: datetime | None) -> str:
    return show_time(value) if value else "?"


def render_windows(reply: WindowsReply) -> None:
    db = reply.database
    table = Table(title=f"Restorable windows of {db.uid} ({db.engine.value})", title_justify="left")
    for column in (
        "lineage",
        "from (exclusive)",
        "to (inclusive)",
        "from time",
        "to time",
        "bases",
    ):
        table.add_column(column)
    for w in reply.windows:
        table.add_row(
            w.lineage,
            str(w.start),
            str(w.end),
            _t(w.start_time),
            _t(w.end_time),
            ", ".join(w.bases),
        )
    console.print(table)
    for gap in reply.gaps:
        console.print(f"[yellow]! {gap.lineage}: {gap.description}[/]")
    lag = f"{reply.rpo_lag_s:.0f}s" if reply.rpo_lag_s is not None else "unknown"
    console.print(f"RPO lag: {lag}   backups: {len(reply.backups)}")


def render_check(reply: CheckReply) -> None:
    if reply.restorable:
        console.print(f"[green]✓ restorable[/] on {reply.lineage} from backup {reply.base}")
        return
    console.print(f"[red]✗ not restorable[/] ({reply.code}): {reply.reason}")
    if reply.nearest_before is not None:
        console.print(f"  nearest before: {reply.nearest_before} ({_t(reply.nearest_before_time)})")
    if reply.nearest_after is not None:
        console.print(f"  nearest after:  {reply.nearest_after} ({_t(reply.nearest_after_time)})")


def register(app: typer.Typer) -> None:
    @app.command()
    def windows(
        database: DatabaseArg,
        output: OutputOption = OutputFormat.TEXT,
        state_dir: StateDir = None,
        nats_url: NatsUrl = None,
    ) -> None:
        """Show a database's restorable windows, gaps, backups and RPO lag."""
        bus = resolve_nats(nats_url, find_state_dir(state_dir))
        reply = ask(bus, lambda c: c.windows(database))
        if output is OutputFormat.JSON:
            emit_json(reply)
            return
        render_windows(reply)

    @app.command()
    def check(
        database: DatabaseArg,
        to: Annotated[str | None, typer.Option("--to", help="a time (ISO 8601; UTC)")] = None,
        scn: Annotated[int | None, typer.Option("--scn", help="an Oracle SCN")] = None,
        lsn: Annotated[str | None, typer.Option("--lsn", help="a PostgreSQL LSN, X/Y")] = None,
        lineage: Annotated[str | None, typer.Option(help="incarnation or timeline key")] = None,
        output: OutputOption = OutputFormat.TEXT,
        state_dir: StateDir = None,
        nats_url: NatsUrl = None,
    ) -> None:
        """Can DATABASE be restored to this point? If not, why, and what is nearest.

        Asks the catalog only; it does not test archiving (that is `tidemark protect`'s proof)."""
        target = parse_target(to, scn, lsn)
        bus = resolve_nats(nats_url, find_state_dir(state_dir))
        reply = ask(bus, lambda c: c.check(database, target, lineage))
        if output is OutputFormat.JSON:
            emit_json(reply)
            raise typer.Exit(0 if reply.restorable else 1)
        render_check(reply)
        if not reply.restorable:
            raise typer.Exit(1)
