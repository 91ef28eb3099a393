"""The catalog: indexes backups and logs from events and answers "to which moments can I go
back, and what does it take?". A derived index: `tidemark catalog rebuild` recreates it from the
bucket alone."""

from __future__ import annotations

from dataclasses import dataclass

from services.runtime import Service


@dataclass
class CatalogService(Service):
    name: str = "catalog"
