from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from etlcore.demo.api_server import (
    MAX_PER_PAGE,
    ORDERS_PATH,
    DemoApiServer,
    demo_api_token,
    start_demo_api,
)
from etlcore.demo.generate import DEMO_API_TOKEN_DEFAULT, DEMO_BUSINESS_DATES, generate_demo_data

TOKEN = "test-token"
TIMEOUT = 5
NEXT_LINK = re.compile(r'<([^>]+)>;\s*rel="next"')


@pytest.fixture(scope="module")
def orders_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out_dir = tmp_path_factory.mktemp("demo")
    return generate_demo_data(out_dir=out_dir, business_dates=list(DEMO_BUSINESS_DATES)).orders_path


@pytest.fixture(scope="module")
def server(orders_path: Path) -> Iterator[DemoApiServer]:
    with DemoApiServer(orders_path=orders_path, token=TOKEN) as running:
        yield running


@pytest.fixture()
def session() -> Iterator[requests.Session]:
    with requests.Session() as s:
        s.headers["Authorization"] = f"Bearer {TOKEN}"
        yield s


def file_records(orders_path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in orders_path.read_text(encoding="utf-8").splitlines()]


def day_window(day: date) -> dict[str, str]:
    start = datetime.fromisoformat(f"{day.isoformat()}T00:00:00+00:00")
    return {"created_at_min": start.isoformat(), "created_at_max": (start + timedelta(days=1)).isoformat()}


def next_url(response: requests.Response) -> str | None:
    match = NEXT_LINK.search(response.headers.get("Link", ""))
    return match.group(1) if match else None


def fetch_all(session: requests.Session, url: str, params: dict[str, str]) -> tuple[list[dict], int]:
    """Follow rel="next" links from the first page; return every record and the number of pages."""
    response = session.get(url, params=params, timeout=TIMEOUT)
    records, pages = [], 0
    while True:
        response.raise_for_status()
        records += response.json()["orders"]
        pages += 1
        link = next_url(response)
        if link is None:
            return records, pages
        response = session.get(link, timeout=TIMEOUT)


def test_paging_with_link_headers_yields_each_record_of_the_date_once(
    server: DemoApiServer, session: requests.Session, orders_path: Path
) -> None:
    day = DEMO_BUSINESS_DATES[1]
    expected = [r for r in file_records(orders_path) if r["created_at"].startswith(day.isoformat())]

    records, pages = fetch_all(session, server.url + ORDERS_PATH, {**day_window(day), "per_page": "7"})

    assert records == expected  # same records, same (created_at, id) order, none lost or repeated
    assert pages == -(-len(expected) // 7)


def test_next_link_is_an_opaque_cursor_that_only_carries_page_info_and_per_page(
    server: DemoApiServer, session: requests.Session
) -> None:
    params = {**day_window(DEMO_BUSINESS_DATES[0]), "per_page": "100"}
    first = session.get(server.url + ORDERS_PATH, params=params, timeout=TIMEOUT)
    link = next_url(first)
    assert link is not None and link.startswith(server.url + ORDERS_PATH + "?")
    assert set(parse_qs(urlsplit(link).query)) == {"page_info", "per_page"}
    assert parse_qs(urlsplit(link).query)["per_page"] == ["100"]
    assert 'rel="previous"' not in first.headers["Link"]

    second = session.get(link, timeout=TIMEOUT)
    assert second.status_code == 200 and 'rel="previous"' in second.headers["Link"]
    # The demo's exact duplicate straddles this boundary: last record of page 1 == first of page 2.
    assert first.json()["orders"][-1] == second.json()["orders"][0]


def test_last_page_has_no_link_header(server: DemoApiServer, session: requests.Session) -> None:
    params = {**day_window(DEMO_BUSINESS_DATES[2]), "per_page": "250"}
    response = session.get(server.url + ORDERS_PATH, params=params, timeout=TIMEOUT)
    assert response.status_code == 200
    assert 0 < len(response.json()["orders"]) < 250
    assert "Link" not in response.headers


def test_page_info_cannot_be_combined_with_filters(server: DemoApiServer, session: requests.Session) -> None:
    first = session.get(server.url + ORDERS_PATH, params={"per_page": "5"}, timeout=TIMEOUT)
    link = next_url(first)
    assert link is not None
    response = session.get(link, params={"created_at_min": "2026-11-02T00:00:00+00:00"}, timeout=TIMEOUT)
    assert response.status_code == 400
    assert "created_at_min" in response.json()["errors"]


def test_tampered_page_info_is_a_400(server: DemoApiServer, session: requests.Session) -> None:
    response = session.get(server.url + ORDERS_PATH, params={"page_info": "not-a-cursor"}, timeout=TIMEOUT)
    assert response.status_code == 400
    assert "page_info" in response.json()["errors"]


@pytest.fixture()
def edge_server(tmp_path: Path) -> Iterator[DemoApiServer]:
    """Four orders around the midnight between 2026-11-01 and 2026-11-02."""
    stamps = [
        "2026-10-31T23:59:59+00:00",
        "2026-11-01T00:00:00+00:00",
        "2026-11-01T23:59:59+00:00",
        "2026-11-02T00:00:00+00:00",
    ]
    path = tmp_path / "orders.jsonl"
    records = [{"id": f"SO-{i}", "created_at": s, "lines": []} for i, s in enumerate(stamps)]
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    server = start_demo_api(orders_path=path, token=TOKEN)
    yield server
    server.stop()


@pytest.mark.parametrize(
    ("created_at_min", "created_at_max", "expected_ids"),
    [
        ("2026-11-01T00:00:00+00:00", "2026-11-02T00:00:00+00:00", ["SO-1", "SO-2"]),
        # Same instants written in another offset select the same orders.
        ("2026-11-01T01:00:00+01:00", "2026-11-02T01:00:00+01:00", ["SO-1", "SO-2"]),
        ("2026-11-01T00:00:01+00:00", "2026-11-01T23:59:59+00:00", []),
        ("2026-11-01T00:00:00Z", "2026-11-01T00:00:01Z", ["SO-1"]),
    ],
)
def test_window_includes_created_at_min_and_excludes_created_at_max(
    edge_server: DemoApiServer,
    session: requests.Session,
    created_at_min: str,
    created_at_max: str,
    expected_ids: list[str],
) -> None:
    response = session.get(
        edge_server.url + ORDERS_PATH,
        params={"created_at_min": created_at_min, "created_at_max": created_at_max},
        timeout=TIMEOUT,
    )
    assert response.status_code == 200
    assert [o["id"] for o in response.json()["orders"]] == expected_ids


def test_unencoded_plus_in_an_offset_is_still_read_as_plus(
    edge_server: DemoApiServer, session: requests.Session
) -> None:
    # A hand-written URL with a raw '+' (which decodes to a space) must not silently move the window.
    url = f"{edge_server.url}{ORDERS_PATH}?created_at_min=2026-11-01T01:00:00+01:00"
    response = session.get(url, timeout=TIMEOUT)
    assert [o["id"] for o in response.json()["orders"]] == ["SO-1", "SO-2", "SO-3"]


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}]
)
def test_requests_without_the_right_bearer_token_get_401(
    server: DemoApiServer, headers: dict[str, str]
) -> None:
    response = requests.get(server.url + ORDERS_PATH, headers=headers, timeout=TIMEOUT)
    assert response.status_code == 401
    assert response.json() == {"errors": "[API] Invalid API key or access token"}


