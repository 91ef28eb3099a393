"""Settings from `TIDEMARK_*` environment variables and an optional TOML file.

Precedence, highest first: explicit arguments, environment (`TIDEMARK_NATS__URL` sets
`nats.url`), the file named by `TIDEMARK_CONFIG` (or `--config`), then defaults. Secrets are
never values here: settings hold *references* (a file path or an environment variable name).
"""

from services.bus.settings import BusSettings, NatsSettings
from services.settings.model import Settings, load_settings
from services.telemetry.settings import TelemetrySettings

__all__ = ["BusSettings", "NatsSettings", "Settings", "TelemetrySettings", "load_settings"]
