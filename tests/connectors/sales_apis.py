"""Loopback servers that behave like four commerce APIs: their paging, their filter bounds, their traps.

Each dialect answers from a `Store` of orders the test edits between runs, the way a shop changes between
two extractions. The tests count ids and versions from the store, never from the connector's output.
See /work/shared/notes/sales-api-dialects.md for the behaviours copied here.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

TOKEN = "shpat-or-sk-test-token"
SHOP_ZONE = timezone(timedelta(hours=-5))  # Shopify answers in the shop's zone


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any


@dataclass
class Reply:
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Store:
    """The shop's orders now: id -> {"id", "version", "at" (aware datetime), "status", "fields"}.

    `fields` is the rest of the order's body (line items, customer...), served as it is by the Shopify
    dialect; the other dialects answer ids and times only."""

    orders: dict[int, dict[str, Any]] = field(default_factory=dict)
    history: list[tuple[int, int]] = field(default_factory=list)  # every (id, version) that ever existed
    stale_total_pages: int = 0  # a cache in front of WooCommerce overstating X-WP-TotalPages

    def put(
        self, order_id: int, at: str, *, status: str = "open", fields: dict[str, Any] | None = None
    ) -> None:
        """Create the order, or update it: a new version stamped `at`."""
        version = self.orders.get(order_id, {}).get("version", 0) + 1
        self.orders[order_id] = {
            "id": order_id,
            "version": version,
            "at": _utc(at),
            "status": status,
            "fields": dict(fields or {}),
        }
        self.history.append((order_id, version))

    def between(self, start: str, end: str) -> set[tuple[int, int]]:
        """(id, version) of the orders whose time is in [start, end): what one window must deliver."""
        low, high = _utc(start), _utc(end)
        return {(o["id"], o["version"]) for o in self.orders.values() if low <= o["at"] < high}


def _utc(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _iso_in(text: str) -> datetime:
    return _utc(text.replace("Z", "+00:00"))


def _error(status: int, body: Any) -> Reply:
    return Reply(status, body)


# --- Shopify: GET orders.json, inclusive updated_at_min/max, Link page_info, open orders by default ---------


def shopify(store: Store, request: Request, base: str) -> Reply:
    if request.headers.get("X-Shopify-Access-Token") != TOKEN:
        return _error(401, {"errors": "[API] Invalid API key or access token"})
    query = dict(request.query)
    if "page_info" in query:
        if set(query) - {"page_info", "limit", "fields"}:
            return _error(
                400, {"errors": {"page_info": ["only limit and fields may be sent with page_info"]}}
            )
        saved = json.loads(base64.urlsafe_b64decode(query["page_info"]))
        query, offset = saved["query"], saved["offset"]
        limit = int(request.query.get("limit", saved["limit"]))
    else:
        offset, limit = 0, int(query.get("limit", 50))
    if limit > 250:
        return _error(400, {"errors": {"limit": ["must be at most 250"]}})
    status = query.get("status", "open")  # the trap: without status=any, cancelled orders are not listed
    low = _iso_in(query["updated_at_min"]) if "updated_at_min" in query else None
    high = _iso_in(query["updated_at_max"]) if "updated_at_max" in query else None
    rows = sorted(
        (
            o
            for o in store.orders.values()
            if (status == "any" or o["status"] == status)
            and (low is None or o["at"] >= low)  # "at or after"
            and (high is None or o["at"] <= high)  # "at or before"
        ),
        key=lambda o: o["id"],
    )
    page = rows[offset : offset + limit]
    headers = {}
    if offset + limit < len(rows):
        token = {"query": query, "offset": offset + limit, "limit": limit}
        info = base64.urlsafe_b64encode(json.dumps(token).encode()).decode()
        headers["Link"] = (
            f'<{base}{request.path}?{urlencode({"limit": limit, "page_info": info})}>; rel="next"'
        )
    body = [
        {
            **o["fields"],
            "id": o["id"],
            "version": o["version"],
            "status": o["status"],
            "cancelled_at": o["at"].isoformat(timespec="seconds") if o["status"] == "cancelled" else None,
            "updated_at": o["at"].astimezone(SHOP_ZONE).isoformat(timespec="seconds"),
        }
        for o in page
    ]
    return Reply(body={"orders": body}, headers=headers)


# --- Stripe: GET /v1/charges, created[gte] in Unix seconds, newest first, has_more + starting_after -------


def stripe(store: Store, request: Request, base: str) -> Reply:
    if request.headers.get("Authorization") != f"Bearer {TOKEN}":
        return _error(401, {"error": {"type": "invalid_request_error", "message": "Invalid API Key"}})
    query = request.query
    limit = int(query.get("limit", 10))
    if not 1 <= limit <= 100:
        return _error(400, {"error": {"type": "invalid_request_error", "param": "limit"}})
    bounds = {
        "created[gte]": lambda t, v: t >= v,
        "created[gt]": lambda t, v: t > v,
        "created[lt]": lambda t, v: t < v,
        "created[lte]": lambda t, v: t <= v,
    }
    rows = [
        o
        for o in store.orders.values()
        if all(
            test(int(o["at"].timestamp()), int(query[name])) for name, test in bounds.items() if name in query
        )
    ]
    rows.sort(key=lambda o: (o["at"], o["id"]), reverse=True)  # newest first
    if "starting_after" in query:
        ids = [str(o["id"]) for o in rows]
        after = query["starting_after"]
        if after not in ids:
            return _error(400, {"error": {"type": "invalid_request_error", "param": "starting_after"}})
        rows = rows[ids.index(after) + 1 :]
    page = rows[:limit]
    data = [
        {"id": str(o["id"]), "object": "charge", "created": int(o["at"].timestamp()), "version": o["version"]}
        for o in page
    ]
    return Reply(body={"object": "list", "url": request.path, "has_more": len(rows) > limit, "data": data})


# --- WooCommerce: GET /wp-json/wc/v3/orders, exclusive modified_after, page/per_page, 400 past the end ------


def woocommerce(store: Store, request: Request, base: str) -> Reply:
    expected = "Basic " + base64.b64encode(f"ck_test:{TOKEN}".encode()).decode()
    if request.headers.get("Authorization") != expected:
        return _error(
            401, {"code": "woocommerce_rest_cannot_view", "message": "Sorry", "data": {"status": 401}}
        )
    query = request.query
    # Without dates_are_gmt, a date without an offset is read in the site's time zone (UTC+2 here).
    zone = UTC if query.get("dates_are_gmt") == "true" else timezone(timedelta(hours=2))

    def moment(text: str) -> datetime:
        parsed = datetime.fromisoformat(text)
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=zone)

    low = moment(query["modified_after"]) if "modified_after" in query else None
    high = moment(query["modified_before"]) if "modified_before" in query else None
    rows = sorted(
        (
            o
            for o in store.orders.values()
            if (low is None or o["at"] > low) and (high is None or o["at"] < high)  # WP date_query: exclusive
        ),
        key=lambda o: o["id"],
    )
    per_page, page = int(query.get("per_page", 10)), int(query.get("page", 1))
    if per_page > 100:
        return _error(400, {"code": "rest_invalid_param", "message": "per_page", "data": {"status": 400}})
    pages = -(-len(rows) // per_page)
    if page > max(pages, 1):
        return _error(
            400,
            {
                "code": "woocommerce_rest_invalid_page_number",
                "message": "The page number requested is larger than the number of pages available.",
                "data": {"status": 400},
            },
        )
    body = [
        {
            "id": o["id"],
            "version": o["version"],
            "status": o["status"],
            "date_modified_gmt": o["at"].astimezone(UTC).replace(tzinfo=None).isoformat(timespec="seconds"),
        }
        for o in rows[(page - 1) * per_page : page * per_page]
    ]
    headers = {"X-WP-Total": str(len(rows)), "X-WP-TotalPages": str(pages + store.stale_total_pages)}
    return Reply(body=body, headers=headers)


# --- Square: POST /v2/orders/search, cursor in the body, same query resent, no keys on an empty answer -----


def square(store: Store, request: Request, base: str) -> Reply:
    if request.method != "POST":
        return _error(405, {"errors": [{"category": "INVALID_REQUEST_ERROR", "code": "METHOD_NOT_ALLOWED"}]})
    if request.headers.get("Authorization") != f"Bearer {TOKEN}" or "Square-Version" not in request.headers:
        return _error(401, {"errors": [{"category": "AUTHENTICATION_ERROR", "code": "UNAUTHORIZED"}]})
    body = dict(request.body or {})
    cursor = body.pop("cursor", None)
    if not body.get("location_ids"):
        return _error(400, {"errors": [{"category": "INVALID_REQUEST_ERROR", "field": "location_ids"}]})
    query = body.get("query", {})
    window = query.get("filter", {}).get("date_time_filter", {}).get("updated_at")
    if window and query.get("sort", {}).get("sort_field") != "UPDATED_AT":
        return _error(400, {"errors": [{"category": "INVALID_REQUEST_ERROR", "field": "sort_field"}]})
    offset = 0
    if cursor is not None:
        saved = json.loads(base64.urlsafe_b64decode(cursor))
        if saved["query"] != body:
            return _error(400, {"errors": [{"category": "INVALID_REQUEST_ERROR", "code": "INVALID_CURSOR"}]})
        offset = saved["offset"]
    low = _iso_in(window["start_at"]) if window and "start_at" in window else None
    high = _iso_in(window["end_at"]) if window and "end_at" in window else None
    rows = sorted(
        (
            o
            for o in store.orders.values()
            if (low is None or o["at"] >= low) and (high is None or o["at"] < high)
        ),
        key=lambda o: (o["at"], o["id"]),
    )
    limit = int(body.get("limit", 500))
    page = rows[offset : offset + limit]
    answer: dict[str, Any] = {}
    if page:  # Square leaves empty lists out
        answer["orders"] = [
            {
                "id": f"sq{o['id']}",
                "version": o["version"],
                "state": o["status"].upper(),
                "updated_at": o["at"]
                .astimezone(UTC)
                .isoformat(timespec="milliseconds")
                .replace("+00:00", "Z"),
            }
            for o in page
        ]
    if offset + limit < len(rows):
        answer["cursor"] = base64.urlsafe_b64encode(
            json.dumps({"query": body, "offset": offset + limit}).encode()
        ).decode()
    return Reply(body=answer)


DIALECTS: dict[str, Callable[[Store, Request, str], Reply]] = {
    "shopify": shopify,
    "stripe": stripe,
    "woocommerce": woocommerce,
    "square": square,
}


@dataclass
class SalesApi:
    url: str
    store: Store
    seen: list[Request]


@contextmanager
def sales_api(dialect: str) -> Iterator[SalesApi]:
    """A loopback server answering like `dialect` from a fresh store."""
    answer = DIALECTS[dialect]
    api = SalesApi(url="", store=Store(), seen=[])
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _serve(self) -> None:
            split = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            query = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
            request = Request(
                self.command, split.path, query, dict(self.headers), json.loads(raw) if raw else None
            )
            with lock:
                api.seen.append(request)
                reply = answer(api.store, request, api.url)
            data = json.dumps(reply.body).encode()
            self.send_response(reply.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        do_GET = _serve  # noqa: N815 - the names http.server calls
        do_POST = _serve  # noqa: N815

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    api.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield api
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
