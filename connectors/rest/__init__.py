"""JSON-over-HTTP APIs, configured (not coded) per API: auth, pagination, where the records are.

The connector is here; `paging` holds one class per pagination style, `http` the session, retries, auth
and masking, `incremental` the watermark filter.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Collection, Iterator, Mapping
from contextlib import closing
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

import requests
import urllib3.exceptions

from ..base import (
    Connector,
    ExtractWindow,
    LastExtract,
    Probe,
    RawBatch,
    reject_unknown_options,
    render_template,
)
from ..errors import ConfigurationError, ProbeUnsupported, SourceError, value_excerpt
from ..options import ANY_TABLE, FLAG, NUMBER, SCALAR, TEXT, WHOLE, Entries, Table
from ..presets import with_preset
from ..records import MISSING, resolve_path
from ..watermarks import fingerprint
from .http import (
    AUTH,
    BODY_ATTEMPTS,
    RETRY_STATUSES,
    HttpObserver,
    Masker,
    TokenBucket,
    auth_options,
    build_session,
    check_headers,
    credentials_from_env,
    reason,
)
from .incremental import (
    INCREMENTAL_OPTIONS,
    Incremental,
    WatermarkFilter,
    incremental_options,
    parse_instant,
    saved_ties,
    watermark_text,
)
from .paging import DEFAULT_MAX_PAGES, PAGINATION, PAGINATORS, Page, Paginator, build_paginator

__all__ = [
    "BODY_ATTEMPTS",
    "DEFAULT_MAX_PAGES",
    "PAGINATORS",
    "OPTIONS",
    "Incremental",
    "Paginator",
    "RestConnector",
    "TokenBucket",
    "WatermarkFilter",
    "build_paginator",
]

logger = logging.getLogger(__name__)

# A probe reads pages until one shows a record newer than the saved state, at most this many.
PROBE_MAX_PAGES = 3
METHODS = ("GET", "POST")  # POST for read-only search endpoints (Square), paged through the JSON body

# Every key a REST source takes (after its preset is merged in), with the tables' own declarations.
OPTIONS = Table(
    {
        "kind": TEXT,
        "preset": TEXT,
        "method": TEXT,
        "body": ANY_TABLE,
        "records_optional": FLAG,
        "base_url": TEXT,
        "path": TEXT,
        "params": ANY_TABLE,
        "headers": Entries(SCALAR),
        "records_path": TEXT,
        "auth": AUTH,
        "pagination": PAGINATION,
        "timeout_seconds": NUMBER,
        "max_retries": WHOLE,
        "backoff_factor": NUMBER,
        "backoff_jitter": NUMBER,
        "batch_size": WHOLE,
        "incremental": INCREMENTAL_OPTIONS,
        "rate_limit_per_second": NUMBER,
    }
)


class RestConnector(Connector):
    """GET (or POST a search to) a JSON API page by page and yield its records in batches of `batch_size`.

    Options: `preset` (connectors/presets.py: settings of a known API, under the source's own keys),
    `base_url`, `path`, `method` ("GET" | "POST"), `body` (POST's JSON; placeholders allowed), `params`
    (query; values may use `{window_start}`-style placeholders), `headers` (static, non-secret),
    `records_path` (dotted path to the list in the body; empty: the body is the list), `records_optional`,
    `auth`, `pagination` (`style` chooses a class of connectors/rest/paging.py, which reads only its own
    keys), `incremental` ({param, cursor_field, lookback_seconds, initial, format = "iso" | "epoch",
    end_param, bound = "inclusive" | "exclusive", id_field}), `rate_limit_per_second`, `timeout_seconds`,
    `max_retries`, `backoff_factor`, `backoff_jitter`, `batch_size`; see docs/configuration.md. With POST,
    the values the connector sets (incremental bounds, page cursors) go into the body at their dotted paths.

    Incremental: the request reads from the saved watermark - lookback (or `initial`) and, with
    `end_param`, up to the window's end, so re-running a date re-reads the same range. `next_state` is
    `{"watermark": greatest cursor_field seen, "at_watermark": {id: digest}}`; the records at exactly the
    saved watermark that were delivered before are dropped (WatermarkFilter).

    One `requests.Session` per connector retries connection errors, 429 (honouring Retry-After) and 5xx
    with exponential backoff. Secrets are read from the environment when the first request is made and
    never appear in messages or logs.
    """

    kind = "rest"
    option_schema = OPTIONS

    def __init__(
        self, *, name: str, options: Mapping[str, Any], state: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(name=name, options=with_preset(name, options), state=state)
        opts = self.options
        reject_unknown_options(name, opts, OPTIONS.keys)
        base_url = opts.get("base_url")
        if not isinstance(base_url, str) or urlsplit(base_url).scheme not in ("http", "https"):
            raise ConfigurationError(f"source {name!r}: base_url must be an http(s) URL, got {base_url!r}")
        path = str(opts.get("path", "") or "")
        if path and not path.startswith("/"):
            path = "/" + path
        self.url = base_url.rstrip("/") + path if path else base_url
        self.params = _table(name, "params", opts.get("params", {}))
        self.headers = {str(k): str(v) for k, v in _table(name, "headers", opts.get("headers", {})).items()}
        check_headers(name, self.headers)
        self.records_path = str(opts.get("records_path", "") or "")
        self.auth = auth_options(name, _table(name, "auth", opts.get("auth", {})))
        self.paginator = build_paginator(name, _table(name, "pagination", opts.get("pagination", {})))
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
        self.incremental = incremental_options(
            name,
            _table(name, "incremental", opts.get("incremental")),
            params=self.params,
            body=self._body_template if self.method == "POST" else None,
        )
        self._body: dict[str, Any] = {}
        rate = opts.get("rate_limit_per_second")
        self._bucket = TokenBucket(_positive(name, "rate_limit_per_second", rate)) if rate else None
        self._http: requests.Session | None = None
        self._masker = Masker()
        # Requests, retries and throttle waits of this source (its extract step's record reads them).
        self.http_observer = HttpObserver(name)

    @classmethod
    def check_options(cls, *, name: str, options: Mapping[str, Any]) -> None:
        """Every key and type of the source with its preset merged in (the preset's keys are declared
        too), then the paging style's own checks, when the pipeline file is read, before any run."""
        merged = with_preset(name, options)
        super().check_options(name=name, options=merged)
        build_paginator(name, _table(name, "pagination", merged.get("pagination", {})))

    # --- public -----------------------------------------------------------------------------------------

    def describe(self) -> str:
        return f"rest:{self.method} {self.mask(self.url)}"

    def iter_batches(self, window: ExtractWindow) -> Iterator[RawBatch]:
        buffer: list[dict[str, Any]] = []
        params = self._render_params(window)
        progress = self._watermark_filter()
        for page in self.paginator.pages(self, params):
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

    def probe(self, window: ExtractWindow, *, last: LastExtract | None = None) -> Probe:
        """The first page of the incremental request, asked from the saved watermark itself (no lookback)
        up to the window's end, through the connector's session and retries. Newer: a record the run
        would deliver (after the saved watermark, or at it and not delivered then) stamped before the
        window's end. Further pages (at most PROBE_MAX_PAGES) only while a page holds none such: records
        at the watermark already delivered, or past the window's end when the API has no `end_param`.
        Without `incremental` there is no watermark to compare with: the source cannot be probed."""
        incremental = self.incremental
        if incremental is None:
            raise ProbeUnsupported(
                f"source {self.name!r}: a REST source without `incremental` has no watermark to compare with"
            )
        saved = saved_ties(self.name, self.state, incremental)
        floor = saved.instant if saved.instant is not None else incremental.initial
        progress = WatermarkFilter(incremental, saved, floor, source=self.name)
        end = window.end if incremental.format == "iso" else Decimal(int(window.end.timestamp()))
        in_window: list[tuple[Any, str, str]] = []
        newer = False
        with closing(self.paginator.pages(self, self._render_params(window, floor=floor))) as pages:
            for number, page in enumerate(pages, start=1):
                admitted = {id(r) for r in progress.admit(page.records, page.shown)}
                for record in page.records:
                    instant = _cursor_instant(record, incremental)
                    if instant is None or instant >= end:
                        continue
                    print_ = fingerprint(record)
                    key = resolve_path(record, incremental.id_field)
                    in_window.append((instant, print_ if key in (MISSING, None) else str(key), print_))
                    newer = newer or id(record) in admitted
                if newer or number >= PROBE_MAX_PAGES:
                    break
        if not in_window:
            return Probe(fingerprint=None, newer=False)
        return Probe(
            fingerprint={
                "records": len(in_window),
                "watermark": watermark_text(max(i for i, _, _ in in_window), incremental.format),
                "digest": fingerprint(sorted([k, p] for _, k, p in in_window)),
            },
            newer=newer,
        )

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None

    # --- what a paginator uses (paging.PageClient) ------------------------------------------------------

    def fetch(self, url: str, params: Mapping[str, Any] | None, *, ends: Collection[int] = ()) -> Page:
        """One page. A status in `ends` is an empty page: the API's way of saying there are no more."""
        session = self._session()
        query, body = self._split(params)
        shown = self.method + " " + self.mask(requests.Request("GET", url, params=query).prepare().url or url)
        problem = ""
        for attempt in range(1, BODY_ATTEMPTS + 1):
            if attempt > 1:
                wait = self.backoff_factor * attempt
                self.http_observer.retried(
                    cause="body", status=None, wait=wait, attempt=attempt, throttled=False, resent=False
                )
                time.sleep(wait)
            if self._bucket is not None:
                self._bucket.acquire()
            self.http_observer.request_sent()
            try:
                response = session.request(
                    self.method, url, params=query, json=body, timeout=self.timeout, allow_redirects=False
                )
            except (
                requests.exceptions.ChunkedEncodingError,
                requests.exceptions.ContentDecodingError,
            ) as exc:
                problem = f"the body was cut short ({self.scrub(reason(exc))})"
                continue
            except (requests.RequestException, urllib3.exceptions.HTTPError) as exc:
                raise SourceError(
                    f"source {self.name!r}: {shown} failed (retried up to {self.max_retries} times): "
                    f"{self.scrub(reason(exc))}"
                ) from None
            logger.debug("source %s: %s -> %s", self.name, shown, response.status_code)
            if response.status_code in ends:
                return Page(response, None, [], shown)
            self._check_status(response, shown)
            if response.status_code == 204:
                return Page(response, None, [], shown)
            try:
                body = json.loads(response.content, parse_float=Decimal)
            except ValueError as exc:
                excerpt = value_excerpt(self.scrub(response.content[:200].decode("utf-8", "replace")))
                problem = f"HTTP {response.status_code} with malformed JSON ({exc}); body starts: {excerpt}"
                continue
            records = self._records(body, shown)
            return Page(response, body, records, shown)
        raise SourceError(f"source {self.name!r}: {shown} failed {BODY_ATTEMPTS} times: {problem}")

    def mask(self, url: str) -> str:
        return self._masker.mask(url)

    def scrub(self, text: str) -> str:
        return self._masker.scrub(text)

    def sends_credentials(self) -> bool:
        return bool(self.auth)

    # --- one page ---------------------------------------------------------------------------------------

    def _check_status(self, response: requests.Response, shown: str) -> None:
        status = response.status_code
        if 200 <= status < 300:
            return
        if 300 <= status < 400:
            location = self.mask(response.headers.get("Location", "?"))
            raise SourceError(
                f"source {self.name!r}: {shown} answered HTTP {status}, a redirect to {location}; "
                "set base_url to the final address"
            )
        body = value_excerpt(self.scrub(response.text[:200]))
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

    # --- incremental ------------------------------------------------------------------------------------

    def _watermark_filter(self) -> WatermarkFilter | None:
        if self.incremental is None:
            return None
        saved = saved_ties(self.name, self.state, self.incremental)
        return WatermarkFilter(self.incremental, saved, self.incremental.floor(saved), source=self.name)

    # --- session ----------------------------------------------------------------------------------------

    def _session(self) -> requests.Session:
        if self._http is None:
            auth, self._masker.secrets = credentials_from_env(self.name, self.auth)
            self._http = build_session(
                max_retries=self.max_retries,
                backoff_factor=self.backoff_factor,
                backoff_jitter=self.backoff_jitter,
                headers=self.headers,
                auth=auth,
                observer=self.http_observer,
            )
        return self._http

    # --- option parsing ---------------------------------------------------------------------------------

    def _method_options(self, method: Any, body: Any) -> tuple[str, dict[str, Any]]:
        if method not in METHODS:
            raise ConfigurationError(
                f"source {self.name!r}: method {method!r} is not one of {', '.join(METHODS)}"
            )
        table = _table(self.name, "body", body)
        if table and method != "POST":
            raise ConfigurationError(f'source {self.name!r}: body is sent with method = "POST" only')
        if method == "POST" and self.paginator.style == "link_header":
            raise ConfigurationError(
                f"source {self.name!r}: pagination.style 'link_header' follows next links with GET; "
                "it cannot page a POST search"
            )
        return method, table

    def _render_params(self, window: ExtractWindow, *, floor: Any = None) -> dict[str, Any]:
        """The request's values for `window`; the incremental filter from `floor` when given, else from the
        saved watermark less the lookback."""
        values = window.template_values()
        rendered = {key: self._render(key, value, values) for key, value in self.params.items()}
        self._body = {
            key: self._render(f"body.{key}", value, values) for key, value in self._body_template.items()
        }
        if self.incremental is None:
            return rendered
        if floor is None:
            floor = self.incremental.floor(saved_ties(self.name, self.state, self.incremental))
        return {**rendered, **self.incremental.params(floor, window)}

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


def _cursor_instant(record: Mapping[str, Any], incremental: Incremental) -> Any:
    """The record's cursor field as an instant; None when it has none (admit() rejects an unreadable one)."""
    value = resolve_path(record, incremental.cursor_field)
    if value is MISSING or value is None or value == "":
        return None
    return parse_instant(value, incremental.format)


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


def _set_path(body: dict[str, Any], path: str, value: Any) -> None:
    """Set `a.b.c` in a JSON body, creating the objects on the way."""
    *parents, last = path.split(".")
    for part in parents:
        body = body.setdefault(part, {})
    body[last] = value
