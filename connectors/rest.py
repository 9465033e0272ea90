"""JSON-over-HTTP APIs, configured (not coded) per API: auth, pagination, where the records are."""

from __future__ import annotations

import base64
import json
import logging
import math
import re
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import urljoin, urlsplit, urlunsplit

import requests
import urllib3.exceptions
from requests.adapters import HTTPAdapter
from requests.auth import AuthBase, HTTPBasicAuth
from urllib3.util.retry import Retry

from etlcore.errors import ConfigurationError, SourceError

from .base import (
    Connector,
    ExtractWindow,
    RawBatch,
    reject_unknown_options,
    render_template,
    secret_from_env,
)
from .presets import with_preset
from .records import MISSING, resolve_path
from .watermarks import Ties, fingerprint

__all__ = ["RestConnector"]

logger = logging.getLogger(__name__)

RETRY_STATUSES = (429, 500, 502, 503, 504)
PAGINATION_STYLES = ("link_header", "page_number", "cursor", "offset", "none")
METHODS = ("GET", "POST")  # POST for read-only search endpoints (Square), paged through the JSON body
WATERMARK_FORMATS = ("iso", "epoch")
BOUNDS = ("inclusive", "exclusive")
# An exclusive filter is sent this much early, so records stamped later within the watermark's own second
# (the precision most APIs keep) are still read; what the step adds is dropped on arrival.
EXCLUSIVE_STEP = timedelta(seconds=1)
# A 200 whose body is cut short or not JSON is usually transient (a dropped connection, a proxy's error
# page); it is fetched again this many times in all before the run fails.
BODY_ATTEMPTS = 3
DEFAULT_MAX_PAGES = 100_000

_OPTIONS = frozenset(
    {
        "kind",
        "preset",
        "method",
        "body",
        "records_optional",
        "base_url",
        "path",
        "params",
        "headers",
        "records_path",
        "auth",
        "pagination",
        "timeout_seconds",
        "max_retries",
        "backoff_factor",
        "backoff_jitter",
        "batch_size",
        "incremental",
        "rate_limit_per_second",
    }
)
_AUTH_OPTIONS = {
    "bearer": frozenset({"type", "token_env"}),
    "header": frozenset({"type", "header", "value_env"}),
    "basic": frozenset({"type", "username_env", "password_env"}),
}
_PAGINATION_OPTIONS = frozenset(
    {
        "style",
        "max_pages",
        # page_number
        "page_param",
        "start",
        "total_pages_header",
        "end_statuses",
        # cursor: a next cursor in the body (Square), or has_more + the last record's id (Stripe)
        "cursor_path",
        "cursor_param",
        "has_more_path",
        "starting_after_param",
        "id_path",
        # offset
        "offset_param",
        "limit_param",
        "limit",
        "total_path",
        "total_header",
    }
)
_INCREMENTAL_OPTIONS = frozenset(
    {"param", "cursor_field", "lookback_seconds", "initial", "format", "end_param", "bound", "id_field"}
)
# Query parameters and header names whose values are masked in messages.
_SECRET_NAME = re.compile(r"(?i)token|secret|passw|pwd|key|signature|sig|auth|credential|session")
_SECRET_QUERY = re.compile(
    r"(?i)([\w.\-\[\]%]*(?:token|secret|passw|pwd|key|signature|sig|auth|credential|session)[\w.\-\[\]%]*)=([^&#\s'\"]*)"
)


class _Retry(Retry):
    """urllib3's Retry, also reading a fractional Retry-After ("0.5"; Shopify sends "2.0")."""

    def parse_retry_after(self, retry_after: str) -> float:
        try:
            seconds = float(retry_after)
        except ValueError:
            return super().parse_retry_after(retry_after)
        if not math.isfinite(seconds):
            return super().parse_retry_after(retry_after)
        return min(max(seconds, 0.0), float(getattr(self, "retry_after_max", seconds)))


class _HeaderAuth(AuthBase):
    """Puts a secret in one header. Its repr never shows the value."""

    def __init__(self, header: str, value: str) -> None:
        self.header = header
        self._value = value

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers[self.header] = self._value
        return request

    def __repr__(self) -> str:
        return f"_HeaderAuth(header={self.header!r}, value='***')"


@dataclass(frozen=True)
class _Page:
    response: requests.Response
    body: Any
    records: list[dict[str, Any]]
    shown: str  # the request's URL with secrets masked, for messages


