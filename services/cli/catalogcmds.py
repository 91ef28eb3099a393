"""`tidemark catalog …`: the catalog's own commands.

tidemark catalog rebuild   recreate the catalog's store from the bucket alone
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from services.catalog.rebuild import RebuildReport

console = Console()

app = typer.Typer(
    name="catalog",
    help="The catalog: its index of logs and backups, and what is restorable.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.command()
def rebuild(
    store: Annotated[
        str | None,
        typer.Option(
            "--store",
            help="the archive bucket, e.g. gs://bucket/path or file:///var/lib/tidemark/store "
            "(default: catalog.store_url, else archiver.store_url)",
        ),
    ] = None,
    prefix: Annotated[
        str | None,
        typer.Option(
            help="key prefix before <database-uid>/ (default: catalog.prefix, else archiver.prefix)"
        ),
    ] = None,
    catalog_url: Annotated[
        str | None,
        typer.Option(
            "--catalog-url",
            help="the store to recreate: sqlite:///path or postgresql://user@host/db "
            "(default: catalog.url, else sqlite in the state directory)",
        ),
    ] = None,
    password_file: Annotated[
        Path | None,
        typer.Option(help="file holding the PostgreSQL password (default: catalog.password_file)"),
    ] = None,
    state_dir: Annotated[
        Path | None,
        typer.Option("--state-dir", envvar="TIDEMARK_STATE_DIR", help="local state directory"),
    ] = None,
    config: Annotated[Path | None, typer.Option(help="TOML settings file")] = None,
    allow_empty: Annotated[
        bool,
        typer.Option(
            "--allow-empty",
            help="replace the store even when the bucket holds nothing, or under half of the "
            "logs and backups the store indexes now",
        ),
    ] = False,
) -> None:
    """Recreate the catalog's store from the bucket: every log's metadata, every manifest.

    The store is replaced in one transaction, and only once the new index is complete. A
    bucket listing that finds nothing, or under half of what the store indexes now (a wrong
    --store or --prefix, most likely), is refused and the store left as it was, unless
    --allow-empty. Restart a running catalog afterwards so that it loads the rebuilt store.
    """
    # Imported here: the other commands should not pay for SQLAlchemy and the blob drivers.
    from services.blobstore import open_store
    from services.catalog.rebuild import RebuildGuard, RebuildRefused
    from services.catalog.rebuild import rebuild as run_rebuild
    from services.catalog.store import CatalogStore
    from services.settings import load_settings

    overrides = {} if state_dir is None else {"state_dir": state_dir}
    settings = load_settings(config, **overrides)
    section = settings.catalog
    store_url = store or section.store_url or settings.archiver.store_url_for(settings.state_dir)
    key_prefix = next(
        p for p in (prefix, section.prefix, settings.archiver.prefix) if p is not None
    )
    url = catalog_url or section.url_for(settings.state_dir)
    secret = password_file or section.password_file

    async def main() -> RebuildReport:
        blobs = open_store(store_url)
        catalog = await asyncio.to_thread(CatalogStore.open, url, password_file=secret)
        try:
            before = await asyncio.to_thread(catalog.counts)
            accept = None if allow_empty else RebuildGuard(before.logs + before.backups).accept
            return await run_rebuild(blobs, catalog, key_prefix.strip("/"), accept=accept)
        finally:
            catalog.close()
            await blobs.close()

    console.print(f"rebuilding {_shown(url)} from {store_url} (prefix {key_prefix or '-'!s})")
    try:
        report = asyncio.run(main())
    except RebuildRefused as exc:
        console.print(f"[red]✗ refused; the store is unchanged[/]: {exc}", highlight=False)
        raise typer.Exit(1) from None
    except Exception as exc:
        console.print(f"[red]✗ rebuild failed; the store is unchanged: {exc}[/]")
        raise typer.Exit(1) from None
    render_report(report)


def _shown(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def render_report(report: RebuildReport) -> None:
    counts = report.stored
    console.print(
        f"[green]✓[/] {report.objects} objects read: {counts.databases} databases, "
        f"{counts.lineages} lineages, {counts.logs} logs, {counts.backups} backups indexed; "
        f"{report.other_objects} other objects, {report.skipped} skipped"
    )
    for ref in sorted(report.index.databases(), key=lambda r: r.uid):
        reply = report.index.windows(ref.uid)
        table = Table(
            title=f"{ref.uid} ({ref.engine.value} {ref.name}) restorable windows",
            title_justify="left",
        )
        for column in ("lineage", "after", "up to", "from time", "to time", "bases"):
            table.add_column(column)
        for window in reply.windows:
            table.add_row(
                window.lineage,
                str(window.start),
                str(window.end),
                _when(window.start_time),
                _when(window.end_time),
                ", ".join(window.bases),
            )
        if not reply.windows:
            table.add_row("-", "nothing restorable", "", "", "", "")
        console.print(table)
    if report.warnings:
        console.print(f"[yellow]{len(report.warnings)} warnings[/] (the first are):")
        for warning in report.warnings[:20]:
            console.print(f"  [yellow]![/] {warning}")


def _when(value: object) -> str:
    from datetime import datetime

    from services.cli.querycmds import show_time

    return show_time(value) if isinstance(value, datetime) else ""
