"""The timeline and pages as markup, no server: every string escaped, the SVG well-formed even
for hostile names, empty catalogs and histories without times; lags written for people."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser

import pytest

from schemas import DatabaseRef, Engine, Scn
from schemas.catalog import (
    BackupView,
    DatabaseSummary,
    GapView,
    LineageView,
    WindowsReply,
    WindowView,
)
from services.catalog.web.pages import database_page, index_page
from services.catalog.web.text import lag_level, lag_text
from services.catalog.web.timeline import render_timeline

pytestmark = pytest.mark.unit
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
SVG = "{http://www.w3.org/2000/svg}"
EVIL = "\"'><script>alert(1)</script>&amp;"


def hostile_reply() -> WindowsReply:
    """Names no validator would pass, built without validation: escaping must not rely on it."""
    t = NOW - timedelta(minutes=30)
    parent, child = f"inc-{EVIL}", f"tl-{EVIL}"
    return WindowsReply.model_construct(
        database=DatabaseRef.model_construct(
            uid=EVIL, engine=Engine.ORACLE, name=EVIL, system_id=None
        ),
        now=NOW,
        lineages=[
            LineageView.model_construct(
                key=parent, parent=None, branch_at=None, first_time=t, last_time=NOW
            ),
            LineageView.model_construct(
                key=child,
                parent=parent,
                branch_at=Scn(value=150),
                first_time=t + timedelta(minutes=10),
                last_time=NOW,
            ),
        ],
        windows=[
            WindowView.model_construct(
                lineage=parent,
                start=Scn(value=100),
                end=Scn(value=200),
                start_time=t,
                end_time=t + timedelta(minutes=20),
                bases=[EVIL],
            )
        ],
        backups=[
            BackupView.model_construct(
                backup_id=EVIL,
                lineage=parent,
                kind=EVIL,
                start=Scn(value=90),
                consistent_at=Scn(value=100),
                completed_at=t,
                manifest_key=None,
            )
        ],
        gaps=[
            GapView.model_construct(
                lineage=parent,
                thread=2,
                after_sequence=5,
                before_sequence=7,
                start=Scn(value=200),
                end=Scn(value=300),
                start_time=None,
                description=EVIL,
            )
        ],
        last_archived_at=NOW,
        rpo_lag_s=12.0,
    )


def parse_svg(text: str) -> ET.Element:
    """Strict XML: raises on any unescaped quote, bracket or ampersand in what we rendered."""
    return ET.fromstring(text)  # noqa: S314 - our own renderer's output, no entities


class Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)


def test_hostile_names_are_escaped_and_the_svg_stays_well_formed() -> None:
    svg = render_timeline(hostile_reply())
    assert "<script" not in svg
    root = parse_svg(svg)
    lanes = root.findall(f"{SVG}g[@class='lane']")
    assert [lane.get("data-lineage") for lane in lanes] == [f"inc-{EVIL}", f"tl-{EVIL}"]
    (window,) = root.findall(f"{SVG}rect[@class='window']")
    assert window.get("data-bases") == EVIL
    (gap,) = root.findall(f"{SVG}g[@class='gap']")
    assert gap.findtext(f"{SVG}title", "").startswith(EVIL)
    (branch,) = root.findall(f"{SVG}g[@class='branch']")
    assert branch.get("data-branch-at") == "150"


def test_hostile_names_do_not_become_markup_in_the_pages() -> None:
    reply = hostile_reply()
    summary = DatabaseSummary.model_construct(
        database=reply.database,
        window_start_time=None,
        window_end_time=None,
        rpo_lag_s=None,
        backups=0,
        gaps=0,
        logs=0,
    )
    for page in (database_page(reply), index_page([summary])):
        parser = Tags()
        parser.feed(page)
        assert parser.tags.count("script") == 1  # the page's own script, nothing injected
        assert "<script>alert" not in page


def test_an_empty_or_timeless_history_still_draws() -> None:
    ref = DatabaseRef(uid="empty", engine=Engine.POSTGRES, name="empty")
    empty = WindowsReply(database=ref, now=NOW, lineages=[], windows=[], backups=[], gaps=[])
    root = parse_svg(render_timeline(empty))
    assert root.findall(f"{SVG}g[@class='lane']") == []
    assert root.find(f"{SVG}g[@id='now']") is not None

    timeless = WindowsReply(
        database=DatabaseRef(uid="ora", engine=Engine.ORACLE, name="ORA"),
        now=NOW,
        lineages=[LineageView(key="inc-1")],
        windows=[WindowView(lineage="inc-1", start=Scn(value=1), end=Scn(value=9))],
        backups=[],
        gaps=[],
    )
    root = parse_svg(render_timeline(timeless))
    (window,) = root.findall(f"{SVG}rect[@class='window']")
    assert float(window.get("width", "0")) >= 2
    assert window.get("data-start-time") is None


def test_a_parent_cycle_still_draws_every_lineage() -> None:
    reply = WindowsReply(
        database=DatabaseRef(uid="ora", engine=Engine.ORACLE, name="ORA"),
        now=NOW,
        lineages=[LineageView(key="a", parent="b"), LineageView(key="b", parent="a")],
        windows=[],
        backups=[],
        gaps=[],
    )
    root = parse_svg(render_timeline(reply))
    assert len(root.findall(f"{SVG}g[@class='lane']")) == 2


@pytest.mark.parametrize(
    ("seconds", "text", "level"),
    [
        (None, "unknown (nothing restorable yet)", "bad"),
        (0.4, "0 s", "ok"),
        (59.6, "1 min 00 s", "ok"),
        (301, "5 min 01 s", "warn"),
        (3661, "1 h 01 min", "bad"),
        (2 * 86400 + 7200, "2 d 2 h", "bad"),
    ],
)
def test_lag_is_written_for_people(seconds: float | None, text: str, level: str) -> None:
    assert (lag_text(seconds), lag_level(seconds)) == (text, level)
