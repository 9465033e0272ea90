"""connectors.rest against a real HTTP server on loopback, scripted per test."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from connectors import build_connector
from connectors.errors import ConfigurationError, SourceError
from connectors.records import to_staging_batch
from connectors.rest import BODY_ATTEMPTS, RestConnector, TokenBucket

TOKEN = "s3cr3t-T0KEN-value"


@dataclass
class Seen:
    """One request as the server received it."""

    path: str
    target: str  # path and query exactly as sent
    query: dict[str, list[str]]
    headers: dict[str, str]


@dataclass
class Reply:
    status: int = 200
    body: Any = None  # JSON-encoded unless bytes
    headers: dict[str, str] = field(default_factory=dict)
    declared_length: int | None = None  # a Content-Length larger than the body cuts the body short


@dataclass
class Api:
    """The test's server: `handler` answers each request; `seen` records them."""

    url: str = ""
    handler: Callable[[Seen], Reply] = lambda seen: Reply(404, {"errors": "no handler"})
    seen: list[Seen] = field(default_factory=list)


@pytest.fixture
def api() -> Iterator[Api]:
    state = Api()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
            split = urlsplit(self.path)
            seen = Seen(
                split.path, self.path, parse_qs(split.query, keep_blank_values=True), dict(self.headers)
            )
            state.seen.append(seen)
            reply = state.handler(seen)
            body = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
            self.send_response(reply.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(reply.declared_length or len(body)))
            for name, value in reply.headers.items():
                self.send_header(name, value)
            if reply.declared_length:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)
            if reply.declared_length:
                self.close_connection = True

        def log_message(self, format: str, *args: Any) -> None:  # keep the test output clean
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def make_source(api: Api) -> Iterator[Callable[..., RestConnector]]:
    built: list[RestConnector] = []

    def make(**options: Any) -> RestConnector:
        # Fast retries: the behaviour is the same, the waits are not.
        defaults = {"kind": "rest", "base_url": api.url, "path": "/api/v1/orders", "backoff_factor": 0.01}
        defaults["backoff_jitter"] = 0
        source = build_connector(name=options.pop("name", "orders"), options={**defaults, **options})
        assert isinstance(source, RestConnector)
        built.append(source)
        return source

    yield make
    for source in built:
        source.close()


def records(source: RestConnector, window) -> list[dict]:
    return [record for batch in source.iter_batches(window) for record in batch]


def ids(n: int, start: int = 0) -> list[dict]:
    return [{"id": i} for i in range(start, start + n)]


# --- pagination ------------------------------------------------------------------------------------------


def test_link_header_pagination_follows_next_links_as_given_across_three_pages(api, make_source, window):
    pages = {"1": ids(3), "2": ids(3, 3), "3": ids(1, 6)}

    def handler(seen: Seen) -> Reply:
        page = seen.query.get("page_info", ["1"])[0]
        headers = {}
        if page != "3":
            nxt = f"{api.url}/api/v1/orders?page_info={int(page) + 1}&limit=3"
            headers["Link"] = f'<{api.url}/prev>; rel="previous", <{nxt}>; rel="next"'
        return Reply(body={"orders": pages[page]}, headers=headers)

    api.handler = handler
    source = make_source(
        params={"status": "any", "limit": "3"}, records_path="orders", pagination={"style": "link_header"}
    )

    assert records(source, window) == ids(7)
    assert [s.target for s in api.seen] == [
        "/api/v1/orders?status=any&limit=3",
        "/api/v1/orders?page_info=2&limit=3",  # the next URL alone: the first query is not re-sent
        "/api/v1/orders?page_info=3&limit=3",
    ]


def test_batches_are_batch_size_records_across_page_boundaries(api, make_source, window):
    def handler(seen: Seen) -> Reply:
        page = int(seen.query["page"][0])
        return Reply(body=ids(3, 3 * (page - 1)) if page <= 3 else [])

    api.handler = handler
    source = make_source(batch_size=2, pagination={"style": "page_number"})

    batches = list(source.iter_batches(window))

    assert [len(b) for b in batches] == [2, 2, 2, 2, 1]
    assert [r for b in batches for r in b] == ids(9)


