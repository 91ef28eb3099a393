"""physical-archive, measured when its engine steps exist (`services/engines/postgres/
migration/archive.py`); until then the report says why not, and prints no figure for it."""

from __future__ import annotations

import importlib

from bench.migrate.rounds import MethodRun
from bench.migrate.settings import MigrateBenchSettings
from bench.migrate.source import Source

ENGINE_MODULE = "services.engines.postgres.migration.archive"


def unavailable_reason() -> str | None:
    try:
        importlib.import_module(ENGINE_MODULE)
    except ModuleNotFoundError as exc:
        if exc.name != ENGINE_MODULE:
            raise
        return f"its engine steps ({ENGINE_MODULE}) do not exist in this tree"
    return "its engine steps exist, but this benchmark does not drive them yet"


def archive_run(source: Source, settings: MigrateBenchSettings, round_no: int) -> MethodRun:
    raise NotImplementedError(unavailable_reason())
