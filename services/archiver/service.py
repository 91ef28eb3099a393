"""The archiver: one per node, streams every completed archived log (WAL segment) to the object
store the moment it exists, verifies it, and publishes `log.archived`."""

from __future__ import annotations

from dataclasses import dataclass

from services.runtime import Service


@dataclass
class ArchiverService(Service):
    name: str = "archiver"