def test_page_number_pagination_stops_when_x_wp_totalpages_is_reached(api, make_source, window):
    def handler(seen: Seen) -> Reply:
        page = int(seen.query["page"][0])
        return Reply(body=ids(2, 2 * page), headers={"X-WP-TotalPages": "3", "X-WP-Total": "6"})

    api.handler = handler
    source = make_source(
        params={"per_page": "2"},
        pagination={"style": "page_number", "total_pages_header": "X-WP-TotalPages", "start": 0},
    )

    assert records(source, window) == ids(6)
    assert [s.query["page"] for s in api.seen] == [["0"], ["1"], ["2"]]  # never asks for a 4th page


def test_page_number_pagination_stops_at_the_first_empty_page(api, make_source, window):
    api.handler = lambda seen: Reply(body={"data": {"items": ids(2) if seen.query["p"] == ["1"] else []}})
    source = make_source(records_path="data.items", pagination={"style": "page_number", "page_param": "p"})

    assert records(source, window) == ids(2)
    assert len(api.seen) == 2


def test_next_link_repeating_a_page_is_a_source_error_not_an_endless_loop(api, make_source, window):
    api.handler = lambda seen: Reply(
        body=ids(1), headers={"Link": f'<{api.url}/api/v1/orders?page_info=x>; rel="next"'}
    )
    source = make_source(pagination={"style": "link_header"})

    with pytest.raises(SourceError, match="repeats .*page_info=x"):
        records(source, window)


def test_next_link_to_another_server_is_not_followed_with_credentials(api, make_source, window, monkeypatch):
    monkeypatch.setenv("API_TOKEN", TOKEN)
    api.handler = lambda seen: Reply(body=ids(1), headers={"Link": '<http://evil.example/steal>; rel="next"'})
    source = make_source(
        pagination={"style": "link_header"}, auth={"type": "bearer", "token_env": "API_TOKEN"}
    )

    with pytest.raises(SourceError, match="another server"):
        records(source, window)
    assert len(api.seen) == 1


# --- request shape ---------------------------------------------------------------------------------------


def test_window_placeholders_are_rendered_into_the_query_string(api, make_source, window):
    api.handler = lambda seen: Reply(body=[])
    source = make_source(
        params={
            "created_at_min": "{window_start}",
            "created_at_max": "{window_end}",
            "created[gte]": "{window_start_epoch}",
            "day": "{date:%Y%m%d}",
            "limit": 250,
        }
    )

    assert records(source, window) == []
    assert api.seen[0].query == {
        "created_at_min": ["2026-11-01T00:00:00+00:00"],  # "+" survives (encoded, not read as a space)
        "created_at_max": ["2026-11-02T00:00:00+00:00"],
        "created[gte]": [str(int(window.start.timestamp()))],
        "day": ["20261101"],
        "limit": ["250"],
    }


def test_records_path_reads_a_nested_list_and_prices_keep_exact_text(api, make_source, window):
    api.handler = lambda seen: Reply(
        body=b'{"data": {"items": [{"id": "A1", "lines": [{"unit_price": 2.950}]}]}}'
    )
    source = make_source(records_path="data.items")

    (batch,) = list(source.iter_batches(window))
    staged = to_staging_batch(
        batch, columns={"price": {"from": "lines.unit_price"}}, explode="lines", source_label="o"
    )

    assert staged.to_pylist() == [{"price": "2.950"}]


def test_static_headers_are_sent(api, make_source, window):
    api.handler = lambda seen: Reply(body=[])
    records(make_source(headers={"Square-Version": "2026-01-22"}), window)
    assert api.seen[0].headers["Square-Version"] == "2026-01-22"


def test_credential_in_static_headers_is_refused(make_source):
    with pytest.raises(ConfigurationError, match="looks like a credential"):
        make_source(headers={"Authorization": "Bearer abc"})


def test_describe_names_method_and_url_without_query_or_secret(make_source, api):
    assert make_source().describe() == f"rest:GET {api.url}/api/v1/orders"


# --- auth ------------------------------------------------------------------------------------------------

AUTH_CASES = {
    "bearer": ({"type": "bearer", "token_env": "API_TOKEN"}, "Authorization", f"Bearer {TOKEN}"),
    "header": (
        {"type": "header", "header": "X-Shopify-Access-Token", "value_env": "API_TOKEN"},
        "X-Shopify-Access-Token",
        TOKEN,
    ),
    "basic": (
        {"type": "basic", "username_env": "API_USER", "password_env": "API_TOKEN"},
        "Authorization",
        "Basic " + base64.b64encode(f"ck_user:{TOKEN}".encode()).decode(),
    ),
}


