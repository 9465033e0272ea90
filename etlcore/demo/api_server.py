"""The demo sales API: a real HTTP server on loopback that serves `orders.jsonl` like Shopify's REST API.

`GET /api/v1/orders?created_at_min=..&created_at_max=..&per_page=..` returns `{"orders": [...]}` for
`created_at_min <= created_at < created_at_max`, ordered by (created_at, id). The next page is given only
by a `Link: <...page_info=..>; rel="next"` header holding an opaque cursor; the last page has none. A request
that carries `page_info` may only add `per_page` (as on Shopify). Every request needs
`Authorization: Bearer <token>`. Errors are `{"errors": "..."}` with 400, 401 or 404.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from etlcore.demo.generate import DEMO_API_TOKEN_DEFAULT

__all__ = [
    "DEFAULT_PER_PAGE",
    "MAX_PER_PAGE",
    "ORDERS_PATH",
    "TOKEN_ENV",
    "DemoApiServer",
    "demo_api_token",
    "start_demo_api",
]

logger = logging.getLogger(__name__)

ORDERS_PATH = "/api/v1/orders"
DEFAULT_PER_PAGE = 50
MAX_PER_PAGE = 250
TOKEN_ENV = "ETL_DEMO_API_TOKEN"
UNAUTHORIZED_MESSAGE = "[API] Invalid API key or access token"
_FILTER_PARAMS = ("created_at_min", "created_at_max")
_POLL_INTERVAL = 0.05  # how soon serve_forever notices stop(); the default 0.5 s slows every test teardown


def demo_api_token(environ: Mapping[str, str] | None = None) -> tuple[str, bool]:
    """The token the demo server requires and whether it came from ETL_DEMO_API_TOKEN.

    The fallback is a published constant: the server only ever listens on loopback and serves demo data.
    """
    env = os.environ if environ is None else environ
    token = env.get(TOKEN_ENV, "")
    if token:
        return token, True
    return DEMO_API_TOKEN_DEFAULT, False


@dataclass(frozen=True)
class _Order:
    created_at: datetime
    id: str
    record: dict[str, Any]


class _BadRequest(Exception):
    pass


def _parse_instant(name: str, value: str) -> datetime:
    text = value.strip()
    candidates = [text]
    if " " in text:
        # A literal '+' in a query string decodes to a space: "…T00:00:00 00:00" meant "+00:00".
        candidates.append(text.replace(" ", "+"))
    for candidate in candidates:
        try:
            parsed = datetime.fromisoformat(candidate)
        except ValueError:
            continue
        # No offset: read as UTC, the demo shop's zone.
        return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
    raise _BadRequest(
        f"{name}: expected an ISO 8601 date-time such as 2026-11-01T00:00:00+00:00, got {value!r}"
    )


def _parse_per_page(values: list[str] | None) -> int:
    if not values:
        return DEFAULT_PER_PAGE
    try:
        per_page = int(values[-1])
    except ValueError:
        raise _BadRequest(f"per_page: expected an integer, got {values[-1]!r}") from None
    if per_page < 1:
        raise _BadRequest(f"per_page: must be at least 1, got {per_page}")
    return min(per_page, MAX_PER_PAGE)  # like Shopify's `limit`, larger values are capped


def _encode_cursor(state: Mapping[str, Any]) -> str:
    raw = json.dumps(state, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(token: str) -> dict[str, Any]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        state = json.loads(raw)
        if not isinstance(state, dict) or not isinstance(state.get("offset"), int) or state["offset"] < 0:
            raise ValueError("not a cursor")
        for key in _FILTER_PARAMS:
            if state.get(key) is not None:
                _parse_instant(key, state[key])
    except (ValueError, binascii.Error, _BadRequest):
        raise _BadRequest("page_info: invalid or expired cursor") from None
    return state


def _load_orders(path: Path) -> list[_Order]:
    orders = []
    with Path(path).open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            record = json.loads(line)
            try:
                created = _parse_instant("created_at", record["created_at"])
            except (KeyError, TypeError, _BadRequest) as exc:
                raise ValueError(f"{path}:{number}: order without a valid created_at") from exc
            orders.append(_Order(created, str(record.get("id", "")), record))
    # Stable sort: records sharing (created_at, id) keep their file order (older version first).
    orders.sort(key=lambda o: (o.created_at, o.id))
    return orders


class _Handler(BaseHTTPRequestHandler):
    server: _OrdersHTTPServer
    protocol_version = "HTTP/1.1"  # keep-alive, so a client's session reuses its connection
    timeout = 30  # an idle keep-alive connection must not pin a handler thread forever
    # Headers and body go out in two writes; with Nagle on, the client's delayed ACK costs 40 ms a page.
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        try:
            self._get()
        except _BadRequest as exc:
            self._send_json(HTTPStatus.BAD_REQUEST, {"errors": str(exc)})

    def _get(self) -> None:
        if not self._authorized():
            self._send_json(HTTPStatus.UNAUTHORIZED, {"errors": UNAUTHORIZED_MESSAGE})
            return
        url = urlsplit(self.path)
        if url.path.rstrip("/") != ORDERS_PATH:
            self._send_json(HTTPStatus.NOT_FOUND, {"errors": "Not Found"})
            return
        query = parse_qs(url.query, keep_blank_values=True)
        per_page = _parse_per_page(query.get("per_page"))
        if "page_info" in query:
            extra = sorted(set(query) - {"page_info", "per_page"})
            if extra:
                raise _BadRequest(f"page_info cannot be combined with: {', '.join(extra)}")
            state = _decode_cursor(query["page_info"][-1])
        else:
            state = {key: query[key][-1] for key in _FILTER_PARAMS if key in query}
            for key, value in state.items():
                _parse_instant(key, value)
            state["offset"] = 0

        lower, upper = (_parse_instant(key, state[key]) if state.get(key) else None for key in _FILTER_PARAMS)
        matching = [
            o
            for o in self.server.orders
            if (lower is None or o.created_at >= lower) and (upper is None or o.created_at < upper)
        ]
        offset = state["offset"]
        page = matching[offset : offset + per_page]

        headers = {}
        links = []
        if offset > 0:
            links.append((dict(state, offset=max(offset - per_page, 0)), "previous"))
        if offset + per_page < len(matching):
            links.append((dict(state, offset=offset + per_page), "next"))
        if links:
            base = f"{self._base_url()}{ORDERS_PATH}"
            headers["Link"] = ", ".join(
                f'<{base}?{urlencode({"page_info": _encode_cursor(s), "per_page": per_page})}>; rel="{rel}"'
                for s, rel in links
            )
        self._send_json(HTTPStatus.OK, {"orders": [o.record for o in page]}, headers)

    def _authorized(self) -> bool:
        scheme, _, presented = (self.headers.get("Authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not presented:
            return False
        return hmac.compare_digest(presented.strip().encode(), self.server.token.encode())

    def _base_url(self) -> str:
        # The client's own Host header, so the next-page URL works under whatever name it used.
        host = self.headers.get("Host")
        if not host:
            address, port = self.server.server_address[:2]
            host = f"{address}:{port}"
        return f"http://{host}"

    def _send_json(self, status: HTTPStatus, body: Any, headers: Mapping[str, str] | None = None) -> None:
        payload = json.dumps(body, ensure_ascii=False).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("demo api %s - " + format, self.address_string(), *args)


class _OrdersHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], *, orders: list[_Order], token: str) -> None:
        self.orders = orders
        self.token = token
        super().__init__(address, _Handler)


class DemoApiServer:
    """The demo API on `host:port` (port 0 picks a free one). Use `start()`/`stop()` or `with`."""

    def __init__(self, *, orders_path: Path, token: str, host: str = "127.0.0.1", port: int = 0) -> None:
        if not token:
            raise ValueError("the demo API needs a non-empty token")
        self.orders_path = Path(orders_path)
        self._httpd = _OrdersHTTPServer((host, port), orders=_load_orders(self.orders_path), token=token)
        self._thread: threading.Thread | None = None

    @property
    def host(self) -> str:
        return str(self._httpd.server_address[0])

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        """Base URL, e.g. http://127.0.0.1:8765 (the orders are under ORDERS_PATH)."""
        return f"http://{self.host}:{self.port}"

    @property
    def order_count(self) -> int:
        return len(self._httpd.orders)

    def start(self) -> DemoApiServer:
        """Serve in a daemon thread and return at once."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._httpd.serve_forever,
                kwargs={"poll_interval": _POLL_INTERVAL},
                name=f"demo-api-{self.port}",
                daemon=True,
            )
            self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in the calling thread until `stop()` is called from another thread or it is interrupted."""
        try:
            self._httpd.serve_forever(poll_interval=_POLL_INTERVAL)
        finally:
            self._httpd.server_close()

    def stop(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> DemoApiServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start_demo_api(*, orders_path: Path, token: str, host: str = "127.0.0.1", port: int = 0) -> DemoApiServer:
    """Start the demo API in a daemon thread; call `.stop()` (or use it as a context manager) when done."""
    return DemoApiServer(orders_path=orders_path, token=token, host=host, port=port).start()
