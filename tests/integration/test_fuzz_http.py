"""The catalog's HTTP API under hostile paths and query strings, over a real server.

Whatever the request, the answer is a 200 or a 4xx — never a 5xx — and under `/api/` a 4xx is
JSON that names the problem. The server has no static directory (its one script and stylesheet
are inlined), so a traversal has nothing to reach; the tests still check that no answer carries
a file from outside.

The server runs on its own loop in a thread, so hypothesis drives plain blocking requests and
can shrink a failure to the smallest request that causes it.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.catalog.web import HttpServer, start_http
from tests.doubles.catalog_history import RacHistory
from tests.fuzzing import FUZZ, json_values, strings

pytestmark = pytest.mark.integration

UIDS = ("orders", "billing")  # an Oracle and a PostgreSQL database
PARAMETERS = ("time", "scn", "lsn", "lineage", "keep_days")
API_ROUTES = ("check", "restore-plan", "windows", "retention-preview")
TRAVERSALS = (
    "..",
    "..%2f..%2fetc%2fpasswd",
    "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "%2e%2e/%2e%2e/etc/passwd",
    "../../../../etc/passwd",
    "..%5c..%5cwindows",
    "%252e%252e%252f",
    "%c0%ae%c0%ae/",  # overlong UTF-8 dot
    "%00",
    "%ef%bc%8e%ef%bc%8e/etc/passwd",  # fullwidth dots
    "orders%00.json",
    "orders/../billing",
    "/etc/passwd",
    "static/../../etc/passwd",
)
PASSWD = b"root:x:0:0"


@dataclass
class Served:
    server: HttpServer
    loop: asyncio.AbstractEventLoop

    def get(self, target: str) -> tuple[int, str, bytes]:
        """Send `target` exactly as written (it must be ASCII); status, type and body."""
        conn = http.client.HTTPConnection(self.server.host, self.server.port, timeout=10)
        try:
            conn.putrequest("GET", target, skip_accept_encoding=True)
            conn.endheaders()
            response = conn.getresponse()
            return response.status, response.getheader("Content-Type", ""), response.read()
        finally:
            conn.close()


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="catalog-http", daemon=True)
    thread.start()
    history = RacHistory().build()
    try:
        server = asyncio.run_coroutine_threadsafe(
            start_http(history.index, "127.0.0.1", 0), loop
        ).result(timeout=30)
        try:
            yield Served(server, loop)
        finally:
            asyncio.run_coroutine_threadsafe(server.stop(), loop).result(timeout=30)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
        loop.close()


def encoded(text: str) -> str:
    """Any text as it travels in a URL (a lone surrogate as the UTF-8 it cannot be, replaced)."""
    return quote(text.encode("utf-8", "surrogatepass"), safe="")


def values() -> st.SearchStrategy[str]:
    scalars = json_values(max_leaves=1).filter(lambda v: not isinstance(v, list | dict))
    return st.one_of(strings(), scalars.map(str)).map(lambda s: s[:2000])


@st.composite
def hostile_requests(draw: st.DrawFn) -> str:
    segment = st.one_of(
        st.sampled_from(UIDS),
        st.sampled_from(TRAVERSALS),
        strings().map(lambda s: encoded(s[:500])),
    )
    pairs = draw(
        st.lists(
            st.tuples(
                st.one_of(st.sampled_from(PARAMETERS), strings().map(lambda s: s[:100])),
                values(),
            ),
            max_size=4,
        )
    )
    query = "&".join(f"{encoded(name)}={encoded(value)}" for name, value in pairs)
    if draw(st.booleans()):  # sometimes raw: a traversal or separator left undecoded
        query = "&".join(
            f"{encoded(name)}={draw(st.sampled_from(TRAVERSALS))}" for name, _ in pairs[:1]
        )
    uid = draw(segment)
    path = draw(
        st.sampled_from(
            [
                f"/api/databases/{uid}/{draw(st.sampled_from(API_ROUTES))}",
                f"/api/databases/{uid}/{draw(segment)}",
                f"/api/databases/{uid}",
                f"/api/{uid}",
                f"/db/{uid}",
                f"/{uid}",
                f"/db/{uid}/{draw(segment)}",
            ]
        )
    )
    return f"{path}?{query}" if query else path


def assert_answered_well(target: str, status: int, content_type: str, body: bytes) -> None:
    assert status < 500, f"{target} → {status}: {body[:300]!r}"
    assert status == 200 or 400 <= status < 500, f"{target} → {status}"
    assert PASSWD not in body, f"{target} served a file from outside"
    if target.startswith(("/api/", "/healthz")) and not target.startswith("/api/?"):
        assert content_type.startswith("application/json"), f"{target} → {content_type}"
        answer = json.loads(body)
        if status != 200:
            assert answer["error"], target
            assert answer["message"], target


@FUZZ
@given(target=hostile_requests())
def test_hostile_requests_get_a_200_or_a_clear_4xx(served: Served, target: str) -> None:
    assert_answered_well(target, *served.get(target))


@FUZZ
@given(
    uid=st.sampled_from(UIDS),
    name=st.sampled_from(["time", "scn", "lsn"]),
    value=st.one_of(values(), st.datetimes().map(str), st.integers().map(str)),
)
def test_hostile_restore_targets_are_a_clear_400(
    served: Served, uid: str, name: str, value: str
) -> None:
    target = f"/api/databases/{uid}/check?{name}={encoded(value)}"
    status, content_type, body = served.get(target)
    assert_answered_well(target, status, content_type, body)
    if status != 200:
        answer = json.loads(body)
        assert (status, answer["error"]) == (400, "bad_request"), (target, answer)
        assert answer["parameter"] in (name, None), answer


@pytest.mark.parametrize(
    "value",
    [
        "9999-12-31T23:59:59-23:59",  # past year 9999 once in UTC: was a 500
        "0001-01-01T00:00:00%2B23:59",  # before year 1 once in UTC: was a 500
        "2026-01-31T12:00:00",
        "2026-02-30T12:00:00Z",
        "1e999",
        "%00",
        "'; DROP TABLE backups; --",
    ],
)
@pytest.mark.parametrize("route", ["check", "restore-plan"])
def test_bad_times_are_400_naming_time(served: Served, route: str, value: str) -> None:
    status, _, body = served.get(f"/api/databases/orders/{route}?time={quote(value, safe='%')}")
    answer = json.loads(body)
    assert (status, answer["error"], answer["parameter"]) == (400, "bad_request", "time"), answer


@pytest.mark.parametrize("traversal", TRAVERSALS)
@pytest.mark.parametrize("prefix", ["/", "/db/", "/api/databases/", "/api/", "/favicon.ico/"])
def test_traversals_reach_nothing(served: Served, prefix: str, traversal: str) -> None:
    target = prefix + traversal
    status, content_type, body = served.get(target)
    assert_answered_well(target, status, content_type, body)
    assert status == 404 or (status == 400 and prefix.startswith("/api/")), (target, status)


def test_an_overlong_request_line_is_refused_with_a_4xx(served: Served) -> None:
    status, _, body = served.get("/api/databases/orders/check?time=" + "9" * 20_000)
    assert 400 <= status < 500, (status, body[:200])