def auth_checking_server(api: Api, header: str, expected: str) -> None:
    def handler(seen: Seen) -> Reply:
        if seen.headers.get(header) != expected:
            # Like real APIs, echo what was received: the connector must still not show it.
            return Reply(401, {"errors": f"invalid credentials: {seen.headers.get(header)}"})
        return Reply(body={"orders": ids(2)})

    api.handler = handler


@pytest.mark.parametrize("kind", AUTH_CASES)
def test_auth_credentials_from_the_environment_are_sent(kind, api, make_source, window, monkeypatch):
    auth, header, expected = AUTH_CASES[kind]
    monkeypatch.setenv("API_TOKEN", TOKEN)
    monkeypatch.setenv("API_USER", "ck_user")
    auth_checking_server(api, header, expected)

    assert records(make_source(auth=auth, records_path="orders"), window) == ids(2)


@pytest.mark.parametrize("kind", AUTH_CASES)
def test_rejected_credentials_give_a_clear_error_that_never_shows_the_secret(
    kind, api, make_source, window, monkeypatch
):
    auth, header, expected = AUTH_CASES[kind]
    monkeypatch.setenv("API_TOKEN", TOKEN)
    monkeypatch.setenv("API_USER", "ck_user")
    auth_checking_server(api, header, expected + "-but-wrong")

    with pytest.raises(SourceError) as caught:
        records(make_source(auth=auth, records_path="orders"), window)

    message = str(caught.value)
    assert f"source 'orders': GET {api.url}/api/v1/orders answered HTTP 401" in message
    assert "invalid credentials" in message
    assert TOKEN not in message
    assert base64.b64encode(f"ck_user:{TOKEN}".encode()).decode() not in message
    assert len(api.seen) == 1  # a 401 is not retried


def test_missing_secret_variable_is_a_configuration_error_naming_the_variable(
    make_source, window, monkeypatch
):
    monkeypatch.delenv("ETL_TEST_MISSING_TOKEN", raising=False)
    source = make_source(auth={"type": "bearer", "token_env": "ETL_TEST_MISSING_TOKEN"})

    with pytest.raises(ConfigurationError, match="environment variable ETL_TEST_MISSING_TOKEN .* is not set"):
        records(source, window)


def test_incomplete_auth_table_is_a_configuration_error(make_source):
    with pytest.raises(ConfigurationError, match="needs auth.value_env"):
        make_source(auth={"type": "header", "header": "X-Api-Key"})


def test_secret_looking_query_parameters_are_masked_in_errors(api, make_source, window):
    api.handler = lambda seen: Reply(403, {"error": "forbidden"})
    source = make_source(params={"api_key": "k3y-in-query", "status": "any"})

    with pytest.raises(SourceError) as caught:
        records(source, window)

    assert "k3y-in-query" not in str(caught.value)
    assert "api_key=***&status=any" in str(caught.value)


# --- retries and faults ----------------------------------------------------------------------------------


def scripted(api: Api, replies: list[Reply]) -> None:
    """Answer with `replies` in order, then repeat the last one."""
    answers = iter(replies)
    last: list[Reply] = []

    def handler(seen: Seen) -> Reply:
        reply = next(answers, None) or last[0]
        last[:] = [reply]
        return reply

    api.handler = handler


def test_429_with_fractional_retry_after_is_waited_out_and_retried(api, make_source, window):
    scripted(
        api, [Reply(429, {"errors": "slow down"}, {"Retry-After": "0.3"}), Reply(body={"orders": ids(2)})]
    )
    source = make_source(records_path="orders", backoff_factor=0)

    started = time.monotonic()
    assert records(source, window) == ids(2)
    assert time.monotonic() - started >= 0.3
    assert len(api.seen) == 2


def test_429_without_retry_after_is_retried_with_backoff(api, make_source, window):
    scripted(
        api, [Reply(429, {"errors": "slow down"}), Reply(429, {"errors": "slow down"}), Reply(body=ids(1))]
    )

    assert records(make_source(), window) == ids(1)
    assert len(api.seen) == 3


