"""The timeline pages in a real headless Chromium: what the reader sees after the script ran.

The catalog's HTTP server runs on a free loopback port over a `CatalogIndex` fed a realistic
history (an Oracle RAC: two incarnations, two threads, a lost log, three backups; and a
PostgreSQL cluster). The assertions read the rendered DOM and its geometry, not the HTML source,
and every page must load without a script error, a policy violation or a request elsewhere.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from services.catalog.web import HttpServer, start_http
from tests.doubles.catalog_history import RacHistory
from tests.fixtures.browser import CdpPage

pytestmark = pytest.mark.e2e
TIP = "(t => !t.hidden && t.textContent)(document.getElementById('tip'))"


@pytest.fixture
async def served() -> AsyncIterator[tuple[RacHistory, HttpServer]]:
    history = RacHistory().build()
    server = await start_http(history.index, "127.0.0.1", 0)
    try:
        yield history, server
    finally:
        await server.stop()


@pytest.fixture
async def tab(page: CdpPage) -> CdpPage:
    await page.send(
        "Emulation.setDeviceMetricsOverride",
        {"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": False},
    )
    return page


def assert_clean(page: CdpPage, server: HttpServer) -> None:
    """No script errors, no console or CSP complaints, nothing fetched from another origin."""
    assert page.exceptions == []
    assert [line for line in page.console if "error" in line.split(":")[0]] == []
    origin = urlsplit(server.url).netloc
    foreign = [url for url in page.requests if urlsplit(url).netloc not in (origin, "")]
    assert foreign == []


async def test_list_page_rows(served: tuple[RacHistory, HttpServer], tab: CdpPage) -> None:
    _, server = served
    await tab.goto(server.url + "/")
    rows: list[dict[str, Any]] = await tab.evaluate(
        """Array.from(document.querySelectorAll("#live tr.database")).map((tr) => ({
            uid: tr.dataset.uid,
            engine: tr.dataset.engine,
            link: tr.querySelector("a").getAttribute("href"),
            name: tr.querySelector("a").textContent,
            lag: tr.querySelector(".lag").textContent,
            level: tr.querySelector(".lag").classList[1],
            cells: Array.from(tr.cells).map((td) => td.textContent),
        }))"""
    )
    assert [(r["uid"], r["engine"], r["link"], r["name"]) for r in rows] == [
        ("billing", "postgres", "/db/billing", "billing"),
        ("orders", "oracle", "/db/orders", "ORDERS"),
    ]
    billing, orders = rows
    assert re.fullmatch(r"\d+ s", orders["lag"]), orders["lag"]
    assert orders["level"] == "ok"
    assert re.fullmatch(r"15 min \d\d s", billing["lag"]), billing["lag"]
    assert billing["level"] == "warn"
    assert orders["cells"][-3:] == ["3", "1", "31"]  # backups, gaps, logs
    assert_clean(tab, server)


async def test_timeline_renders_lanes_windows_backups_gap_and_lag(
    served: tuple[RacHistory, HttpServer], tab: CdpPage
) -> None:
    _, server = served
    await tab.goto(server.url + "/db/orders")
    drawn: dict[str, Any] = await tab.evaluate(
        """(() => {
        const svg = document.getElementById("timeline");
        const all = (sel) => Array.from(svg.querySelectorAll(sel));
        const box = (el) => { const b = el.getBoundingClientRect();
            return { left: b.left, right: b.right, top: b.top, bottom: b.bottom }; };
        return {
            lanes: all("g.lane").map((g) => ({ lineage: g.dataset.lineage,
                parent: g.dataset.parent || null, box: box(g.querySelector("line")) })),
            windows: all("rect.window").map((r) => ({ ...r.dataset, box: box(r) })),
            backups: all("g.backup").map((g) => ({ ...g.dataset, box: box(g) })),
            gaps: all("g.gap").map((g) => ({ ...g.dataset, box: box(g) })),
            branches: all("g.branch").map((g) => ({ ...g.dataset })),
            now: box(svg.querySelector("#now line")),
            lag: document.getElementById("rpo-lag").textContent,
            lagS: Number(document.getElementById("rpo-lag").dataset.lagS),
        };
        })()"""
    )
    assert [(lane["lineage"], lane["parent"]) for lane in drawn["lanes"]] == [
        ("inc-1000", None),
        ("inc-2000", "inc-1000"),
    ]
    inc1, inc2 = (lane["box"] for lane in drawn["lanes"])
    assert inc2["top"] > inc1["bottom"]  # the child lane hangs below its parent

    windows = [(w["lineage"], w["start"], w["end"], w["bases"]) for w in drawn["windows"]]
    assert windows == [
        ("inc-1000", "1120", "1500", "B1"),
        ("inc-1000", "1700", "2000", "B2"),
        ("inc-2000", "1800", "2400", "B2 B3"),
    ]
    for w in drawn["windows"]:
        assert w["box"]["right"] - w["box"]["left"] > 10, w
        assert w["startTime"].endswith("Z")
        assert w["endTime"].endswith("Z")
        assert w["box"]["right"] <= drawn["now"]["left"] + 1
    # The gap splits inc-1000's window: its mark sits between the two bands.
    (gap,) = drawn["gaps"]
    assert (gap["lineage"], gap["thread"], gap["afterSequence"], gap["beforeSequence"]) == (
        "inc-1000",
        "2",
        "5",
        "7",
    )
    first, second = drawn["windows"][:2]
    gap_x = (gap["box"]["left"] + gap["box"]["right"]) / 2
    assert first["box"]["right"] - 2 <= gap_x <= second["box"]["left"] + 2

    assert [(b["backupId"], b["lineage"]) for b in drawn["backups"]] == [
        ("B1", "inc-1000"),
        ("B2", "inc-1000"),
        ("B3", "inc-2000"),
    ]
    assert drawn["branches"] == [
        {"key": "branch:inc-2000", "parent": "inc-1000", "child": "inc-2000", "branchAt": "1800"}
    ]
    assert re.fullmatch(r"\d+ s", drawn["lag"]), drawn["lag"]
    assert 25 <= drawn["lagS"] < 120
    assert_clean(tab, server)


async def test_hover_shows_positions_and_survives_the_refresh_that_moves_the_window(
    served: tuple[RacHistory, HttpServer], tab: CdpPage
) -> None:
    history, server = served
    await tab.goto(server.url + "/db/orders")
    band = '#timeline rect.window[data-lineage="inc-2000"]'
    centre = await tab.evaluate(
        f"""(() => {{ const b = document.querySelector('{band}').getBoundingClientRect();
            return [b.left + b.width / 2, b.top + b.height / 2]; }})()"""
    )
    await tab.hover(*centre)
    tip = await tab.wait_for(TIP)
    assert "restorable window on inc-2000" in tip
    assert "to SCN 2400" in tip
    assert "bases: B2, B3" in tip

    new_end = history.advance()
    assert new_end == 2500
    await tab.wait_for(f"document.querySelector('{band}').dataset.end === '2500'", timeout=15)
    # Same element key, fresh content: the reader's hover was carried over the swap.
    tip = await tab.evaluate(TIP)
    assert "to SCN 2500" in tip
    assert await tab.evaluate(f"document.querySelector('{band}').classList.contains('hot')")
    assert int(await tab.evaluate("document.body.dataset.refreshes")) >= 1
    assert_clean(tab, server)


async def test_refresh_failure_keeps_the_page_and_says_it_is_stale(
    served: tuple[RacHistory, HttpServer], tab: CdpPage
) -> None:
    _, server = served
    await tab.goto(server.url + "/db/orders")
    await server.stop()
    status = await tab.wait_for(
        "document.getElementById('status').classList.contains('stale') && "
        "document.getElementById('status').textContent",
        timeout=15,
    )
    assert status.startswith("stale since ")
    assert await tab.evaluate("document.querySelectorAll('#timeline rect.window').length") == 3
    assert tab.exceptions == []


@pytest.mark.parametrize(
    ("selector", "says"),
    [
        ("#timeline g.gap line", "gap at thread 2 sequence 6"),
        ("#timeline g.backup[data-backup-id='B3'] path", "backup B3 (full) on inc-2000"),
        ("#timeline g.lane[data-lineage='inc-2000'] text", "branched from inc-1000 at SCN 1800"),
    ],
)
async def test_every_kind_of_mark_has_a_tooltip(
    served: tuple[RacHistory, HttpServer], tab: CdpPage, selector: str, says: str
) -> None:
    _, server = served
    await tab.goto(server.url + "/db/orders")
    centre = await tab.evaluate(
        f"""(() => {{ const b = document.querySelector("{selector}").getBoundingClientRect();
            return [b.left + b.width / 2, b.top + b.height / 2]; }})()"""
    )
    await tab.hover(*centre)
    assert says in await tab.wait_for(TIP)
