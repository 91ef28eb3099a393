"""The settings model. Every field has a default that works on the embedded stack."""

from __future__ import annotations

import os
import socket
import warnings
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from services.archiver.settings import ArchiverSettings
from services.bus.settings import BusSettings, NatsSettings
from services.catalog.settings import CatalogSettings
from services.executor.settings import ExecutorSettings
from services.planner.settings import PlannerSettings
from services.settings.databases import LEGACY_LISTS_WARNING, DeclaredDatabase
from services.telemetry.settings import TelemetrySettings


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Settings(BaseSettings):
    """All of Tidemark's settings. Sections nest: `TIDEMARK_BUS__MAX_DELIVER=5`."""

    model_config = SettingsConfigDict(
        env_prefix="TIDEMARK_",
        env_nested_delimiter="__",
        extra="forbid",
        hide_input_in_errors=True,  # a refused value may be a DSN with a password in it
    )

    node: str = Field(default_factory=socket.gethostname, description="this node's name")
    state_dir: Path = Field(default=Path(".state"), description="local durable state")
    databases: list[DeclaredDatabase] = Field(
        default_factory=list,
        description="every database, declared once (services/settings/databases.py); the "
        "executor and archiver sections' lists are derived from it",
    )
    nats: NatsSettings = Field(default_factory=NatsSettings)
    bus: BusSettings = Field(default_factory=BusSettings)
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)
    archiver: ArchiverSettings = Field(default_factory=ArchiverSettings)
    catalog: CatalogSettings = Field(default_factory=CatalogSettings)
    executor: ExecutorSettings = Field(default_factory=ExecutorSettings)
    planner: PlannerSettings = Field(default_factory=PlannerSettings)
    health_interval_s: float = Field(default=5.0, gt=0)
    health_host: str = Field(
        default="0.0.0.0",  # noqa: S104 -- a probe comes from the kubelet, not from loopback
        description="where the health listener binds (with health_port)",
    )
    health_port: int = Field(
        default=0,
        ge=0,
        le=65535,
        description="HTTP /healthz, /readyz and /metrics for probes and scrapes; 0: off",
    )

    @model_validator(mode="before")
    @classmethod
    def _one_declaration(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        legacy = [name for name in ("archiver", "executor") if _lists_databases(data.get(name))]
        if legacy and data.get("databases"):
            raise ValueError(
                "databases are declared in [[databases]] and again in "
                f"{' and '.join(f'{name}.databases' for name in legacy)}: declare each "
                "database once, in [[databases]] only"
            )
        if legacy:
            # The old form still works as it did (the lists are used as given), so a node
            # upgraded before its settings file keeps archiving; the warning says how to move.
            warnings.warn(LEGACY_LISTS_WARNING, FutureWarning, stacklevel=2)
        return data

    @model_validator(mode="after")
    def _derive_section_lists(self) -> Settings:
        if not self.databases:
            return self
        uids = [d.uid for d in self.databases]
        if len(uids) != len(set(uids)):
            raise ValueError("databases declares a database uid twice")
        mine = [d for d in self.databases if d.hosted_on(self.node)]
        self.archiver = ArchiverSettings.model_validate(
            {
                **self.archiver.model_dump(exclude={"databases"}),
                "databases": [d.archived() for d in mine],
            }
        )
        self.executor = ExecutorSettings.model_validate(
            {
                **self.executor.model_dump(exclude={"databases"}),
                "databases": [d.hosted() for d in mine],
            }
        )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config = os.environ.get("TIDEMARK_CONFIG")
        if config:
            path = Path(config)
            if not path.is_file():
                raise FileNotFoundError(f"TIDEMARK_CONFIG names {path}, which does not exist")
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)


def _lists_databases(section: object) -> bool:
    # Only what a settings file or the environment wrote (a mapping) is the old form: a section
    # model handed in by code is already a view (the engines' tests build them directly).
    return isinstance(section, dict) and bool(section.get("databases"))


def load_settings(config: Path | None = None, **overrides: Any) -> Settings:
    """Load settings; `config` (a TOML file) takes the place of `TIDEMARK_CONFIG`."""
    if config is not None:
        if not config.is_file():
            raise FileNotFoundError(f"config file {config} does not exist")
        os.environ["TIDEMARK_CONFIG"] = str(config)
    return Settings(**overrides)
