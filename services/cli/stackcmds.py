"""`tidemark up`, `status`, `dlq`: run and inspect the embedded stack."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from rich.table import Table

from services.settings import NatsSettings
from services.stack.embedded import STACK_FILE, EmbeddedStack, read_stack_file
from services.stack.lock import LOCK_FILE, owner_of
from services.stack.probe import StackView, payload_preview

console = Console()


def unreachable(bus: NatsSettings, exc: BaseException) -> str:
    """Why a connection failed, in words that say what to fix: a refused identity is not a
    stack that is down."""
    text = str(exc) or type(exc).__name__
    if "authorization" in text.lower() or "authentication" in text.lower():
        who = bus.user or ("the credentials file" if bus.credentials_file else "no user")
        where = f" (password file {bus.password_file})" if bus.password_file else ""
        return (
            f"NATS at {bus.url} refused the identity {who}{where}: authentication failed. "
            "A stack started by `tidemark up` makes new passwords at each start: use its "
            "--state-dir, or set TIDEMARK_NATS__USER and TIDEMARK_NATS__PASSWORD_FILE"
        )
    return f"cannot reach NATS at {bus.url}: {text}"


def resolve_nats(nats_url: str | None, state_dir: Path) -> NatsSettings:
    """Where and as whom to connect.

    The URL: the flag, then TIDEMARK_NATS__URL, then the running embedded stack, then the
    default. The identity: TIDEMARK_NATS__USER / __PASSWORD_FILE / __CREDENTIALS_FILE (and
    __TLS_*) when set, else the embedded stack's tool user (named in stack.json) if the URL is
    that stack's.
    """
    env = _nats_env()
    info = read_stack_file(state_dir) or {}
    if nats_url is None and "url" not in env:
        _require_stack(state_dir, info)
    stack_url = info.get("nats_url") if isinstance(info.get("nats_url"), str) else None
    url = nats_url or env.pop("url", None) or stack_url or "nats://127.0.0.1:4222"
    identity = {"user", "password_file", "credentials_file"}
    if url == stack_url and not identity & env.keys():
        user, password_file = info.get("nats_user"), info.get("nats_password_file")
        if isinstance(user, str) and isinstance(password_file, str):
            env.update(user=user, password_file=password_file)
    return NatsSettings.model_validate({**env, "url": url})


def _require_stack(state_dir: Path, info: dict[str, object]) -> None:
    """Stop with "no stack found at X" when nothing says where NATS is."""
    if not info:
        console.print(
            f"[red]✗ no stack found at {state_dir}[/] (no {STACK_FILE} there). Start one with "
            f"`tidemark up --state-dir {state_dir}`, or name it: --state-dir, TIDEMARK_STATE_DIR, "
            "state_dir in the settings file, or --nats-url for a NATS of your own."
        )
        raise SystemExit(1)
    if owner_of(state_dir) is None and (state_dir / LOCK_FILE).exists():
        console.print(
            f"[red]✗ the stack at {state_dir} is not running[/] ({STACK_FILE} is left from "
            f"pid {info.get('supervisor_pid')}). Start it with `tidemark up --state-dir "
            f"{state_dir}`."
        )
        raise SystemExit(1)


def _nats_env() -> dict[str, str]:
    prefix = "TIDEMARK_NATS__"
    return {
        key[len(prefix) :].lower(): value
        for key, value in os.environ.items()
        if key.startswith(prefix) and value
    }


def _age(iso: object) -> str:
    if not isinstance(iso, str):
        return "?"
    seconds = (datetime.now(UTC) - datetime.fromisoformat(iso)).total_seconds()
    return f"{seconds:.0f}s ago"


def render_status(view: StackView) -> None:
    services = Table(title=f"Services  ({view.url})", title_justify="left")
    for column in ("service", "node", "state", "pid", "reported", "consumers", "detail"):
        services.add_column(column, overflow="fold")
    for key in sorted(view.health):
        h = view.health[key]
        state = str(h.get("state"))
        colour = {"healthy": "green", "draining": "yellow", "starting": "cyan"}.get(state, "red")
        services.add_row(
            str(h.get("service")),
            str(h.get("node")),
            f"[{colour}]{state}[/]",
            str(h.get("pid")),
            _age(h.get("updated_at")),
            ", ".join(h.get("consumers") or []) or "-",
            # The archiver reports each database's backlog, lag and alarms here.
            str(h.get("detail") or ""),
        )
    if not view.health:
        services.add_row("[red]no service is reporting[/]", "", "", "", "", "", "")
    console.print(services)

    streams = Table(title="Streams and consumers", title_justify="left")
    for column in ("stream", "messages", "bytes", "consumer", "pending", "ack pending", "redeliv."):
        streams.add_column(column)
    for stream in view.streams:
        if not stream.consumers:
            streams.add_row(stream.name, str(stream.messages), str(stream.bytes), "-", "", "", "")
        for i, c in enumerate(stream.consumers):
            streams.add_row(
                stream.name if i == 0 else "",
                str(stream.messages) if i == 0 else "",
                str(stream.bytes) if i == 0 else "",
                c["name"],
                str(c["pending"]),
                str(c["ack_pending"]),
                str(c["redelivered"]),
            )
    console.print(streams)
    colour = "red" if view.dead_letter_count else "green"
    console.print(f"Dead letters: [{colour}]{view.dead_letter_count}[/]")
    for letter in view.dead_letters:
        console.print(
            f"  • {letter.dead_lettered_at:%Y-%m-%d %H:%M:%S} [bold]{letter.error}[/] "
            f"{letter.subject}: {letter.reason}"
        )


def render_dead_letters(view: StackView) -> None:
    table = Table(title=f"Dead letters ({view.dead_letter_count} in TM_DLQ)", title_justify="left")
    for column in ("when", "error", "subject", "deliveries", "reason", "payload"):
        table.add_column(column, overflow="fold")
    for letter in view.dead_letters:
        table.add_row(
            f"{letter.dead_lettered_at:%Y-%m-%d %H:%M:%S}",
            letter.error,
            letter.subject,
            str(letter.deliveries),
            letter.reason,
            payload_preview(letter),
        )
    console.print(table)


async def bring_up(stack: EmbeddedStack, timeout: float) -> float:
    """Start NATS and the services, wait until all are healthy; returns seconds taken."""
    started = time.monotonic()
    with console.status("Starting nats-server (JetStream)…"):
        nats = stack.start_nats()
    console.print(f"[green]✓[/] nats-server ready at {nats.url} (monitor {nats.monitor_url})")
    with console.status("Starting planner, executor, archiver, catalog…"):
        stack.start_services()
        await stack.wait_healthy(timeout)
    elapsed = time.monotonic() - started
    console.print(f"[green]✓[/] all services healthy in {elapsed:.1f}s")
    if stack.timeline_url:
        console.print(f"  timeline page: {stack.timeline_url}")
    return elapsed


async def run_until_signal(stack: EmbeddedStack) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    console.print("Press Ctrl-C to stop.")
    while not stop.is_set():
        for name in stack.supervise_once():
            console.print(f"[yellow]! {name} exited; restarted[/]")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)


def shut_down(stack: EmbeddedStack) -> float:
    if stack.lock is None or not stack.lock.held:
        stack.stop()  # never started here (another stack owns the directory): nothing to report
        return 0.0
    started = time.monotonic()
    with console.status("Stopping services (draining) and nats-server…"):
        stack.stop()
    elapsed = time.monotonic() - started
    codes = stack.exit_codes()
    unclean = {n: c for n, c in codes.items() if c not in (0, None)}
    if unclean:
        console.print(f"[red]✗[/] services exited uncleanly: {unclean}")
    else:
        console.print(f"[green]✓[/] stopped cleanly in {elapsed:.1f}s")
    return elapsed
