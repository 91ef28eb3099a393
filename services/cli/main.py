"""`tidemark`: run the embedded stack, inspect it, and (in later releases) back up and restore.

tidemark up        start nats-server and the four services; Ctrl-C stops them cleanly
tidemark status    services, stream depths, consumers, dead letters
tidemark dlq       the most recent dead letters, with their reasons
tidemark bus replicas   streams' and buckets' replicas; --set N changes them (lowering: --yes)
tidemark demo      the guided tour on the embedded default
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated

import typer

from services.cli import guardcmds, infocmds, migratecmds, plannercmds, protect, querycmds
from services.cli.buscmds import app as bus_app
from services.cli.catalogcmds import app as catalog_app
from services.cli.doctorcmds import app as doctor_app
from services.cli.locate import StateDir, find_state_dir
from services.cli.output import OutputFormat, OutputOption, emit_json
from services.cli.stackcmds import (
    bring_up,
    console,
    render_dead_letters,
    render_status,
    resolve_nats,
    run_until_signal,
    shut_down,
    unreachable,
)
from services.stack.embedded import EmbeddedStack
from services.stack.probe import read_stack

app = typer.Typer(
    name="tidemark",
    help="Tidemark: stream redo/WAL to object storage, know every restorable moment, restore.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
)
app.add_typer(catalog_app, name="catalog")
app.add_typer(bus_app, name="bus")
app.add_typer(doctor_app, name="doctor")

NatsUrl = Annotated[
    str | None, typer.Option("--nats-url", help="NATS URL (default: the running stack's)")
]


@app.command()
def up(
    state_dir: StateDir = None,
    nats_port: Annotated[
        int | None, typer.Option(help="NATS port (default 4222 if free, else any free port)")
    ] = None,
    node: Annotated[str, typer.Option(help="node name the services report")] = "embedded",
    until_healthy: Annotated[
        bool, typer.Option("--until-healthy", help="stop again as soon as all are healthy")
    ] = False,
    timeout: Annotated[float, typer.Option(help="seconds to wait for health")] = 60.0,
    config: Annotated[
        Path | None,
        typer.Option("--config", help="TOML settings file for every service (TIDEMARK_CONFIG)"),
    ] = None,
) -> None:
    """Start the embedded stack: nats-server (JetStream) and the four services."""
    from services.settings import load_settings

    if config is not None:
        if not config.is_file():
            console.print(f"[red]✗ no settings file at {config}[/]")
            raise typer.Exit(2)
        config = config.absolute()
    try:
        settings = load_settings(config)  # also hands the file to the services (TIDEMARK_CONFIG)
    except (ValueError, OSError) as exc:
        console.print(f"[red]✗ the settings do not load: {exc}[/]")
        raise typer.Exit(2) from None
    stack = EmbeddedStack(
        state_dir=find_state_dir(state_dir, config),
        node=node,
        nats_port=nats_port,
        # A port the settings name is the user's choice: the stack must not pick another.
        timeline_port=settings.catalog.http_port
        if "http_port" in settings.catalog.model_fields_set
        else None,
    )

    async def main() -> int:
        try:
            await bring_up(stack, timeout)
            render_status(await read_stack(stack.client_settings()))
            if not until_healthy:
                await run_until_signal(stack)
            return 0
        except (RuntimeError, TimeoutError) as exc:
            console.print(f"[red]✗ {exc}[/]")
            return 1
        finally:
            shut_down(stack)

    code = asyncio.run(main())
    if code == 0 and any(c not in (0, None) for c in stack.exit_codes().values()):
        code = 1
    raise typer.Exit(code)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            shown = version("tidemark")
        except PackageNotFoundError:
            shown = "unknown (not installed)"
        print(f"tidemark {shown}")
        raise typer.Exit(0)


@app.callback()
def _options(
    _version_flag: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="print the version and exit"
        ),
    ] = False,
) -> None:
    """Tidemark: stream redo/WAL to object storage, know every restorable moment, restore."""


@app.command()
def status(
    output: OutputOption = OutputFormat.TEXT,
    state_dir: StateDir = None,
    nats_url: NatsUrl = None,
) -> None:
    """Show each service, stream depths, consumers and dead letters."""
    bus = resolve_nats(nats_url, find_state_dir(state_dir))
    try:
        view = asyncio.run(read_stack(bus))
    except Exception as exc:
        console.print(f"[red]✗ {unreachable(bus, exc)}[/]")
        console.print("Is the stack running? Start it with `tidemark up`.")
        raise typer.Exit(1) from None
    if output is OutputFormat.JSON:
        emit_json(dataclasses.asdict(view))
        return
    render_status(view)


@app.command()
def dlq(
    output: OutputOption = OutputFormat.TEXT,
    state_dir: StateDir = None,
    nats_url: NatsUrl = None,
    limit: Annotated[int, typer.Option(help="how many, newest first")] = 20,
) -> None:
    """List the newest dead letters with their reasons."""
    bus = resolve_nats(nats_url, find_state_dir(state_dir))
    try:
        view = asyncio.run(read_stack(bus, dead_letter_limit=limit))
    except Exception as exc:
        console.print(f"[red]✗ {unreachable(bus, exc)}[/]")
        raise typer.Exit(1) from None
    if output is OutputFormat.JSON:
        emit_json({"count": view.dead_letter_count, "dead_letters": view.dead_letters})
        return
    render_dead_letters(view)


@app.command()
def demo(
    keep_state: Annotated[
        bool, typer.Option(help="keep the demo's state directory afterwards")
    ] = False,
    seed: Annotated[
        int | None, typer.Option(help="seed for the random restore moment (default: random)")
    ] = None,
) -> None:
    """The guided tour: a real PostgreSQL cluster, restored into a clone at a random moment.

    Protects a new cluster, backs it up, writes with a ledger, restores a clone to a random
    moment inside the window and checks it against the ledger, row for row."""
    import random
    import shutil

    from services.demo.tour import Tour, TourFailed

    state_dir = Path(tempfile.mkdtemp(prefix="tidemark-demo-", dir=demo_base_dir()))
    console.rule("[bold]Tidemark demo: point-in-time restore, proven")
    started = time.monotonic()
    tour = Tour(state_dir=state_dir, console=console, rng=random.Random(seed))  # noqa: S311 (a moment to pick, not a secret)
    verdict: str | None = None
    try:
        verdict = asyncio.run(tour.run())
    except (TourFailed, RuntimeError, TimeoutError, OSError) as exc:
        console.print(f"[red]✗ {exc}[/]")
        logs = state_dir / "logs"
        if logs.is_dir():
            console.print(
                f"  service logs: {logs}" if keep_state else "  (--keep-state keeps logs)"
            )
    finally:
        tour.cleanup()
        stack = getattr(tour, "stack", None)
        clean = True
        if stack is not None:
            shut_down(stack)
            clean = all(c in (0, None) for c in stack.exit_codes().values())
        if not keep_state:
            shutil.rmtree(state_dir, ignore_errors=True)
    if verdict is None or not clean:
        raise typer.Exit(1)
    console.print(f"tour took {time.monotonic() - started:.0f}s")
    console.print(verdict, soft_wrap=True, highlight=False)


def demo_base_dir() -> str | None:
    """Where the demo's state goes: a directory the database OS user can reach (the cluster and
    its clone live inside it), `TMPDIR` otherwise."""
    for candidate in (os.environ.get("TIDEMARK_DEMO_DIR"), "/var/tmp"):  # noqa: S108 (sticky, traversable)
        if candidate and os.path.isdir(candidate):
            return candidate
    return None


querycmds.register(app)
plannercmds.register(app)
guardcmds.register(app)
protect.register(app)
infocmds.register(app)
migratecmds.register(app)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