def test_server_errors_are_retried_until_the_answer_succeeds(api, make_source, window):
    scripted(api, [Reply(500, {"error": "boom"}), Reply(503, {"error": "busy"}), Reply(body=ids(3))])

    assert records(make_source(), window) == ids(3)
    assert len(api.seen) == 3


def test_server_error_that_persists_fails_after_the_retry_budget_naming_url_and_status(
    api, make_source, window
):
    scripted(api, [Reply(500, {"error": "database on fire"})])
    source = make_source(params={"status": "any"}, max_retries=2)

    with pytest.raises(SourceError) as caught:
        records(source, window)

    message = str(caught.value)
    assert f"GET {api.url}/api/v1/orders?status=any answered HTTP 500" in message
    assert "after 2 retries" in message
    assert "database on fire" in message
    assert len(api.seen) == 3  # the first try and two retries


def test_unreachable_server_is_a_source_error(make_source, window):
    source = make_source(base_url="http://127.0.0.1:9", max_retries=1)  # discard port: nobody listens

    with pytest.raises(SourceError, match=r"GET http://127.0.0.1:9/api/v1/orders failed .*Connection"):
        records(source, window)


def test_malformed_json_is_fetched_again_and_then_a_source_error_naming_the_url(api, make_source, window):
    scripted(api, [Reply(body=b'{"orders": [{"id": 1}')])

    with pytest.raises(SourceError) as caught:
        records(make_source(records_path="orders"), window)

    assert f"GET {api.url}/api/v1/orders failed {BODY_ATTEMPTS} times: HTTP 200 with malformed JSON" in str(
        caught.value
    )
    assert len(api.seen) == BODY_ATTEMPTS


def test_malformed_json_once_is_transient_and_recovers(api, make_source, window):
    scripted(api, [Reply(body=b"<html>proxy hiccup</html>"), Reply(body={"orders": ids(1)})])

    assert records(make_source(records_path="orders"), window) == ids(1)


def test_body_cut_short_is_fetched_again(api, make_source, window):
    full = json.dumps({"orders": ids(2)}).encode()
    scripted(api, [Reply(body=full[:10], declared_length=len(full)), Reply(body={"orders": ids(2)})])

    assert records(make_source(records_path="orders"), window) == ids(2)
    assert len(api.seen) == 2


def test_records_path_that_is_not_a_list_is_a_source_error(api, make_source, window):
    scripted(api, [Reply(body={"orders": {"id": 1}, "count": 1})])

    with pytest.raises(SourceError, match=r"records_path 'orders' is a dict, not a list"):
        records(make_source(records_path="orders"), window)


def test_absent_records_path_lists_the_keys_that_are_there(api, make_source, window):
    scripted(api, [Reply(body={"object": "list", "data": []})])

    with pytest.raises(
        SourceError, match=r"records_path 'orders' is absent, not a list \(top-level keys: 'object', 'data'\)"
    ):
        records(make_source(records_path="orders"), window)


def test_redirect_is_reported_not_followed(api, make_source, window):
    scripted(api, [Reply(301, {}, {"Location": "https://elsewhere.example/api"})])

    with pytest.raises(SourceError, match="HTTP 301, a redirect to https://elsewhere.example/api"):
        records(make_source(), window)


def test_misspelt_option_is_a_configuration_error(make_source):
    with pytest.raises(ConfigurationError, match="unknown option recordspath"):
        make_source(recordspath="orders")


# --- cursor and offset pagination ------------------------------------------------------------------------


def test_body_cursor_pagination_resends_the_query_with_the_next_cursor_until_none(api, make_source, window):
    pages = {"": (ids(2), "c2"), "c2": (ids(2, 2), "c3"), "c3": ([], None)}  # empty last page

    def handler(seen: Seen) -> Reply:
        records_, cursor = pages[seen.query.get("cursor", [""])[0]]
        return Reply(body={"orders": records_, **({"cursor": cursor} if cursor else {})})

    api.handler = handler
    source = make_source(
        params={"limit": "2"}, records_path="orders", pagination={"style": "cursor", "cursor_path": "cursor"}
    )

    assert records(source, window) == ids(4)
    assert [s.query for s in api.seen] == [
        {"limit": ["2"]},
        {"limit": ["2"], "cursor": ["c2"]},  # the same query again, plus the cursor (Square)
        {"limit": ["2"], "cursor": ["c3"]},
    ]