@dataclass(frozen=True)
class Incremental:
    """Filter by the saved watermark: `param` = watermark - lookback; `end_param` = the window's end.

    `bound` is how the API compares `param`: "inclusive" (>=) or "exclusive" (>)."""

    param: str
    cursor_field: str
    lookback: timedelta
    initial: Any
    format: str
    end_param: str | None
    bound: str
    id_field: str

    def step_back(self, instant: Any, delta: timedelta) -> Any:
        return instant - (delta if self.format == "iso" else Decimal(delta.total_seconds()))


class WatermarkFilter:
    """Which records of a run are new, and the state to save after it.

    The request reads from `floor` = saved watermark - lookback inclusively (an exclusive API is asked one
    step early and the step's records dropped here). The records at exactly the saved watermark that the
    previous run delivered (same key, same content) are dropped; a new one, or one updated again within
    that instant, is kept. The state saved is the greatest instant seen and what was seen at it.
    """

    def __init__(self, incremental: Incremental, saved: Ties, floor: Any, *, source: str) -> None:
        self.incremental = incremental
        self.saved = saved
        self.floor = floor
        self.source = source
        # An inclusive re-read returns everything now at the saved instant, so what this run sees there
        # is the whole set, even when the saved state did not record one.
        self.seen = Ties(saved.instant) if saved.instant is not None else Ties()

    def admit(self, records: list[dict[str, Any]], shown: str) -> list[dict[str, Any]]:
        incremental = self.incremental
        kept = []
        for index, record in enumerate(records):
            value = resolve_path(record, incremental.cursor_field)
            if value is MISSING or value is None or value == "":
                kept.append(record)
                continue
            instant = _instant(value, incremental.format)
            if instant is None:
                raise SourceError(
                    f"source {self.source!r}: {shown}: record {index} (id {record.get('id', '?')!r}) has "
                    f"{incremental.cursor_field} = {value!r}, not {_FORMAT_WORDS[incremental.format]}"
                )
            key, print_ = self._identity(record)
            self.seen.observe(instant, key, print_, source=self.source)
            if incremental.bound == "exclusive" and self.floor is not None and instant < self.floor:
                continue  # asked for only because the exclusive bound was sent a step early
            if self.saved.delivered(instant, key, print_):
                continue
            kept.append(record)
        return kept

    def state(self) -> dict[str, Any] | None:
        ties = self.seen
        if ties.instant is None:
            return None
        state: dict[str, Any] = {"watermark": _watermark_text(ties.instant, self.incremental.format)}
        if ties.complete:
            state["at_watermark"] = dict(sorted(ties.seen.items()))
        return state

    def _identity(self, record: dict[str, Any]) -> tuple[str, str]:
        print_ = fingerprint(record)
        key = resolve_path(record, self.incremental.id_field)
        return (print_ if key is MISSING or key is None else str(key)), print_


class TokenBucket:
    """Client-side rate limit: at most `rate` requests per second, bursts of `capacity`, monotonic clock."""

    def __init__(
        self,
        rate: float,
        *,
        capacity: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.rate = rate
        self.capacity = capacity
        self._clock = clock
        self._sleep = sleep
        self._tokens = capacity
        self._updated = clock()

    def acquire(self) -> None:
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._updated) * self.rate)
        self._updated = now
        if self._tokens < 1:
            wait = (1 - self._tokens) / self.rate
            self._sleep(wait)
            self._tokens = 1.0
            self._updated = now + wait
        self._tokens -= 1


