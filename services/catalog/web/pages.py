"""The HTML pages: every database at a glance (`/`) and one database's timeline (`/db/{uid}`).

Both are rendered whole on the server from the same replies the JSON API serves; what changes
between refreshes sits inside `#live`, which the page's script swaps in place.
"""

from __future__ import annotations

from schemas.catalog import DatabaseSummary, WindowsReply
from services.catalog.web.assets import SCRIPT, STYLE
from services.catalog.web.text import attrs, esc, iso, lag_level, lag_text, pos, when
from services.catalog.web.timeline import render_timeline

__all__ = ["REFRESH_MS", "database_page", "index_page", "not_found_page"]

REFRESH_MS = 3000
"""How often an open page fetches itself again. Cheap: every answer comes from memory."""


def _layout(title: str, body: str, *, refresh_ms: int = REFRESH_MS) -> str:
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{STYLE}</style></head>"
        f"<body{attrs(data_refresh_ms=refresh_ms)}>{body}"
        '<div id="tip" role="tooltip" hidden></div>'
        f"<script>{SCRIPT}</script></body></html>"
    )


def _lag(seconds: float | None, element_id: str | None = None) -> str:
    return (
        f'<span class="lag {lag_level(seconds)}"'
        f"{attrs(id=element_id, data_lag_s=None if seconds is None else round(seconds, 3))}>"
        f"{esc(lag_text(seconds))}</span>"
    )


def index_page(summaries: list[DatabaseSummary]) -> str:
    rows = []
    for s in summaries:
        db = s.database
        rows.append(
            f'<tr class="database"{attrs(data_uid=db.uid, data_engine=db.engine.value)}>'
            f"<td><a{attrs(href=f'/db/{db.uid}')}>{esc(db.name)}</a>"
            f' <span class="muted">{esc(db.uid)}</span></td>'
            f"<td>{esc(db.engine.value)}</td>"
            f"<td{attrs(data_time=iso(s.window_start_time))}>{esc(when(s.window_start_time))}</td>"
            f"<td{attrs(data_time=iso(s.window_end_time))}>{esc(when(s.window_end_time))}</td>"
            f"<td>{_lag(s.rpo_lag_s)}</td>"
            f'<td class="num">{s.backups}</td><td class="num">{s.gaps}</td>'
            f'<td class="num">{s.logs}</td></tr>'
        )
    table = (
        "<table><thead><tr><th>database</th><th>engine</th><th>restorable from</th>"
        "<th>restorable to</th><th>RPO lag</th><th>backups</th><th>gaps</th><th>logs</th>"
        f"</tr></thead><tbody>{''.join(rows)}</tbody></table>"
        if rows
        else '<p class="muted">No database has been indexed yet.</p>'
    )
    body = (
        '<header><h1>Tidemark catalog</h1><span id="status" class="muted">live</span></header>'
        '<p class="muted">Restorable windows are on each database\'s current lineage; the RPO '
        "lag is how far the newest restorable moment trails now.</p>"
        f'<main id="live"{attrs(data_count=len(summaries))}>{table}</main>'
    )
    return _layout("Tidemark catalog", body)


def database_page(reply: WindowsReply) -> str:
    db = reply.database
    windows = "".join(
        f"<tr{attrs(data_lineage=w.lineage)}><td>{esc(w.lineage)}</td>"
        f"<td>{esc(pos(w.start))}</td><td>{esc(when(w.start_time))}</td>"
        f"<td>{esc(pos(w.end))}</td><td>{esc(when(w.end_time))}</td>"
        f"<td>{esc(', '.join(w.bases))}</td></tr>"
        for w in reply.windows
    )
    gaps = "".join(
        f"<li{attrs(data_lineage=g.lineage)}>{esc(g.lineage)}: {esc(g.description)}</li>"
        for g in reply.gaps
    )
    body = (
        f"<header><h1>{esc(db.name)}</h1>"
        f'<span class="muted">{esc(db.engine.value)} · {esc(db.uid)}</span>'
        '<a href="/">all databases</a>'
        '<span id="status" class="muted">live</span></header>'
        f'<main id="live"{attrs(data_uid=db.uid, data_now=iso(reply.now))}>'
        f"<p>RPO lag {_lag(reply.rpo_lag_s, 'rpo-lag')} · last log archived "
        f"<span{attrs(id='last-archived', data_time=iso(reply.last_archived_at))}>"
        f"{esc(when(reply.last_archived_at))}</span> · now {esc(when(reply.now))}</p>"
        f"{render_timeline(reply)}"
        '<p class="legend muted"><span><i class="swatch window"></i>restorable window</span>'
        '<span><i class="swatch backup"></i>backup</span>'
        '<span><i class="swatch gap"></i>gap in a log chain</span>'
        '<span><i class="swatch now"></i>now</span></p>'
        "<h2>Restorable windows</h2>"
        + (
            "<table><thead><tr><th>lineage</th><th>after</th><th>time</th><th>up to</th>"
            f"<th>time</th><th>bases</th></tr></thead><tbody>{windows}</tbody></table>"
            if windows
            else '<p class="muted">Nothing is restorable yet: no backup with its logs.</p>'
        )
        + (f'<h2>Gaps</h2><ul class="gaps">{gaps}</ul>' if gaps else "")
        + "</main>"
    )
    return _layout(f"{db.name} · Tidemark", body)


def not_found_page(message: str) -> str:
    body = (
        "<header><h1>Not found</h1></header>"
        f'<main id="live"><p>{esc(message)}</p><p><a href="/">all databases</a></p></main>'
    )
    return _layout("Not found · Tidemark", body, refresh_ms=0)
