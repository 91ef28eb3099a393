"""The settings model. Every field has a default that works on the embedded stack."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
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


def load_settings(config: Path | None = None, **overrides: Any) -> Settings:
    """Load settings; `config` (a TOML file) takes the place of `TIDEMARK_CONFIG`."""
    if config is not None:
        if not config.is_file():
            raise FileNotFoundError(f"config file {config} does not exist")
        os.environ["TIDEMARK_CONFIG"] = str(config)
    return Settings(**overrides)