class RestConnector(Connector):
    """GET (or POST a search to) a JSON API page by page and yield its records in batches of `batch_size`.

    Options: `preset` (connectors/presets.py: settings of a known API, under the source's own keys),
    `base_url`, `path`, `method` ("GET" | "POST"), `body` (POST's JSON; placeholders allowed), `params`
    (query; values may use `{window_start}`-style placeholders), `headers` (static, non-secret),
    `records_path` (dotted path to the list in the body; empty: the body is the list), `records_optional`,
    `auth`, `pagination`, `incremental` ({param, cursor_field, lookback_seconds, initial, format = "iso" |
    "epoch", end_param, bound = "inclusive" | "exclusive", id_field}), `rate_limit_per_second`,
    `timeout_seconds`, `max_retries`, `backoff_factor`, `backoff_jitter`, `batch_size`; see
    docs/configuration.md. With POST, the values the connector sets (incremental bounds, page cursors) go
    into the body at their dotted paths.

    Incremental: the request reads from the saved watermark - lookback (or `initial`) and, with
    `end_param`, up to the window's end, so re-running a date re-reads the same range. `next_state` is
    `{"watermark": greatest cursor_field seen, "at_watermark": {id: digest}}`; the records at exactly the
    saved watermark that were delivered before are dropped (WatermarkFilter).

    One `requests.Session` per connector retries connection errors, 429 (honouring Retry-After) and 5xx
    with exponential backoff. Secrets are read from the environment when the first request is made and
    never appear in messages or logs.
    """

    kind = "rest"

    def __init__(
        self, *, name: str, options: Mapping[str, Any], state: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(name=name, options=with_preset(name, options), state=state)
        opts = self.options
        reject_unknown_options(name, opts, _OPTIONS)
        base_url = opts.get("base_url")
        if not isinstance(base_url, str) or urlsplit(base_url).scheme not in ("http", "https"):
            raise ConfigurationError(f"source {name!r}: base_url must be an http(s) URL, got {base_url!r}")
        path = str(opts.get("path", "") or "")
        if path and not path.startswith("/"):
            path = "/" + path
        self.url = base_url.rstrip("/") + path if path else base_url
        self.params = _table(name, "params", opts.get("params", {}))
        self.headers = {str(k): str(v) for k, v in _table(name, "headers", opts.get("headers", {})).items()}
        for header in self.headers:
            if header.lower() in ("authorization", "proxy-authorization") or _SECRET_NAME.search(header):
                raise ConfigurationError(
                    f"source {name!r}: header {header!r} looks like a credential; put it in 'auth' with "
                    "the name of the environment variable that holds it"
                )
        self.records_path = str(opts.get("records_path", "") or "")
        self.auth = self._auth_options(_table(name, "auth", opts.get("auth", {})))
        self.pagination = self._pagination_options(_table(name, "pagination", opts.get("pagination", {})))
        self.timeout = _positive(name, "timeout_seconds", opts.get("timeout_seconds", 30))
        self.max_retries = int(opts.get("max_retries", 5))
        if self.max_retries < 0:
            raise ConfigurationError(f"source {name!r}: max_retries must be >= 0")
        self.backoff_factor = _positive(name, "backoff_factor", opts.get("backoff_factor", 0.5), zero=True)
        self.backoff_jitter = _positive(name, "backoff_jitter", opts.get("backoff_jitter", 0.25), zero=True)
        self.method, self._body_template = self._method_options(opts.get("method", "GET"), opts.get("body"))
        self.records_optional = opts.get("records_optional", False)
        if not isinstance(self.records_optional, bool):
            raise ConfigurationError(f"source {name!r}: records_optional must be true or false")
        self.incremental = self._incremental_options(_table(name, "incremental", opts.get("incremental")))
        self._body: dict[str, Any] = {}
        rate = opts.get("rate_limit_per_second")
        self._bucket = TokenBucket(_positive(name, "rate_limit_per_second", rate)) if rate else None
        self._http: requests.Session | None = None
        self._secrets: list[str] = []

    # --- public -----------------------------------------------------------------------------------------

    def describe(self) -> str:
        return f"rest:{self.method} {self._mask(self.url)}"

    def iter_batches(self, window: ExtractWindow) -> Iterator[RawBatch]:
        buffer: list[dict[str, Any]] = []
        params = self._render_params(window)
        progress = self._watermark_filter()
        for page in self._pages(params):
            if progress is None:
                buffer.extend(page.records)
            else:
                buffer.extend(progress.admit(page.records, page.shown))
                self.next_state = progress.state() or self.state
            while len(buffer) >= self.batch_size:
                yield buffer[: self.batch_size]
                buffer = buffer[self.batch_size :]
        if buffer:
            yield buffer

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None

    # --- pagination -------------------------------------------------------------------------------------

    def _pages(self, params: dict[str, Any]) -> Iterator[_Page]:
        style = self.pagination["style"]
        max_pages = self.pagination["max_pages"]
        if style == "none":
            yield self._get(self.url, params)
        elif style == "link_header":
            url: str = self.url
            query: dict[str, Any] | None = params
            seen = {self.url}
            for _ in range(max_pages):
                page = self._get(url, query)
                yield page
                next_url = page.response.links.get("next", {}).get("url")
                if not next_url:
                    return
                # The next link carries the whole query (Shopify allows nothing else beside page_info).
                url, query = self._next_url(page.response.url, next_url, seen), None
            self._too_many_pages(max_pages)
        elif style == "page_number":
            yield from self._page_number_pages(params, max_pages)
        elif style == "cursor":
            yield from self._cursor_pages(params, max_pages)
        else:
            yield from self._offset_pages(params, max_pages)

    def _page_number_pages(self, params: dict[str, Any], max_pages: int) -> Iterator[_Page]:
        page_param = self.pagination["page_param"]
        start = self.pagination["start"]
        total_header = self.pagination["total_pages_header"]
        for number in range(start, start + max_pages):
            ends = self.pagination["end_statuses"] if number > start else ()
            page = self._get(self.url, {**params, page_param: number}, ends=ends)
            if not page.records:
                return
            yield page
            total = self._header_count(page, total_header)
            if total is not None and number - start + 1 >= total:
                return
        self._too_many_pages(max_pages)

    def _cursor_pages(self, params: dict[str, Any], max_pages: int) -> Iterator[_Page]:
        """Square: resend the query with the body's next cursor until none comes back. Stripe: while
        `has_more`, resend it with `starting_after` = the id of the page's last record."""
        options = self.pagination
        query = params
        seen: set[str] = set()
        for _ in range(max_pages):
            page = self._get(self.url, query)
            if page.records:
                yield page
            if options["has_more_path"]:
                has_more = resolve_path(page.body, options["has_more_path"])
                if has_more is MISSING:
                    raise SourceError(
                        f"source {self.name!r}: {page.shown}: pagination.has_more_path "
                        f"{options['has_more_path']!r} is absent from the body"
                    )
                if not _truthy(has_more) or not page.records:
                    return
                cursor = resolve_path(page.records[-1], options["id_path"])
                if cursor is MISSING or cursor is None or cursor == "":
                    raise SourceError(
                        f"source {self.name!r}: {page.shown}: the last record has no "
                        f"{options['id_path']!r} (pagination.id_path) to continue after"
                    )
                param = options["starting_after_param"]
            else:
                cursor = resolve_path(page.body, options["cursor_path"])
                if cursor is MISSING or cursor is None or cursor == "":
                    return
                param = options["cursor_param"]
            if str(cursor) in seen:
                raise SourceError(
                    f"source {self.name!r}: {page.shown}: the next cursor {self._scrub(str(cursor))!r} "
                    "was already used (a loop)"
                )
            seen.add(str(cursor))
            query = {**params, param: cursor}
        self._too_many_pages(max_pages)

    def _offset_pages(self, params: dict[str, Any], max_pages: int) -> Iterator[_Page]:
        """offset/limit: stop on a short page, or once the total the body or a header gives is reached."""
        options = self.pagination
        limit = options["limit"]
        offset = options["start"]
        for _ in range(max_pages):
            page = self._get(
                self.url, {**params, options["offset_param"]: offset, options["limit_param"]: limit}
            )
            if page.records:
                yield page
            offset += len(page.records)
            if len(page.records) < limit:
                return
            total = self._header_count(page, options["total_header"])
            if options["total_path"]:
                found = resolve_path(page.body, options["total_path"])
                total = None if found is MISSING or found is None else _count(found)
                if total is None and found is not MISSING and found is not None:
                    raise SourceError(
                        f"source {self.name!r}: {page.shown}: pagination.total_path "
                        f"{options['total_path']!r} is {found!r}, not a count"
                    )
            if total is not None and offset - options["start"] >= total:
                return
        self._too_many_pages(max_pages)

    def _header_count(self, page: _Page, header: str | None) -> int | None:
        if not header or header not in page.response.headers:
            return None
        total = _int_header(page.response.headers[header])
        if total is None:
            raise SourceError(
                f"source {self.name!r}: {page.shown}: header {header} is "
                f"{page.response.headers[header]!r}, not a count"
            )
        return total

    def _next_url(self, current: str, link: str, seen: set[str]) -> str:
        url = urljoin(current, link)
        here, there = urlsplit(self.url), urlsplit(url)
        if self.auth and (here.scheme, here.hostname, here.port) != (
            there.scheme,
            there.hostname,
            there.port,
        ):
            raise SourceError(
                f"source {self.name!r}: the next-page link points to another server ({self._mask(url)}); "
                "not sending the credentials there"
            )
        if url in seen:
            raise SourceError(f"source {self.name!r}: the next-page link repeats {self._mask(url)} (a loop)")
        seen.add(url)
        return url

    def _too_many_pages(self, max_pages: int) -> None:
        raise SourceError(
            f"source {self.name!r}: still more pages after {max_pages} pages from {self._mask(self.url)}; "
            "raise pagination.max_pages if that is expected"
        )

    # --- one page ---------------------------------------------------------------------------------------

    def _get(self, url: str, params: Mapping[str, Any] | None, *, ends: Collection[int] = ()) -> _Page:
        """One page. A status in `ends` is an empty page: the API's way of saying there are no more."""
        session = self._session()
        query, body = self._split(params)
        shown = (
            self.method + " " + self._mask(requests.Request("GET", url, params=query).prepare().url or url)
        )
        problem = ""
        for attempt in range(1, BODY_ATTEMPTS + 1):
            if attempt > 1:
                time.sleep(self.backoff_factor * attempt)
            if self._bucket is not None:
                self._bucket.acquire()
            try:
                response = session.request(
                    self.method, url, params=query, json=body, timeout=self.timeout, allow_redirects=False
                )
            except (
                requests.exceptions.ChunkedEncodingError,
                requests.exceptions.ContentDecodingError,
            ) as exc:
                problem = f"the body was cut short ({self._scrub(_reason(exc))})"
                continue
            except (requests.RequestException, urllib3.exceptions.HTTPError) as exc:
                raise SourceError(
                    f"source {self.name!r}: {shown} failed (retried up to {self.max_retries} times): "
                    f"{self._scrub(_reason(exc))}"
                ) from None
            logger.debug("source %s: %s -> %s", self.name, shown, response.status_code)
            if response.status_code in ends:
                return _Page(response, None, [], shown)
            self._check_status(response, shown)
            if response.status_code == 204:
                return _Page(response, None, [], shown)
            try:
                body = json.loads(response.content, parse_float=Decimal)
            except ValueError as exc:
                excerpt = self._scrub(response.content[:200].decode("utf-8", "replace"))
                problem = f"HTTP {response.status_code} with malformed JSON ({exc}); body starts: {excerpt!r}"
                continue
            records = self._records(body, shown)
            return _Page(response, body, records, shown)
        raise SourceError(f"source {self.name!r}: {shown} failed {BODY_ATTEMPTS} times: {problem}")

    def _check_status(self, response: requests.Response, shown: str) -> None:
        status = response.status_code
        if 200 <= status < 300:
            return
        if 300 <= status < 400:
            location = self._mask(response.headers.get("Location", "?"))
            raise SourceError(
                f"source {self.name!r}: {shown} answered HTTP {status}, a redirect to {location}; "
                "set base_url to the final address"
            )
        body = self._scrub(response.text[:200])
        retried = f" (after {self.max_retries} retries)" if status in RETRY_STATUSES else ""
        raise SourceError(
            f"source {self.name!r}: {shown} answered HTTP {status} {response.reason or ''}".rstrip()
            + f"{retried}: {body}"
        )

    def _split(self, params: Mapping[str, Any] | None) -> tuple[Mapping[str, Any] | None, Any]:
        """GET: everything in the query string. POST: `params` in the query string, and the values the
        connector sets (incremental bounds, page cursors) into a copy of `body` at their dotted paths."""
        if self.method == "GET" or params is None:
            return params, None
        body = json.loads(json.dumps(self._body))
        for path, value in params.items():
            if path not in self.params:
                _set_path(body, path, value)
        return {k: v for k, v in params.items() if k in self.params}, body

    def _records(self, body: Any, shown: str) -> list[dict[str, Any]]:
        if self.records_path:
            records = resolve_path(body, self.records_path)
            if records is MISSING and self.records_optional:
                records = []  # Square leaves an empty list out of the answer
            if not isinstance(records, list):
                found = (
                    "absent"
                    if records is MISSING
                    else "null"
                    if records is None
                    else f"a {type(records).__name__}"
                )
                keys = f" (top-level keys: {', '.join(map(repr, body))})" if isinstance(body, dict) else ""
                raise SourceError(
                    f"source {self.name!r}: {shown}: records_path {self.records_path!r} is {found}, "
                    f"not a list{keys}"
                )
        elif isinstance(body, list):
            records = body
        else:
            raise SourceError(
                f"source {self.name!r}: {shown}: the body is a {type(body).__name__}, not a list "
                "(set records_path to the field that holds the records)"
            )
        for index, record in enumerate(records):
            if not isinstance(record, dict):
                raise SourceError(
                    f"source {self.name!r}: {shown}: record {index} is a {type(record).__name__}, "
                    "not an object"
                )
        return records

    # --- incremental ----------------------------------------------------------------------------------

    def _saved_ties(self) -> Ties:
        """The saved watermark and the records at it; a state saved before those were recorded has only
        {"watermark": ...}, so nothing at it can be told apart as delivered."""
        state = self.state or {}
        value = state.get("watermark")
        if value is None:
            return Ties()
        assert self.incremental is not None
        instant = _instant(value, self.incremental.format)
        seen = state.get("at_watermark")
        if instant is None or (seen is not None and not isinstance(seen, Mapping)):
            raise SourceError(
                f"source {self.name!r}: the saved state {state!r} is not "
                f'{{"watermark": {_FORMAT_WORDS[self.incremental.format]}, "at_watermark": {{id: digest}}}} '
                "(incremental.format changed?)"
            )
        return Ties(instant, seen, complete=seen is not None)

    def _floor(self) -> Any:
        """The earliest instant this run reads: saved watermark - lookback, else `initial`, else None."""
        incremental = self.incremental
        assert incremental is not None
        saved = self._saved_ties().instant
        if saved is not None:
            return incremental.step_back(saved, incremental.lookback)
        return incremental.initial

    def _watermark_filter(self) -> WatermarkFilter | None:
        if self.incremental is None:
            return None
        return WatermarkFilter(self.incremental, self._saved_ties(), self._floor(), source=self.name)

    def _incremental_params(self, window: ExtractWindow) -> dict[str, Any]:
        incremental = self.incremental
        if incremental is None:
            return {}
        params: dict[str, Any] = {}
        since = self._floor()
        if since is not None:
            if incremental.bound == "exclusive":
                since = incremental.step_back(since, EXCLUSIVE_STEP)
            params[incremental.param] = _watermark_text(since, incremental.format)
        if incremental.end_param:
            end = window.end if incremental.format == "iso" else Decimal(int(window.end.timestamp()))
            params[incremental.end_param] = _watermark_text(end, incremental.format)
        return params

    # --- session, auth, secrets -------------------------------------------------------------------------

    def _session(self) -> requests.Session:
        if self._http is None:
            auth = self._auth_from_env()
            retry = _Retry(
                total=self.max_retries,
                status_forcelist=RETRY_STATUSES,
                backoff_factor=self.backoff_factor,
                backoff_jitter=self.backoff_jitter,
                respect_retry_after_header=True,
                allowed_methods=None,  # GETs and read-only searches: retry them on read errors too
                raise_on_status=False,  # hand back the last answer, so its status and body can be reported
            )
            adapter = HTTPAdapter(max_retries=retry)
            session = requests.Session()
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            session.headers.update({"Accept": "application/json", "User-Agent": "django-spark-etl"})
            session.headers.update(self.headers)
            session.auth = auth
            self._http = session
        return self._http

    def _auth_from_env(self) -> AuthBase | None:
        kind = self.auth.get("type")
        if kind == "bearer":
            token = self._env("token_env")
            self._secrets = [token]
            return _HeaderAuth("Authorization", f"Bearer {token}")
        if kind == "header":
            value = self._env("value_env")
            self._secrets = [value]
            return _HeaderAuth(self.auth["header"], value)
        if kind == "basic":
            username, password = self._env("username_env"), self._env("password_env")
            encoded = base64.b64encode(f"{username}:{password}".encode()).decode()
            self._secrets = [password, username, encoded]  # a Stripe key is sent as the username
            return HTTPBasicAuth(username, password)
        return None

    def _env(self, option: str) -> str:
        return secret_from_env(self.auth[option], source=self.name, option=f"auth.{option}")

    def _scrub(self, text: str) -> str:
        """Text safe to show: known secrets and secret-looking query values replaced by ***."""
        for secret in sorted(self._secrets, key=len, reverse=True):
            if len(secret) >= 4:  # masking a one-letter user name would garble the message, not protect it
                text = text.replace(secret, "***")
        return _SECRET_QUERY.sub(r"\1=***", text)

    def _mask(self, url: str) -> str:
        parts = urlsplit(url)
        if parts.password or parts.username:
            host = parts.hostname or ""
            netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
            url = urlunsplit(parts._replace(netloc=netloc))
        return self._scrub(url)

    # --- option parsing ---------------------------------------------------------------------------------

    def _auth_options(self, auth: dict[str, Any]) -> dict[str, Any]:
        if not auth:
            return {}
        kind = auth.get("type")
        if kind not in _AUTH_OPTIONS:
            raise ConfigurationError(
                f"source {self.name!r}: auth.type {kind!r} is not one of {', '.join(_AUTH_OPTIONS)}"
            )
        reject_unknown_options(self.name, auth, _AUTH_OPTIONS[kind], prefix="auth.")
        for key in sorted(_AUTH_OPTIONS[kind] - {"type"}):
            if not isinstance(auth.get(key), str) or not auth[key]:
                raise ConfigurationError(f"source {self.name!r}: auth type {kind!r} needs auth.{key}")
        return auth

    def _pagination_options(self, pagination: dict[str, Any]) -> dict[str, Any]:
        reject_unknown_options(self.name, pagination, _PAGINATION_OPTIONS, prefix="pagination.")
        style = pagination.get("style", "none")
        if style not in PAGINATION_STYLES:
            raise ConfigurationError(
                f"source {self.name!r}: pagination.style {style!r} is not one of "
                f"{', '.join(PAGINATION_STYLES)}"
            )
        max_pages = int(pagination.get("max_pages", DEFAULT_MAX_PAGES))
        if max_pages <= 0:
            raise ConfigurationError(f"source {self.name!r}: pagination.max_pages must be positive")
        limit = int(pagination.get("limit", 100))
        if limit <= 0:
            raise ConfigurationError(f"source {self.name!r}: pagination.limit must be positive")
        return {
            "style": style,
            "page_param": str(pagination.get("page_param", "page")),
            "start": int(pagination.get("start", 0 if style == "offset" else 1)),
            "total_pages_header": pagination.get("total_pages_header"),
            "end_statuses": self._end_statuses(pagination.get("end_statuses", [])),
            "max_pages": max_pages,
            "cursor_path": str(pagination.get("cursor_path", "cursor")),
            "cursor_param": str(pagination.get("cursor_param", "cursor")),
            "has_more_path": pagination.get("has_more_path"),
            "starting_after_param": str(pagination.get("starting_after_param", "starting_after")),
            "id_path": str(pagination.get("id_path", "id")),
            "offset_param": str(pagination.get("offset_param", "offset")),
            "limit_param": str(pagination.get("limit_param", "limit")),
            "limit": limit,
            "total_path": pagination.get("total_path"),
            "total_header": pagination.get("total_header"),
        }

    def _end_statuses(self, value: Any) -> frozenset[int]:
        if not isinstance(value, list) or not all(
            isinstance(v, int) and not isinstance(v, bool) and 400 <= v < 500 for v in value
        ):
            raise ConfigurationError(
                f"source {self.name!r}: pagination.end_statuses must be a list of 4xx statuses, got {value!r}"
            )
        return frozenset(value)

    def _method_options(self, method: Any, body: Any) -> tuple[str, dict[str, Any]]:
        if method not in METHODS:
            raise ConfigurationError(
                f"source {self.name!r}: method {method!r} is not one of {', '.join(METHODS)}"
            )
        table = _table(self.name, "body", body)
        if table and method != "POST":
            raise ConfigurationError(f'source {self.name!r}: body is sent with method = "POST" only')
        if method == "POST" and self.pagination["style"] == "link_header":
            raise ConfigurationError(
                f"source {self.name!r}: pagination.style 'link_header' follows next links with GET; "
                "it cannot page a POST search"
            )
        return method, table

    def _render_params(self, window: ExtractWindow) -> dict[str, Any]:
        values = window.template_values()
        rendered = {key: self._render(key, value, values) for key, value in self.params.items()}
        self._body = {
            key: self._render(f"body.{key}", value, values) for key, value in self._body_template.items()
        }
        return {**rendered, **self._incremental_params(window)}

    def _incremental_options(self, table: dict[str, Any]) -> Incremental | None:
        if not table:
            return None
        reject_unknown_options(self.name, table, _INCREMENTAL_OPTIONS, prefix="incremental.")
        for key in ("param", "cursor_field"):
            if not isinstance(table.get(key), str) or not table[key]:
                raise ConfigurationError(f"source {self.name!r}: incremental.{key} is required (a name)")
        fmt = table.get("format", "iso")
        if fmt not in WATERMARK_FORMATS:
            raise ConfigurationError(
                f"source {self.name!r}: incremental.format {fmt!r} is not one of "
                f"{', '.join(WATERMARK_FORMATS)}"
            )
        lookback = _positive(
            self.name, "incremental.lookback_seconds", table.get("lookback_seconds", 0), zero=True
        )
        initial = table.get("initial")
        parsed_initial = None
        if initial is not None:
            parsed_initial = _instant(initial, fmt)
            if parsed_initial is None:
                raise ConfigurationError(
                    f"source {self.name!r}: incremental.initial {initial!r} is not {_FORMAT_WORDS[fmt]}"
                )
        end_param = table.get("end_param")
        if end_param is not None and (not isinstance(end_param, str) or not end_param):
            raise ConfigurationError(f"source {self.name!r}: incremental.end_param must be a parameter name")
        bound = table.get("bound", "inclusive")
        if bound not in BOUNDS:
            raise ConfigurationError(
                f"source {self.name!r}: incremental.bound {bound!r} is not one of {', '.join(BOUNDS)} "
                "(how the API compares incremental.param: >= or >)"
            )
        id_field = table.get("id_field", "id")
        if not isinstance(id_field, str) or not id_field:
            raise ConfigurationError(f"source {self.name!r}: incremental.id_field must be a field name")
        for option in ("param", "end_param"):
            name = table.get(option)
            in_body = self.method == "POST" and resolve_path(self._body_template, name or "") is not MISSING
            if name is not None and (name in self.params or in_body):
                # Both would set the same query parameter; one of them would be silently ignored.
                where = "body" if in_body else "params"
                raise ConfigurationError(
                    f"source {self.name!r}: {where}.{name} is also incremental.{option}; remove it from "
                    f"{where} (the incremental filter sets it from the saved watermark)"
                )
        return Incremental(
            param=table["param"],
            cursor_field=table["cursor_field"],
            lookback=timedelta(seconds=lookback),
            initial=parsed_initial,
            format=fmt,
            end_param=end_param,
            bound=bound,
            id_field=id_field,
        )

    def _render(self, key: str, value: Any, values: Mapping[str, Any]) -> Any:
        if isinstance(value, list | tuple):
            return [self._render(key, item, values) for item in value]
        if isinstance(value, Mapping):  # a JSON body's nested objects
            return {k: self._render(f"{key}.{k}", v, values) for k, v in value.items()}
        if isinstance(value, bool):
            return (
                value if key.startswith("body.") else ("true" if value else "false")
            )  # not requests' "True"
        if not isinstance(value, str):
            return value
        option = key if key.startswith("body.") else f"params.{key}"
        return render_template(value, values, source=self.name, option=option)


def _table(name: str, option: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigurationError(f"source {name!r}: {option!r} must be a table, got {type(value).__name__}")
    return dict(value)


def _positive(name: str, option: str, value: Any, *, zero: bool = False) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number) or number < 0 or (number == 0 and not zero):
        raise ConfigurationError(f"source {name!r}: {option} must be a positive number, got {value!r}")
    return number


_FORMAT_WORDS = {"iso": "an ISO 8601 instant", "epoch": "a Unix time in seconds"}


def _instant(value: Any, fmt: str) -> Any:
    """A comparable instant (aware datetime for iso, Decimal seconds for epoch), or None if unreadable."""
    if fmt == "epoch":
        if isinstance(value, bool):
            return None
        try:
            number = Decimal(str(value).strip())
        except InvalidOperation:
            return None
        return number if number.is_finite() else None
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.strip())
        except ValueError:
            return None
    else:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)  # no offset: read as UTC


def _watermark_text(instant: Any, fmt: str) -> Any:
    if fmt == "epoch":
        return int(instant) if instant == int(instant) else float(instant)
    return instant.astimezone(UTC).isoformat()


def _set_path(body: dict[str, Any], path: str, value: Any) -> None:
    """Set `a.b.c` in a JSON body, creating the objects on the way."""
    *parents, last = path.split(".")
    for part in parents:
        body = body.setdefault(part, {})
    body[last] = value


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    return bool(value)


def _count(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    try:
        return int(str(value).strip())
    except ValueError:
        return None


def _int_header(value: str) -> int | None:
    try:
        return int(value.strip())
    except ValueError:
        return None


def _reason(exc: BaseException) -> str:
    """The root cause of a requests error, without the pool's URL (which would carry the query)."""
    cause: BaseException = exc
    if exc.args and isinstance(exc.args[0], urllib3.exceptions.MaxRetryError):
        cause = exc.args[0].reason or exc.args[0]
    return f"{type(cause).__name__}: {cause}"
