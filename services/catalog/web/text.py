"""How the pages write things: escaped markup, UTC times, positions and lags."""

from __future__ import annotations

import html
from datetime import UTC, datetime

from schemas import Lsn, Scn

__all__ = ["LAG_BAD_S", "LAG_WARN_S", "attrs", "esc", "iso", "lag_level", "lag_text", "pos", "when"]

LAG_WARN_S = 300.0
"""RPO lag above which the pages draw it amber: more than one usual archive_timeout behind."""
LAG_BAD_S = 3600.0
"""RPO lag above which the pages draw it red: an hour of commits would be lost today."""


def esc(value: object) -> str:
    """Text or attribute value, escaped for HTML and inline SVG (quotes included)."""
    return html.escape(str(value), quote=True)


def attrs(**values: object) -> str:
    """` name="value"` pairs, escaped; `data_x` becomes `data-x`; None values are left out."""
    return "".join(
        f' {name.rstrip("_").replace("_", "-")}="{esc(value)}"'
        for name, value in values.items()
        if value is not None
    )


def when(value: datetime | None, *, seconds: bool = True) -> str:
    if value is None:
        return "—"
    value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%d %H:%M:%SZ" if seconds else "%Y-%m-%d %H:%MZ")


def iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z") if value else None


def pos(value: Scn | Lsn | None) -> str:
    """A position as the engine prints it: SCN 9000251, LSN 0/3000060."""
    return "—" if value is None else f"{value.kind.upper()} {value}"


def lag_text(seconds: float | None) -> str:
    if seconds is None:
        return "unknown (nothing restorable yet)"
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def lag_level(seconds: float | None) -> str:
    """`ok`, `warn` or `bad`: the CSS class the lag is drawn with."""
    if seconds is None or seconds > LAG_BAD_S:
        return "bad"
    return "warn" if seconds > LAG_WARN_S else "ok"
