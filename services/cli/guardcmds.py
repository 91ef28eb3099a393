"""The guards around commands that replace or remove data.

`confirm_in_place`   an in-place restore replaces a database's data directory: it needs
                     `--in-place --yes`, or a confirmation typed at a terminal that names the
                     database. Without a terminal (CI, cron, a pipe) the answer is no.
`tidemark leftovers` the data directories in-place restores set aside: list, and remove one by
                     name with `--yes`.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

import typer

from services.cli.leftovers import Leftover, NotALeftover, find_leftovers, remove_leftover
from services.cli.output import OutputFormat, OutputOption, emit_json
from services.cli.stackcmds import console
from services.settings import NatsSettings


def confirm_in_place(database: str, *, in_place: bool, yes: bool, target: str) -> None:
    """Return if the user has said, explicitly, that DATABASE may be replaced; exit 1 if not.

    Nothing is sent before this returns: a refused in-place restore changes nothing."""
    what = (
        f"an in-place restore of {database} to {target} stops the running database and replaces "
        "its data directory (the old one is kept aside; see `tidemark leftovers`)"
    )
    if not in_place:
        console.print(
            f"[red]✗ refused[/]: {what}. Say so with --in-place --yes, or restore into a "
            "clone with --into DIR --port N.",
            highlight=False,
        )
        raise typer.Exit(1)
    if yes:
        return
    if not sys.stdin.isatty():
        console.print(
            f"[red]✗ refused[/]: {what}; no terminal to confirm at: add --yes.", highlight=False
        )
        raise typer.Exit(1)
    console.print(f"[yellow]![/] {what}.", highlight=False)
    typed = typer.prompt(f"Type the database uid ({database}) to replace it")
    if typed.strip() != database:
        console.print("[red]✗ not confirmed; nothing was changed[/]")
        raise typer.Exit(1)


def refuse_taken_port(bus: NatsSettings, port: int, node: str | None) -> None:
    """Refuse a clone on a port something already listens on, before the request is sent.

    Only answerable where the clone will run: with a NATS on loopback (the embedded stack) and no
    other node named, the executor runs on this host, so a port taken here is taken there."""
    host = urlsplit(bus.url).hostname or ""
    if node is not None or host not in ("127.0.0.1", "localhost", "::1"):
        return
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            taken = True
        else:
            taken = False
    if taken:
        console.print(
            f"[red]✗ refused[/]: a clone on port {port}: something on this host already listens "
            "there; choose a free --port. Nothing was sent.",
            highlight=False,
        )
        raise typer.Exit(1)


def declared_data_dirs(config: Path | None) -> list[Path]:
    """The data directories of the PostgreSQL databases this node's settings declare."""
    from services.settings import load_settings

    try:
        settings = load_settings(config)
    except (ValueError, OSError) as exc:
        console.print(f"[red]✗ the settings do not load: {exc}[/]")
        raise typer.Exit(2) from None
    return [db.postgres.data_dir for db in settings.executor.databases if db.postgres is not None]


def register(app: typer.Typer) -> None:
    @app.command()
    def leftovers(
        data_dir: Annotated[
            list[Path] | None,
            typer.Option("--data-dir", help="a data directory to look beside (repeatable)"),
        ] = None,
        remove: Annotated[
            str | None, typer.Option(help="remove this one (its path or its restore id)")
        ] = None,
        yes: Annotated[bool, typer.Option("--yes", help="really remove it")] = False,
        config: Annotated[Path | None, typer.Option(help="TOML settings file")] = None,
        output: OutputOption = OutputFormat.TEXT,
    ) -> None:
        """List the data directories in-place restores set aside; remove one with --remove --yes.

        Looks beside each declared PostgreSQL data directory (executor.databases) and each
        --data-dir."""
        dirs = [*(data_dir or []), *([] if data_dir else declared_data_dirs(config))]
        found = find_leftovers(d.absolute() for d in dirs)
        if remove is None:
            if output is OutputFormat.JSON:
                emit_json({"leftovers": [f.as_json() for f in found]})
                return
            _render(found, dirs)
            return
        chosen = [f for f in found if remove in (str(f.path), f.path.name, f.restore)]
        if len(chosen) != 1:
            console.print(
                f"[red]✗ {remove!r} names {len(chosen)} of the {len(found)} set-aside "
                "directories; give its path"
            )
            raise typer.Exit(1)
        (leftover,) = chosen
        if not yes:
            console.print(
                f"[red]✗ refused[/]: removing {leftover.path} deletes "
                f"{leftover.size_bytes / 2**20:.1f} MiB, the database as it was before restore "
                f"{leftover.restore}; add --yes",
                highlight=False,
            )
            raise typer.Exit(1)
        try:
            remove_leftover(leftover, dirs)
        except NotALeftover as exc:
            console.print(f"[red]✗ {exc}[/]")
            raise typer.Exit(1) from None
        console.print(f"[green]✓[/] removed {leftover.path}", highlight=False)


def _render(found: list[Leftover], dirs: list[Path]) -> None:
    if not found:
        console.print(f"no set-aside data directories beside {len(dirs)} data directories")
        return
    for f in found:
        console.print(
            f"{f.path}  restore {f.restore}  set aside {f.set_aside_at.isoformat()}  "
            f"{f.size_bytes / 2**20:.1f} MiB",
            highlight=False,
        )
