"""Which engine driver serves which `Engine`: one instance per engine per process, made on
first use.

Drivers are imported lazily, by module path, so the executor starts (and serves its other
databases) on a build that lacks one driver or its dependencies: a command for such a database
is refused with `EngineUnavailable`, saying why, instead of the whole service failing to import.
Tests hand in their own drivers (`drivers=`), which is the seam for doubles; nothing is patched.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import cast

from schemas import Engine
from services.engines.base import Engine as EngineDriver
from services.engines.settings import EngineSettings


@dataclass(frozen=True)
class _Where:
    module: str
    cls: str


_DRIVERS: dict[Engine, _Where] = {
    Engine.POSTGRES: _Where("services.engines.postgres.engine", "PostgresEngine"),
    Engine.ORACLE: _Where("services.engines.oracle.engine", "OracleEngine"),
}
"""Where each engine's driver class lives."""


class EngineUnavailable(RuntimeError):
    """No driver for this engine in this build (not written yet, or it failed to import)."""

    def __init__(self, engine: Engine, reason: str) -> None:
        super().__init__(f"no {engine.value} engine on this node: {reason}")
        self.engine = engine
        self.reason = str(self)


class EngineRegistry:
    """The engine drivers of one executor. Every driver is built with the executor's settings
    (`Driver(settings)`), which is how it finds the databases it serves."""

    def __init__(
        self,
        settings: EngineSettings,
        *,
        drivers: Mapping[Engine, EngineDriver] | None = None,
        loadable: Mapping[Engine, _Where] | None = None,
    ) -> None:
        """`drivers`: ready instances (tests hand in doubles here). `loadable`: which engines
        may be loaded by module path when asked for (default: every driver of this release;
        `{}` makes `drivers` the only ones)."""
        self.settings = settings
        self._drivers: dict[Engine, EngineDriver] = dict(drivers or {})
        self._loadable = _DRIVERS if loadable is None else loadable

    def get(self, engine: Engine) -> EngineDriver:
        """The driver for `engine`; `EngineUnavailable` when this build has none."""
        driver = self._drivers.get(engine)
        if driver is None:
            driver = self._load(engine)
            self._drivers[engine] = driver
        return driver

    def _load(self, engine: Engine) -> EngineDriver:
        where = self._loadable.get(engine)
        if where is None:
            raise EngineUnavailable(engine, "this release has no driver for it")
        try:
            module = importlib.import_module(where.module)
        except ImportError as exc:
            raise EngineUnavailable(engine, f"cannot import {where.module}: {exc}") from exc
        cls = getattr(module, where.cls, None)
        if cls is None:
            raise EngineUnavailable(engine, f"{where.module} has no {where.cls}")
        return cast("EngineDriver", cls(self.settings))
