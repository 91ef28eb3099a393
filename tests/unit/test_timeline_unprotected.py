"""The timeline page shades what a failure now would lose (the newest window's end to now), and
a timeline opened by a restore draws its band from its branch point, not from its older base."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta

from schemas import DatabaseRef, Engine, Lsn
from schemas.catalog import LineageView, WindowsReply, WindowView
from services.catalog.web.timeline import render_timeline

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
REF = DatabaseRef(uid="orders", engine=Engine.POSTGRES, name="orders", system_id=1)


def _svg(reply: WindowsReply) -> ET.Element:
    return ET.fromstring(render_timeline(reply))  # noqa: S314 - our own renderer's output


def _by_key(svg: ET.Element, key: str) -> ET.Element:
    (found,) = [e for e in svg.iter() if e.get("data-key") == key]
    return found


def _reply() -> WindowsReply:
    t0 = NOW - timedelta(hours=2)
    return WindowsReply(
        database=REF,
        now=NOW,
        lineages=[
            LineageView(key="tl-00000001", first_time=t0, last_time=NOW - timedelta(minutes=50)),
            LineageView(
                key="tl-00000002",
                parent="tl-00000001",
                branch_at=Lsn(value=0x3000000),
                first_time=NOW - timedelta(hours=1),
                last_time=NOW - timedelta(minutes=20),
            ),
        ],
        windows=[
            WindowView(
                lineage="tl-00000001",
                start=Lsn(value=0x1000000),
                end=Lsn(value=0x5000000),
                start_time=t0,
                end_time=NOW - timedelta(minutes=50),
                bases=["b1"],
            ),
            # The restored timeline's window starts at the same (parent's) base backup.
            WindowView(
                lineage="tl-00000002",
                start=Lsn(value=0x1000000),
                end=Lsn(value=0x6000000),
                start_time=t0,
                end_time=NOW - timedelta(minutes=20),
                bases=["b1"],
            ),
        ],
        backups=[],
        gaps=[],
        rpo_lag_s=1200.0,
    )


def test_the_stretch_from_the_newest_restorable_moment_to_now_is_shaded() -> None:
    svg = _svg(_reply())
    stretch = _by_key(svg, "unprotected")
    assert stretch.get("data-lineage") == "tl-00000002"
    assert stretch.get("data-start-time") == "2026-03-01T11:40:00Z"
    now_line = _by_key(svg, "now").find("{http://www.w3.org/2000/svg}line")
    assert now_line is not None
    now_x = float(now_line.get("x1", "0"))
    x, width = float(stretch.get("x", "0")), float(stretch.get("width", "0"))
    assert abs(x + width - now_x) < 0.05
    assert width > 0


def test_a_restored_timeline_is_drawn_from_its_branch_point() -> None:
    svg = _svg(_reply())
    parent = _by_key(svg, f"window:tl-00000001:{Lsn(value=0x1000000)}")
    child = _by_key(svg, f"window:tl-00000002:{Lsn(value=0x1000000)}")
    # The branch (0/3000000) is half-way through the parent's window: the child's band starts
    # there, not at the base backup both windows share.
    parent_x, parent_w = float(parent.get("x", "0")), float(parent.get("width", "0"))
    assert abs(float(child.get("x", "0")) - (parent_x + parent_w / 2)) < 0.5


def test_nothing_is_shaded_without_a_timed_window() -> None:
    reply = _reply().model_copy(update={"windows": []})
    assert not [e for e in _svg(reply).iter() if e.get("data-key") == "unprotected"]