@pytest.mark.parametrize(
    ("params", "mentions"),
    [
        ({"created_at_min": "yesterday"}, "created_at_min"),
        ({"created_at_max": "2026-13-01T00:00:00+00:00"}, "created_at_max"),
        ({"per_page": "many"}, "per_page"),
        ({"per_page": "0"}, "per_page"),
    ],
)
def test_bad_query_parameters_get_400_with_a_json_error(
    server: DemoApiServer, session: requests.Session, params: dict[str, str], mentions: str
) -> None:
    response = session.get(server.url + ORDERS_PATH, params=params, timeout=TIMEOUT)
    assert response.status_code == 400
    assert response.headers["Content-Type"].startswith("application/json")
    assert mentions in response.json()["errors"]


def test_per_page_above_the_maximum_is_capped(server: DemoApiServer, session: requests.Session) -> None:
    response = session.get(server.url + ORDERS_PATH, params={"per_page": "1000"}, timeout=TIMEOUT)
    assert response.status_code == 200
    assert len(response.json()["orders"]) == MAX_PER_PAGE == 250
    assert "per_page=250" in next_url(response)


def test_per_page_defaults_to_50(server: DemoApiServer, session: requests.Session) -> None:
    response = session.get(server.url + ORDERS_PATH, timeout=TIMEOUT)
    assert len(response.json()["orders"]) == 50


def test_unknown_path_is_a_404(server: DemoApiServer, session: requests.Session) -> None:
    response = session.get(server.url + "/api/v1/customers", timeout=TIMEOUT)
    assert response.status_code == 404
    assert "errors" in response.json()


def test_stop_releases_the_port(orders_path: Path) -> None:
    server = start_demo_api(orders_path=orders_path, token=TOKEN)
    port = server.port
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert requests.get(server.url + ORDERS_PATH, headers=auth, timeout=TIMEOUT).ok
    server.stop()
    with socket.socket() as probe, pytest.raises(OSError):
        probe.settimeout(1)
        probe.connect(("127.0.0.1", port))


def test_token_comes_from_the_environment_and_falls_back_to_the_demo_default() -> None:
    assert demo_api_token({"ETL_DEMO_API_TOKEN": "from-env"}) == ("from-env", True)
    assert demo_api_token({}) == (DEMO_API_TOKEN_DEFAULT, False)
    assert demo_api_token({"ETL_DEMO_API_TOKEN": ""}) == (DEMO_API_TOKEN_DEFAULT, False)