def test_nested_cursor_path_and_custom_param_and_null_cursor_ends(api, make_source, window):
    def handler(seen: Seen) -> Reply:
        after = seen.query.get("page_token", [None])[0]
        return Reply(
            body={"data": ids(1, 0 if after is None else 1), "meta": {"next": None if after else "t1"}}
        )

    api.handler = handler
    source = make_source(
        records_path="data",
        pagination={"style": "cursor", "cursor_path": "meta.next", "cursor_param": "page_token"},
    )

    assert records(source, window) == ids(2)
    assert len(api.seen) == 2


def test_stripe_has_more_pagination_sends_starting_after_the_last_object_id(api, make_source, window):
    objects = [{"id": f"ch_{i}"} for i in range(5)]

    def handler(seen: Seen) -> Reply:
        after = seen.query.get("starting_after", [None])[0]
        start = 0 if after is None else int(after.removeprefix("ch_")) + 1
        page = objects[start : start + 2]
        return Reply(body={"object": "list", "data": page, "has_more": start + 2 < len(objects)})

    api.handler = handler
    source = make_source(
        params={"limit": "2"},
        records_path="data",
        pagination={"style": "cursor", "has_more_path": "has_more"},
    )

    assert records(source, window) == objects
    assert [s.query.get("starting_after") for s in api.seen] == [None, ["ch_1"], ["ch_3"]]
    assert all(s.query["limit"] == ["2"] for s in api.seen)


def test_stripe_style_empty_page_with_has_more_still_true_stops(api, make_source, window):
    api.handler = lambda seen: Reply(
        body={"data": [] if "starting_after" in seen.query else ids(2), "has_more": True}
    )
    source = make_source(records_path="data", pagination={"style": "cursor", "has_more_path": "has_more"})

    assert records(source, window) == ids(2)
    assert len(api.seen) == 2


def test_repeated_cursor_is_a_source_error_not_an_endless_loop(api, make_source, window):
    api.handler = lambda seen: Reply(body={"orders": ids(1), "cursor": "same"})
    source = make_source(records_path="orders", pagination={"style": "cursor"})

    with pytest.raises(SourceError, match="cursor 'same' was already used"):
        records(source, window)


def test_offset_pagination_walks_offsets_until_an_empty_last_page(api, make_source, window):
    def handler(seen: Seen) -> Reply:
        offset, limit = int(seen.query["offset"][0]), int(seen.query["limit"][0])
        return Reply(body=ids(6)[offset : offset + limit])

    api.handler = handler
    source = make_source(params={"status": "any"}, pagination={"style": "offset", "limit": 3})

    assert records(source, window) == ids(6)
    assert [(s.query["offset"], s.query["limit"]) for s in api.seen] == [
        (["0"], ["3"]),
        (["3"], ["3"]),
        (["6"], ["3"]),  # the empty page that ends it
    ]


def test_offset_pagination_stops_on_a_short_page_or_at_the_total(api, make_source, window):
    def handler(seen: Seen) -> Reply:
        skip, top = int(seen.query["skip"][0]), int(seen.query["top"][0])
        return Reply(body={"items": ids(7)[skip : skip + top], "meta": {"total": 7}})

    api.handler = handler
    short = make_source(
        records_path="items",
        pagination={"style": "offset", "offset_param": "skip", "limit_param": "top", "limit": 3},
    )
    assert records(short, window) == ids(7)
    assert len(api.seen) == 3  # 3 + 3 + a short page of 1

    api.seen.clear()
    api.handler = lambda seen: Reply(body={"items": ids(2, int(seen.query["offset"][0])), "total": 4})
    totalled = make_source(
        records_path="items", pagination={"style": "offset", "limit": 2, "total_path": "total"}
    )
    assert records(totalled, window) == ids(4)
    assert len(api.seen) == 2  # the total says there is no third page


# --- incremental -----------------------------------------------------------------------------------------

INCREMENTAL = {
    "param": "updated_at_min",
    "cursor_field": "updated_at",
    "lookback_seconds": 3600,
    "end_param": "updated_at_max",
}


def stamped(*stamps: str) -> list[dict]:
    return [{"id": i, "updated_at": stamp} for i, stamp in enumerate(stamps)]


