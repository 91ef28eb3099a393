"""`tidemark bus …`: the bus's own admin commands.

tidemark bus replicas              each TM_* stream's and KV bucket's replicas, leader, peers
tidemark bus replicas --set 3      raise them all to 3 (what `bus.replicas = 3` does at start-up)
tidemark bus replicas --set 1 --yes   lower them: the only way replicas ever go down

A service never lowers replicas when it starts (`services/bus/topology.py`): a service started
without `bus.replicas` would otherwise move a cluster's streams, their consumers and the
planner's buckets onto one server. Lowering is this command, and it refuses without `--yes`
(nothing is changed then). It needs a NATS identity allowed to change streams: the embedded
stack's admin user is taken by itself; elsewhere set TIDEMARK_NATS__USER and
TIDEMARK_NATS__PASSWORD_FILE (or __CREDENTIALS_FILE) to the admin's.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

import typer

from services.bus.permissions import Role, user_name
from services.bus.topology import TopologyError, set_replicas, topology_replicas
from services.cli.locate import StateDir, find_state_dir
from services.cli.output import OutputFormat, OutputOption, emit_json
from services.cli.stackcmds import console, resolve_nats, unreachable
from services.settings import NatsSettings
from services.stack.credentials import password_file
from services.stack.probe import connect_once

app = typer.Typer(
    name="bus",
    help="The bus: its streams and KV buckets on NATS JetStream.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def admin_identity(bus: NatsSettings, state_dir: Path) -> NatsSettings:
    """The embedded stack's admin instead of its tool user (which may not change streams);
    an identity set by the environment is kept as it is."""
    if bus.user != user_name(Role.TOOL):
        return bus
    admin = password_file(state_dir, Role.ADMIN)
    if not admin.is_file():
        return bus
    return bus.model_copy(update={"user": user_name(Role.ADMIN), "password_file": admin})


async def _read(bus: NatsSettings) -> list[dict[str, Any]]:
    nc = await connect_once(bus)
    try:
        js = nc.jetstream()
        rows = []
        for stream, replicas in (await topology_replicas(js)).items():
            row: dict[str, Any] = {"stream": stream, "replicas": replicas}
            if replicas is not None:
                cluster = (await js.stream_info(stream)).cluster
                row["leader"] = cluster.leader if cluster else None
                row["peers_current"] = (
                    [p.name for p in cluster.replicas or [] if p.current] if cluster else []
                )
            rows.append(row)
        return rows
    finally:
        await nc.close()


async def _set(bus: NatsSettings, replicas: int) -> list[dict[str, Any]]:
    nc = await connect_once(bus)
    try:
        changes = await set_replicas(nc.jetstream(), replicas)
        return [{"stream": c.stream, "before": c.before, "after": c.after} for c in changes]
    finally:
        await nc.close()


@app.command()
def replicas(
    set_to: Annotated[
        int | None,
        typer.Option("--set", min=1, max=5, help="set every stream and bucket to N replicas"),
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", help="really lower replicas")] = False,
    output: OutputOption = OutputFormat.TEXT,
    state_dir: StateDir = None,
    nats_url: Annotated[
        str | None, typer.Option("--nats-url", help="NATS URL (default: the running stack's)")
    ] = None,
) -> None:
    """Show the replicas of every stream and KV bucket; change them with --set N.

    Lowering (N below what a stream has) needs --yes: services only ever raise replicas."""
    state = find_state_dir(state_dir)
    bus = admin_identity(resolve_nats(nats_url, state), state)
    try:
        rows = asyncio.run(_read(bus))
    except Exception as exc:
        console.print(f"[red]✗ {unreachable(bus, exc)}[/]")
        raise typer.Exit(1) from None
    if set_to is None:
        if output is OutputFormat.JSON:
            emit_json({"streams": rows})
            return
        for row in rows:
            if row["replicas"] is None:
                console.print(f"  {row['stream']:<14} not created yet", highlight=False)
                continue
            console.print(
                f"  {row['stream']:<14} R{row['replicas']}  leader {row['leader'] or '-'}, "
                f"{len(row['peers_current'])} current followers",
                highlight=False,
            )
        return
    lowered = [r for r in rows if r["replicas"] is not None and r["replicas"] > set_to]
    if lowered and not yes:
        names = ", ".join(f"{r['stream']} (R{r['replicas']})" for r in lowered)
        console.print(
            f"[red]✗ refused[/]: --set {set_to} lowers {names}; fewer replicas survive fewer "
            "lost servers. Nothing was changed; add --yes to lower them.",
            highlight=False,
        )
        raise typer.Exit(1)
    try:
        changes = asyncio.run(_set(bus, set_to))
    except TopologyError as exc:
        console.print(f"[red]✗ {exc}[/]", highlight=False)
        raise typer.Exit(1) from None
    except Exception as exc:
        console.print(f"[red]✗ {unreachable(bus, exc)}[/]")
        raise typer.Exit(1) from None
    if output is OutputFormat.JSON:
        emit_json({"changes": changes})
        return
    for change in changes:
        moved = "unchanged" if change["before"] == change["after"] else f"from R{change['before']}"
        console.print(f"  {change['stream']:<14} R{change['after']} ({moved})", highlight=False)
    console.print(f"[green]✓[/] every stream and bucket at R{set_to}")
