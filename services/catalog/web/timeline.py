"""The timeline of one database as inline SVG, drawn from its `WindowsReply`.

Time runs left to right, ending at `now`. Each lineage is a lane; a child lineage hangs under its
parent and a curve joins them at the branch point. On a lane: the span its logs cover (a thin
line), its restorable windows (bands), the backups taken on it (diamonds) and the holes in its
log chains (red marks). A dashed line marks `now`; the distance from the newest window end to it
is the RPO lag.

Every mark carries `data-key` (stable across refreshes, so the page can keep a hovered mark
hovered), `data-*` attributes with its positions and times (what tests and scripts read), and a
`<title>` (what a reader sees on hover). Every string is escaped, even names the contract already
validates: the SVG is markup, and markup is where an unescaped name becomes a script.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from schemas import Lsn, Scn
from schemas.catalog import BackupView, GapView, LineageView, WindowsReply, WindowView
from services.catalog.web.text import attrs, esc, iso, lag_text, pos, when

__all__ = ["render_timeline"]

WIDTH = 1000
GUTTER = 150  # lane labels
RIGHT = 60  # room for the "now" label
TOP = 34  # time axis
LANE = 64
BOTTOM = 12
BAND = 18


@dataclass(frozen=True)
class _Scale:
    start: datetime
    end: datetime

    def x(self, t: datetime | None, default: float | None = None) -> float:
        if t is None:
            return GUTTER if default is None else default
        span = (self.end - self.start).total_seconds()
        share = (t - self.start).total_seconds() / span
        return round(GUTTER + min(1.0, max(0.0, share)) * (WIDTH - GUTTER - RIGHT), 2)


def _opt(position: Scn | Lsn | None) -> str | None:
    return None if position is None else str(position)


def _lane_order(lineages: list[LineageView]) -> list[LineageView]:
    """Parents before children, siblings by when they began: a depth-first walk of the tree."""
    known = {lineage.key for lineage in lineages}
    children: dict[str | None, list[LineageView]] = {}
    for lineage in lineages:
        parent = lineage.parent if lineage.parent in known else None
        children.setdefault(parent, []).append(lineage)
    ordered: list[LineageView] = []

    def visit(parent: str | None) -> None:
        for child in sorted(
            children.get(parent, []),
            key=lambda c: (c.branch_at.value if c.branch_at is not None else -1, c.key),
        ):
            if child not in ordered:
                ordered.append(child)
                visit(child.key)

    visit(None)
    # A parent cycle would hide lineages from the walk; draw them rather than drop them.
    ordered.extend(lineage for lineage in lineages if lineage not in ordered)
    return ordered


def _scale(reply: WindowsReply) -> _Scale:
    times = [
        t
        for t in (
            *(lin.first_time for lin in reply.lineages),
            *(w.start_time for w in reply.windows),
            *(b.completed_at for b in reply.backups),
            *(g.start_time for g in reply.gaps),
        )
        if t is not None and t <= reply.now
    ]
    start = min(times, default=reply.now - timedelta(hours=1))
    span = max(reply.now - start, timedelta(minutes=1))
    return _Scale(start - span * 0.03, reply.now)


def _tick_format(span: timedelta) -> str:
    if span <= timedelta(minutes=10):
        return "%H:%M:%S"
    if span <= timedelta(days=2):
        return "%H:%M"
    return "%m-%d %H:%M"


def _axis(scale: _Scale, height: int) -> list[str]:
    span = scale.end - scale.start
    fmt = _tick_format(span)
    out = ['<g class="axis">']
    for i in range(5):  # the sixth tick would be `now`, which has its own label
        t = scale.start + span * (i / 5)
        x = scale.x(t)
        out.append(
            f'<line{attrs(x1=x, x2=x, y1=TOP - 6, y2=height - BOTTOM)} class="grid"/>'
            f'<text{attrs(x=x, y=TOP - 12)} text-anchor="middle">{esc(t.strftime(fmt))}</text>'
        )
    out.append("</g>")
    return out


def _window(
    w: WindowView, y: float, scale: _Scale, lane: LineageView, floor: float | None = None
) -> str:
    # A child lineage's window starts, for a reader, at its branch point: its base backup is
    # older (it was taken on the parent), and a band from there looks older than the restore.
    x1 = max(scale.x(w.start_time or lane.first_time), floor or 0.0)
    x2 = max(scale.x(w.end_time or lane.last_time, default=x1), x1 + 2)
    title = (
        f"restorable window on {w.lineage}\n"
        f"from {pos(w.start)} (exclusive) · {when(w.start_time)}\n"
        f"to {pos(w.end)} · {when(w.end_time)}\n"
        f"bases: {', '.join(w.bases) or '—'}"
    )
    return (
        f"<rect{attrs(x=x1, y=y - BAND / 2, width=round(x2 - x1, 2), height=BAND)}"
        f' class="window" tabindex="0"'
        f"{attrs(data_key=f'window:{w.lineage}:{w.start}', data_lineage=w.lineage)}"
        f"{attrs(data_start=str(w.start), data_end=str(w.end))}"
        f"{attrs(data_start_time=iso(w.start_time), data_end_time=iso(w.end_time))}"
        f"{attrs(data_bases=' '.join(w.bases))}>"
        f"<title>{esc(title)}</title></rect>"
    )


def _unprotected(reply: WindowsReply, ys: dict[str, float], scale: _Scale) -> list[str]:
    """The stretch from the newest restorable moment to now: what a failure now would lose."""
    timed = [w for w in reply.windows if w.end_time is not None and w.lineage in ys]
    if not timed:
        return []
    newest = max(timed, key=lambda w: (w.end_time, w.end.value))
    assert newest.end_time is not None
    x1, x2 = scale.x(newest.end_time), scale.x(reply.now)
    if x2 <= x1:
        return []
    y = ys[newest.lineage]
    title = (
        f"not restorable yet: from {when(newest.end_time)} to now "
        f"(RPO lag {lag_text(reply.rpo_lag_s)})"
    )
    return [
        f"<rect{attrs(x=x1, y=y - BAND / 2, width=round(x2 - x1, 2), height=BAND)}"
        f' class="unprotected"'
        f"{attrs(data_key='unprotected', data_lineage=newest.lineage)}"
        f"{attrs(data_start_time=iso(newest.end_time), data_end_time=iso(reply.now))}>"
        f"<title>{esc(title)}</title></rect>"
    ]


def _backup(b: BackupView, y: float, scale: _Scale) -> str:
    x = scale.x(b.completed_at)
    r = 7
    title = (
        f"backup {b.backup_id} ({b.kind}) on {b.lineage}\n"
        f"start {pos(b.start)} · consistent at {pos(b.consistent_at)}\n"
        f"completed {when(b.completed_at)}"
    )
    return (
        f'<g class="backup" tabindex="0"'
        f"{attrs(data_key=f'backup:{b.backup_id}', data_backup_id=b.backup_id)}"
        f"{attrs(data_lineage=b.lineage, data_kind=b.kind)}"
        f"{attrs(data_consistent_at=str(b.consistent_at), data_completed_at=iso(b.completed_at))}>"
        f"<title>{esc(title)}</title>"
        f"<path{attrs(d=f'M{x} {y - r}L{x + r} {y}L{x} {y + r}L{x - r} {y}Z')}/></g>"
    )


def _gap(g: GapView, y: float, scale: _Scale, reply: WindowsReply, lane: LineageView) -> str:
    # A gap's own time is when its last log before the hole ended; without it, the window the
    # gap closes is the best estimate, then the lane's end.
    at = g.start_time or next(
        (w.end_time for w in reply.windows if w.lineage == g.lineage and w.end == g.start),
        lane.last_time,
    )
    x = scale.x(at)
    title = (
        f"{g.description} on {g.lineage}\n"
        f"missing from {pos(g.start)} to {pos(g.end)}\n"
        f"last log before it ended {when(g.start_time)}"
    )
    h = LANE / 2 - 6
    return (
        f'<g class="gap" tabindex="0"'
        f"{attrs(data_key=f'gap:{g.lineage}:{g.thread}:{g.start}', data_lineage=g.lineage)}"
        f"{attrs(data_thread=g.thread, data_after_sequence=g.after_sequence)}"
        f"{attrs(data_before_sequence=g.before_sequence)}"
        f"{attrs(data_start=str(g.start), data_end=_opt(g.end))}>"
        f"<title>{esc(title)}</title>"
        f"<line{attrs(x1=x, x2=x, y1=y - h, y2=y + h)}/>"
        f"<path{attrs(d=f'M{x - 6} {y - h - 8}L{x + 6} {y - h - 8}L{x} {y - h}Z')}/>"
        f"<text{attrs(x=x + 6, y=y + h)}>T{esc(g.thread)}</text></g>"
    )


def _branch_time(child: LineageView, reply: WindowsReply) -> datetime | None:
    """When the parent passed the branch point: interpolated inside the parent's window that
    holds it (positions advance roughly evenly between two known times), else the child's
    first log, the closest time the reply gives."""
    at = child.branch_at
    for w in reply.windows:
        if at is None or w.lineage != child.parent or w.start_time is None or w.end_time is None:
            continue
        if w.start.value < at.value <= w.end.value:
            share = (at.value - w.start.value) / (w.end.value - w.start.value)
            return w.start_time + (w.end_time - w.start_time) * share
    return child.first_time


def _branch(
    child: LineageView, parent_y: float, y: float, scale: _Scale, reply: WindowsReply
) -> str:
    x0 = scale.x(_branch_time(child, reply), default=scale.x(child.first_time))
    x1 = max(scale.x(child.first_time, default=x0), x0 + 8)
    title = (
        f"{child.key} branches from {child.parent} at {pos(child.branch_at)}"
        f"\nfirst log on {child.key} {when(child.first_time)}"
    )
    bend = (x1 - x0) / 2
    return (
        f'<g class="branch"{attrs(data_key=f"branch:{child.key}", data_parent=child.parent)}'
        f"{attrs(data_child=child.key, data_branch_at=_opt(child.branch_at))}>"
        f"<title>{esc(title)}</title>"
        f"<path{attrs(d=f'M{x0} {parent_y}C{x0 + bend} {parent_y} {x1 - bend} {y} {x1} {y}')}/>"
        f"<circle{attrs(cx=x0, cy=parent_y, r=3)}/></g>"
    )


def _lane_title(lane: LineageView) -> str:
    origin = (
        f"branched from {lane.parent} at {pos(lane.branch_at)}" if lane.parent else "root lineage"
    )
    logs = f"logs from {when(lane.first_time)} to {when(lane.last_time)}"
    return f"lineage {lane.key}, {origin}\n{logs}"


def render_timeline(reply: WindowsReply) -> str:
    """The `<svg>` element for one database."""
    lanes = _lane_order(reply.lineages)
    height = TOP + LANE * max(1, len(lanes)) + BOTTOM
    scale = _scale(reply)
    ys = {lane.key: TOP + LANE * i + LANE / 2 for i, lane in enumerate(lanes)}
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" id="timeline" role="img"'
        f"{attrs(viewBox=f'0 0 {WIDTH} {height}', data_now=iso(reply.now))}"
        f"{attrs(aria_label=f'restorable history of {reply.database.name}')}>",
        *_axis(scale, height),
    ]
    for lane in lanes:
        y = ys[lane.key]
        first, last = scale.x(lane.first_time), scale.x(lane.last_time, default=GUTTER)
        out.append(
            f'<g class="lane"{attrs(data_key=f"lane:{lane.key}", data_lineage=lane.key)}'
            f"{attrs(data_parent=lane.parent, data_branch_at=_opt(lane.branch_at))}>"
            f"<title>{esc(_lane_title(lane))}</title>"
            f'<text class="lane-label"{attrs(x=8, y=y - 4)}>{esc(lane.key)}</text>'
            f'<text class="lane-note"{attrs(x=8, y=y + 12)}>'
            f"{esc(f'from {lane.parent}' if lane.parent else 'root lineage')}</text>"
            f'<line class="coverage"{attrs(x1=first, x2=max(last, first), y1=y, y2=y)}/></g>'
        )
    by_key = {lane.key: lane for lane in lanes}
    for w in reply.windows:
        if w.lineage in by_key:
            lane = by_key[w.lineage]
            floor = scale.x(_branch_time(lane, reply)) if lane.parent in by_key else None
            out.append(_window(w, ys[w.lineage], scale, lane, floor))
    out.extend(_unprotected(reply, ys, scale))
    # Over the bands, so the point where a branch leaves its parent stays visible.
    for lane in lanes:
        if lane.parent in ys:
            out.append(_branch(lane, ys[lane.parent], ys[lane.key], scale, reply))
    for g in reply.gaps:
        if g.lineage in by_key:
            out.append(_gap(g, ys[g.lineage], scale, reply, by_key[g.lineage]))
    for b in reply.backups:
        if b.lineage in ys:
            out.append(_backup(b, ys[b.lineage], scale))
    x_now = scale.x(reply.now)
    out.append(
        f'<g id="now" class="now" data-key="now"{attrs(data_time=iso(reply.now))}>'
        f"<title>{esc(f'now: {when(reply.now)}; RPO lag {lag_text(reply.rpo_lag_s)}')}</title>"
        f"<line{attrs(x1=x_now, x2=x_now, y1=TOP - 6, y2=height - BOTTOM)}/>"
        f"<text{attrs(x=x_now + 4, y=TOP - 12)}>now</text></g>"
    )
    out.append("</svg>")
    return "".join(out)
