"""`--output json`: what the reading commands print for scripts and platform tools.

Every reading command takes `--output text|json`. JSON goes to stdout as one document (an object,
keys in snake_case, times ISO 8601 UTC with their full precision, positions as the strings the
command accepts back: `0/8000000` for PostgreSQL, decimal SCNs for Oracle). Nothing else is
printed on stdout in JSON mode; errors still go to the terminal as text and the exit code says
what happened. The shape of each command's document is in docs/cli.md.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

import typer
from pydantic import BaseModel


class OutputFormat(StrEnum):
    TEXT = "text"
    JSON = "json"


OutputOption = Annotated[
    OutputFormat,
    typer.Option("--output", "-o", help="text for people, json for scripts (see docs/cli.md)"),
]


def _default(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def emit_json(document: Any) -> None:
    """Write `document` to stdout as JSON (pydantic models and datetimes included)."""
    sys.stdout.write(json.dumps(document, default=_default, indent=2, sort_keys=True) + "\n")
    sys.stdout.flush()
