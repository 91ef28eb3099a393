"""The catalog's HTTP JSON API over a real server on a free loopback port: answers, status codes,
and error bodies that say exactly what is wrong."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from services.catalog.index import CatalogIndex
from services.catalog.web import HttpServer, make_app, start_http
from tests.doubles.catalog_history import INC2, RacHistory

pytestmark = pytest.mark.integration


@dataclass
class Api:
    history: RacHistory
    server: HttpServer
    http: aiohttp.ClientSession

    async def get(self, path: str, method: str = "GET") -> tuple[int, Any]:
        # A string URL goes out as written (yarl leaves '+' alone), like a hand-typed curl.
        async with self.http.request(method, self.server.url + path) as response:
            if response.content_type == "application/json":
                return response.status, await response.json()
            return response.status, await response.text()


@pytest.fixture
async def api() -> AsyncIterator[Api]:
    history = RacHistory().build()
    server = await start_http(history.index, "127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession() as http:
            yield Api(history, server, http)
    finally:
        await server.stop()


async def test_healthz_and_database_list(api: Api) -> None:
    assert await api.get("/healthz") == (200, {"status": "ok", "databases": 2})
    status, body = await api.get("/api/databases")
    assert status == 200
    rows = {row["database"]["uid"]: row for row in body["databases"]}
    assert set(rows) == {"orders", "billing"}
    assert rows["orders"]["backups"] == 3
    assert rows["orders"]["gaps"] == 1
    assert rows["orders"]["database"]["engine"] == "oracle"
    assert 25 < rows["orders"]["rpo_lag_s"] < 120
    assert rows["billing"]["window_end_time"].endswith("Z")


async def test_windows_carry_lineages_windows_backups_and_the_gap(api: Api) -> None:
    status, body = await api.get("/api/databases/orders/windows")
    assert status == 200
    assert [(lin["key"], lin["parent"]) for lin in body["lineages"]] == [
        ("inc-1000", None),
        ("inc-2000", "inc-1000"),
    ]
    assert body["lineages"][1]["branch_at"] == {"kind": "scn", "value": 1800}
    assert [(w["lineage"], w["start"]["value"], w["end"]["value"]) for w in body["windows"]] == [
        ("inc-1000", 1120, 1500),
        ("inc-1000", 1700, 2000),
        ("inc-2000", 1800, 2400),
    ]
    assert [b["backup_id"] for b in body["backups"]] == ["B1", "B2", "B3"]
    (gap,) = body["gaps"]
    assert (gap["lineage"], gap["thread"], gap["after_sequence"], gap["before_sequence"]) == (
        "inc-1000",
        2,
        5,
        7,
    )


async def test_postgres_positions_are_lsns_on_the_wire(api: Api) -> None:
    status, body = await api.get("/api/databases/billing/windows")
    assert status == 200
    assert body["windows"][0]["end"] == {"kind": "lsn", "value": "0/C000000"}
    status, body = await api.get("/api/databases/billing/check?lsn=0/5000000")
    assert (status, body["restorable"], body["base"]) == (200, True, "base-1")


async def test_check_by_scn_time_and_lineage(api: Api) -> None:
    status, body = await api.get("/api/databases/orders/check?scn=1300&lineage=inc-1000")
    assert (status, body["restorable"], body["code"], body["base"]) == (200, True, "ok", "B1")

    status, body = await api.get("/api/databases/orders/check?scn=1550&lineage=inc-1000")
    assert (status, body["restorable"], body["code"]) == (200, False, "gap")
    assert "thread 2 sequence 6" in body["reason"]
    assert body["nearest_before"] == {"kind": "scn", "value": 1500}
    assert body["nearest_after"] == {"kind": "scn", "value": 1701}

    # Without lineage=, the current lineage (where the newest log landed).
    status, body = await api.get("/api/databases/orders/check?scn=2300")
    assert (status, body["restorable"], body["lineage"], body["base"]) == (
        200,
        True,
        "inc-2000",
        "B3",
    )

    inside = api.history.time_of(INC2, 2200).isoformat()
    status, body = await api.get(
        "/api/databases/orders/check?time=" + inside.replace("+00:00", "Z")
    )
    assert (status, body["restorable"], body["code"]) == (200, True, "ok")


async def test_restore_plan_and_refusal(api: Api) -> None:
    status, body = await api.get("/api/databases/orders/restore-plan?scn=2300&lineage=inc-2000")
    assert status == 200
    assert body["base"]["backup_id"] == "B3"
    assert "recovery" not in body, "the catalog answers in positions, not RMAN's words"
    assert body["target"]["position"] == {"kind": "scn", "value": 2300}
    assert body["lineage"] == "inc-2000"
    assert {(o["thread"], o["sequence"]) for o in body["objects"]} >= {(1, 3), (2, 5)}

    status, body = await api.get("/api/databases/orders/restore-plan?scn=1550&lineage=inc-1000")
    assert status == 409
    assert body["error"] == "not_restorable"
    assert "thread 2 sequence 6" in body["message"]
    assert body["check"]["code"] == "gap"


async def test_retention_preview(api: Api) -> None:
    status, body = await api.get("/api/databases/orders/retention-preview?keep_days=0.01")
    assert status == 200
    assert body["database"] == "orders"
    assert set(body["delete_backups"]) | set(body["keep_backups"]) == {"B1", "B2", "B3"}


@pytest.mark.parametrize(
    ("query", "parameter", "says"),
    [
        ("", None, "give exactly one target"),
        ("?scn=1&time=2026-01-01T00:00:00Z", None, "got time and scn"),
        ("?scn=1&scn=2", "scn", "scn given 2 times"),
        ("?scn=abc", "scn", "scn must be an integer from 0 to 2^64-1, got 'abc'"),
        ("?scn=-5", "scn", "got '-5'"),
        ("?scn=18446744073709551616", "scn", "scn must be an integer"),
        ("?lsn=0/16B3", "lsn", "orders is a oracle database: its positions are SCNs"),
        ("?time=yesterday", "time", "ISO 8601 timestamp like 2026-01-31T12:00:00Z"),
        ("?time=2026-01-31T12:00:00", "time", "must carry a zone"),
        ("?time=2026-01-31T12:00:00+02:00", "time", "'+' in a URL query means a space"),
        ("?scn=1&lineage=inc-9", "lineage", "orders has no lineage 'inc-9'; it has inc-1000"),
        ("?scn=1&lineage=../x", "lineage", "lineage must be a lineage key"),
        ("?scn=1&at=now", "at", "unknown parameter 'at'"),
    ],
)
async def test_bad_targets_are_400_naming_the_problem(
    api: Api, query: str, parameter: str | None, says: str
) -> None:
    for endpoint in ("check", "restore-plan"):
        status, body = await api.get(f"/api/databases/orders/{endpoint}{query}")
        assert status == 400, body
        assert body["error"] == "bad_request"
        assert body["parameter"] == parameter
        assert says in body["message"]


async def test_scn_on_postgres_is_400(api: Api) -> None:
    status, body = await api.get("/api/databases/billing/check?scn=5")
    assert status == 400
    assert body["message"].startswith("billing is a postgres database: its positions are LSNs")
    status, body = await api.get("/api/databases/billing/check?lsn=16/XYZ")
    assert (status, body["parameter"]) == (400, "lsn")
    assert "not a PostgreSQL LSN" in body["message"]


@pytest.mark.parametrize(
    ("query", "says"),
    [
        ("", "keep_days is required"),
        ("?keep_days=abc", "got 'abc'"),
        ("?keep_days=-1", "from 0 to 36500"),
        ("?keep_days=nan", "got 'nan'"),
        ("?keep_days=1e9", "got '1e9'"),
        ("?keep_days=7&keep_days=8", "keep_days given 2 times"),
        ("?keep_days=7&dry_run=1", "unknown parameter 'dry_run'"),
    ],
)
async def test_bad_keep_days_is_400(api: Api, query: str, says: str) -> None:
    status, body = await api.get(f"/api/databases/orders/retention-preview{query}")
    assert status == 400
    assert says in body["message"]


async def test_windows_takes_no_parameters(api: Api) -> None:
    status, body = await api.get("/api/databases/orders/windows?lineage=inc-1000")
    assert (status, body["parameter"]) == (400, "lineage")


@pytest.mark.parametrize(
    "path",
    [
        "/api/databases/nope/windows",
        "/api/databases/nope/check?scn=1",
        "/api/databases/nope/restore-plan?scn=1",
        "/api/databases/nope/retention-preview?keep_days=1",
    ],
)
async def test_unknown_database_is_404(api: Api, path: str) -> None:
    status, body = await api.get(path)
    assert status == 404
    assert body == {
        "error": "unknown_database",
        "message": "no database 'nope' in the catalog",
        "parameter": None,
    }


async def test_unknown_routes_and_methods_answer_json_under_api(api: Api) -> None:
    status, body = await api.get("/api/nothing-here")
    assert (status, body["error"]) == (404, "not_found")
    status, body = await api.get("/api/databases", method="POST")
    assert (status, body["error"]) == (405, "method_not_allowed")


async def test_pages_are_html_with_a_locked_down_policy(api: Api) -> None:
    async with api.http.get(api.server.url + "/db/orders") as response:
        assert response.status == 200
        assert response.content_type == "text/html"
        csp = response.headers["Content-Security-Policy"]
        assert "default-src 'none'" in csp
        assert "connect-src 'self'" in csp
        assert response.headers["Cache-Control"] == "no-store"
        text = await response.text()
    assert "http://" not in text.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in text
    status, text = await api.get("/db/nope")
    assert status == 404
    assert "no database &#x27;nope&#x27; in the catalog" in text


# -- docs/timeline.md -----------------------------------------------------------------------------

DOCS = Path(__file__).parents[2] / "docs" / "timeline.md"


async def test_docs_error_examples_are_what_the_api_says(api: Api) -> None:
    examples = re.findall(
        r"^\$ curl -s 'http://127\.0\.0\.1:8080(\S+)'\n(.+)$", DOCS.read_text(), flags=re.M
    )
    assert len(examples) >= 5, "docs/timeline.md lost its examples"
    for path, documented in examples:
        status, body = await api.get(path)
        assert body == json.loads(documented), path
        assert status in (400, 404)


def test_docs_route_table_matches_the_app() -> None:
    documented = set(re.findall(r"^\| `GET (/\S*?)(?:\?\S*)?` \|", DOCS.read_text(), flags=re.M))
    served = {
        route.resource.canonical
        for route in make_app(CatalogIndex()).router.routes()
        if route.method == "GET" and route.resource is not None
    }
    assert documented == served - {"/", "/db/{uid}", "/favicon.ico"}


def test_docs_embedding_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    (block,) = re.findall(r"```python\n(.*?)```", DOCS.read_text(), flags=re.DOTALL)
    failures: list[BaseException] = []

    def run() -> None:
        try:
            exec(compile(block, str(DOCS), "exec"), {"__name__": "__doc_example__"})  # noqa: S102
        except BaseException as exc:
            failures.append(exc)

    # Its own thread: the example calls asyncio.run, which must not disturb this test's loop.
    worker = threading.Thread(target=run)
    worker.start()
    worker.join()
    assert not failures, failures
    assert "{'status': 'ok', 'databases': 0}" in capsys.readouterr().out
