"""The `catalog` settings section: where the durable index lives, and the bucket it derives from.

    [catalog]
    url = "postgresql://tidemark@catalog-db:5432/tidemark"   # default: sqlite:///<state_dir>/catalog.db
    password_file = "/var/run/secrets/catalog-db/password"   # PostgreSQL only; never in the URL
    store_url = "gs://archive/tidemark"                       # default: the archiver's store_url
    prefix = "prod"                                           # default: the archiver's prefix
    http_host = "0.0.0.0"                                     # default: 127.0.0.1
    http_port = 8470                                          # timeline page + JSON API; 0: off
    ingest_batch = 1024                                       # events per store transaction
    replica = "catalog-0"                                     # default: the node name
    replica_idle_s = 86400                                    # an idle replica's durable goes

SQLite (WAL mode) is the embedded default; PostgreSQL is for a replicated catalog. The URL never
carries a password: settings hold references to secrets, not secrets.

This module imports nothing from `services/` (the settings model imports it).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

_SCHEMES = ("sqlite", "postgresql", "postgresql+psycopg")


class CatalogSettings(BaseModel):
    """Where the catalog keeps its index and which bucket `catalog rebuild` reads."""

    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the index; default sqlite:///<state_dir>/catalog.db",
    )
    password_file: Path | None = Field(
        default=None, description="file holding the PostgreSQL password (or use PGPASSFILE)"
    )
    store_url: str | None = Field(
        default=None, description="the archive bucket for rebuild; default: archiver.store_url"
    )
    prefix: str | None = Field(
        default=None,
        pattern=r"^$|^[A-Za-z0-9._=-]+(/[A-Za-z0-9._=-]+)*$",
        description="key prefix before <database-uid>/; default: archiver.prefix",
    )

    ingest_batch: int = Field(
        default=1024,
        ge=1,
        le=1024,
        description="events the catalog's consumer takes at once: one store transaction and one "
        "wait for the stream per batch (1: one event at a time)",
    )

    replica: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9_-]{1,64}$",
        description="this replica's stable name: its durable is catalog-ingest-<replica>, so "
        "every replica sees every event; default: the node name (dots as _)",
    )
    replica_idle_s: float = Field(
        default=86400,
        ge=60,
        description="the server removes a replica's durable once nobody has pulled from it "
        "this long (a replica gone for good); a replica that comes back replays from its store",
    )

    http_host: str = Field(default="127.0.0.1", description="where the timeline page listens")
    http_port: int = Field(
        default=8470, ge=0, le=65535, description="timeline page and JSON API; 0 turns it off"
    )

    @field_validator("url")
    @classmethod
    def _no_secret_in_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        check_catalog_url(value)
        return value

    def url_for(self, state_dir: Path) -> str:
        return self.url or sqlite_url(state_dir / "catalog.db")


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path.absolute()}"


def check_catalog_url(url: str) -> None:
    """Refuse a URL Tidemark would not open, or one that carries a password."""
    parts = urlsplit(url)
    if parts.scheme not in _SCHEMES:
        raise ValueError(
            f"catalog url scheme {parts.scheme!r} is not supported "
            "(use sqlite:///path/catalog.db or postgresql://user@host/db)"
        )
    if parts.password is not None:
        raise ValueError(
            "the catalog url must not carry a password: put it in a file and set "
            "catalog.password_file (or use PGPASSFILE)"
        )