def test_incremental_filter_is_the_saved_watermark_minus_lookback_up_to_the_window_end(
    api, make_source, window
):
    api.handler = lambda seen: Reply(body=[])
    source = make_source(incremental=INCREMENTAL)
    source.state = source.next_state = {"watermark": "2026-11-01T10:30:00+00:00"}

    records(source, window)

    assert api.seen[0].query == {
        "updated_at_min": ["2026-11-01T09:30:00+00:00"],
        "updated_at_max": ["2026-11-02T00:00:00+00:00"],
    }


def test_incremental_first_run_starts_from_initial_and_without_initial_reads_everything(
    api, make_source, window
):
    api.handler = lambda seen: Reply(body=[])
    records(make_source(incremental={**INCREMENTAL, "initial": "2020-01-01T00:00:00Z"}), window)
    records(make_source(incremental={"param": "since", "cursor_field": "updated_at"}), window)

    assert api.seen[0].query["updated_at_min"] == ["2020-01-01T00:00:00+00:00"]  # no lookback on initial
    assert api.seen[1].query == {}


def test_next_state_is_the_greatest_cursor_value_across_pages_and_never_goes_down(api, make_source, window):
    pages = {
        "1": stamped("2026-11-01T08:00:00Z", "2026-11-01T12:00:00+01:00"),  # 11:00 UTC
        "2": stamped("2026-11-01T10:00:00Z", "2026-11-01T09:00:00Z"),
        "3": [],
    }
    api.handler = lambda seen: Reply(body=pages[seen.query["page"][0]])
    source = make_source(incremental=INCREMENTAL, pagination={"style": "page_number"})

    records(source, window)
    assert source.next_state["watermark"] == "2026-11-01T11:00:00+00:00"

    older = make_source(incremental=INCREMENTAL, pagination={"style": "page_number"})
    older.state = older.next_state = {"watermark": "2026-11-05T00:00:00+00:00"}
    records(older, window)
    assert older.next_state["watermark"] == "2026-11-05T00:00:00+00:00"  # late, older records: kept


def test_epoch_watermark_is_sent_and_saved_as_unix_seconds(api, make_source, window):
    api.handler = lambda seen: Reply(body={"data": [{"id": "a", "created": 1793500000}, {"id": "b"}]})
    source = make_source(
        records_path="data",
        incremental={
            "param": "created[gte]",
            "cursor_field": "created",
            "format": "epoch",
            "lookback_seconds": 60,
        },
    )
    source.state = source.next_state = {"watermark": 1793400000}

    records(source, window)

    assert api.seen[0].query == {"created[gte]": ["1793399940"]}
    assert source.next_state["watermark"] == 1793500000


def test_unreadable_cursor_value_is_a_source_error_naming_request_record_and_value(api, make_source, window):
    api.handler = lambda seen: Reply(body=[{"id": "A7", "updated_at": "yesterday"}])

    with pytest.raises(SourceError) as caught:
        records(make_source(incremental=INCREMENTAL), window)

    message = str(caught.value)
    assert "source 'orders': GET " in message and "record 0 (id 'A7')" in message
    assert "updated_at = 'yesterday', not an ISO 8601 instant" in message


def test_incremental_without_a_cursor_field_is_a_configuration_error(make_source):
    with pytest.raises(ConfigurationError, match="incremental.cursor_field is required"):
        make_source(incremental={"param": "updated_at_min"})


# --- client-side rate limit ------------------------------------------------------------------------------


def test_rate_limit_spaces_requests_to_the_configured_rate(api, make_source, window):
    api.handler = lambda seen: Reply(body=ids(1) if int(seen.query["page"][0]) <= 4 else [])
    source = make_source(rate_limit_per_second=20, pagination={"style": "page_number"})

    started = time.monotonic()
    assert records(source, window) == ids(1) * 4
    elapsed = time.monotonic() - started

    assert len(api.seen) == 5
    assert elapsed >= 0.19  # 4 gaps of 1/20 s after the first request


def test_token_bucket_waits_only_for_the_missing_fraction_of_a_token():
    now = [100.0]
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        now[0] += seconds

    bucket = TokenBucket(4, clock=lambda: now[0], sleep=sleep)
    bucket.acquire()  # the first request goes at once
    now[0] += 0.1  # 0.4 of a token refilled
    bucket.acquire()
    now[0] += 1.0  # idle: refills to capacity 1, not more (no burst after idling)
    bucket.acquire()
    bucket.acquire()

    assert waits == pytest.approx([0.15, 0.25])
