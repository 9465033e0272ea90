"""Pagination styles: one small class per style, each reading only its own options.

`PAGINATORS` maps a `pagination.style` to its class (the shape of dlt's `rest_client/paginators.py`). A
class lists the keys it reads in `options`; any other key in the table fails when the source is
configured, so an option given to the wrong style (`limit` with "cursor") is never silently ignored.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol
from urllib.parse import urljoin, urlsplit

import requests

from ..errors import ConfigurationError, SourceError
from ..options import TEXT, WHOLE, ListOf, Spec, Table, Tagged
from ..records import MISSING, resolve_path

__all__ = [
    "DEFAULT_MAX_PAGES",
    "PAGINATION",
    "PAGINATORS",
    "Page",
    "PageClient",
    "Paginator",
    "build_paginator",
    "paginator_style",
]

DEFAULT_MAX_PAGES = 100_000
COMMON_OPTIONS: Mapping[str, Spec] = {"style": TEXT, "max_pages": WHOLE}


@dataclass(frozen=True)
class Page:
    response: requests.Response
    body: Any
    records: list[dict[str, Any]]
    shown: str  # the request's URL with secrets masked, for messages


class PageClient(Protocol):
    """What a paginator needs from the connector: one request, and masking for its messages."""

    name: str
    url: str

    def fetch(self, url: str, params: Mapping[str, Any] | None, *, ends: Collection[int] = ()) -> Page: ...

    def mask(self, url: str) -> str: ...

    def scrub(self, text: str) -> str: ...

    def sends_credentials(self) -> bool: ...


class Paginator(ABC):
    """One paging style. Subclasses set `style`, the keys they read with their types in `options`, and
    `pages`."""

    style: ClassVar[str]
    options: ClassVar[Mapping[str, Spec]] = {}

    def __init__(self, source: str, table: Mapping[str, Any]) -> None:
        self.source = source
        allowed = frozenset(self.options) | frozenset(COMMON_OPTIONS)
        _reject_foreign_options(source, self.style, table, allowed)
        self.max_pages = _whole(source, "max_pages", table.get("max_pages", DEFAULT_MAX_PAGES), minimum=1)

    @abstractmethod
    def pages(self, client: PageClient, params: dict[str, Any]) -> Iterator[Page]:
        """The pages of one read, the first requested with `params`."""

    def follow(
        self,
        client: PageClient,
        params: dict[str, Any],
        param: str,
        next_cursor: Callable[[PageClient, Page], Any],
    ) -> Iterator[Page]:
        """Fetch, yield, and resend the query with `param` = `next_cursor(client, page)` until it gives None:
        the loop of the styles whose next page is named by a value of the last one (cursor, has_more)."""
        query = params
        seen: set[str] = set()
        for _ in range(self.max_pages):
            page = client.fetch(client.url, query)
            if page.records:
                yield page
            cursor = next_cursor(client, page)
            if cursor is None:
                return
            _check_new(client, page, cursor, seen)
            query = {**params, param: cursor}
        raise self.too_many_pages(client)

    def too_many_pages(self, client: PageClient) -> SourceError:
        return SourceError(
            f"source {client.name!r}: still more pages after {self.max_pages} pages from "
            f"{client.mask(client.url)}; raise pagination.max_pages if that is expected"
        )


class SinglePage(Paginator):
    """`none`: one request."""

    style = "none"

    def pages(self, client: PageClient, params: dict[str, Any]) -> Iterator[Page]:
        yield client.fetch(client.url, params)


class LinkHeaderPaginator(Paginator):
    """`link_header`: follow the `Link: <...>; rel="next"` URL as given (Shopify, GitHub)."""

    style = "link_header"

    def pages(self, client: PageClient, params: dict[str, Any]) -> Iterator[Page]:
        url: str = client.url
        query: dict[str, Any] | None = params
        seen = {client.url}
        for _ in range(self.max_pages):
            page = client.fetch(url, query)
            yield page
            next_url = page.response.links.get("next", {}).get("url")
            if not next_url:
                return
            # The next link carries the whole query (Shopify allows nothing else beside page_info).
            url, query = _next_url(client, page.response.url, next_url, seen), None
        raise self.too_many_pages(client)


class PageNumberPaginator(Paginator):
    """`page_number`: page=1, 2, ... until an empty page, the total-pages header, or an end status."""

    style = "page_number"
    options = {
        "page_param": TEXT,
        "start": WHOLE,
        "total_pages_header": TEXT,
        "end_statuses": ListOf(WHOLE, "a list of HTTP statuses"),
    }

    def __init__(self, source: str, table: Mapping[str, Any]) -> None:
        super().__init__(source, table)
        self.page_param = str(table.get("page_param", "page"))
        self.start = _whole(source, "start", table.get("start", 1))
        self.total_pages_header: str | None = table.get("total_pages_header")
        self.end_statuses = _end_statuses(source, table.get("end_statuses", []))

    def pages(self, client: PageClient, params: dict[str, Any]) -> Iterator[Page]:
        start = self.start
        for number in range(start, start + self.max_pages):
            ends = self.end_statuses if number > start else ()
            page = client.fetch(client.url, {**params, self.page_param: number}, ends=ends)
            if not page.records:
                return
            yield page
            total = _header_count(client, page, self.total_pages_header)
            if total is not None and number - start + 1 >= total:
                return
        raise self.too_many_pages(client)


class CursorPaginator(Paginator):
    """`cursor`: resend the query with the body's next cursor until none comes back (Square; with POST
    the cursor goes into the JSON body)."""

    style = "cursor"
    options = {"cursor_path": TEXT, "cursor_param": TEXT}

    def __init__(self, source: str, table: Mapping[str, Any]) -> None:
        super().__init__(source, table)
        self.cursor_path = str(table.get("cursor_path", "cursor"))
        self.cursor_param = str(table.get("cursor_param", "cursor"))

    def pages(self, client: PageClient, params: dict[str, Any]) -> Iterator[Page]:
        return self.follow(client, params, self.cursor_param, self._next_cursor)

    def _next_cursor(self, client: PageClient, page: Page) -> Any:
        cursor = resolve_path(page.body, self.cursor_path)
        return None if cursor is MISSING or cursor == "" else cursor


class HasMorePaginator(Paginator):
    """`has_more`: while the body's `has_more` is true, resend the query with `starting_after` = the id
    of the page's last record (Stripe). `style = "cursor"` with `has_more_path` also chooses it."""

    style = "has_more"
    options = {"has_more_path": TEXT, "starting_after_param": TEXT, "id_path": TEXT}

    def __init__(self, source: str, table: Mapping[str, Any]) -> None:
        super().__init__(source, table)
        self.has_more_path = str(table.get("has_more_path", "has_more"))
        self.starting_after_param = str(table.get("starting_after_param", "starting_after"))
        self.id_path = str(table.get("id_path", "id"))

    def pages(self, client: PageClient, params: dict[str, Any]) -> Iterator[Page]:
        return self.follow(client, params, self.starting_after_param, self._next_after)

    def _next_after(self, client: PageClient, page: Page) -> Any:
        has_more = resolve_path(page.body, self.has_more_path)
        if has_more is MISSING:
            raise SourceError(
                f"source {client.name!r}: {page.shown}: pagination.has_more_path "
                f"{self.has_more_path!r} is absent from the body"
            )
        if not _truthy(has_more) or not page.records:
            return None
        cursor = resolve_path(page.records[-1], self.id_path)
        if cursor is MISSING or cursor is None or cursor == "":
            raise SourceError(
                f"source {client.name!r}: {page.shown}: the last record has no "
                f"{self.id_path!r} (pagination.id_path) to continue after"
            )
        return cursor


class OffsetPaginator(Paginator):
    """`offset`: offset/limit; stop on a short page, or once the total the body or a header gives is
    reached."""

    style = "offset"
    options = {
        "offset_param": TEXT,
        "limit_param": TEXT,
        "limit": WHOLE,
        "start": WHOLE,
        "total_path": TEXT,
        "total_header": TEXT,
    }

    def __init__(self, source: str, table: Mapping[str, Any]) -> None:
        super().__init__(source, table)
        self.offset_param = str(table.get("offset_param", "offset"))
        self.limit_param = str(table.get("limit_param", "limit"))
        self.limit = _whole(source, "limit", table.get("limit", 100), minimum=1)
        self.start = _whole(source, "start", table.get("start", 0))
        self.total_path: str | None = table.get("total_path")
        self.total_header: str | None = table.get("total_header")

    def pages(self, client: PageClient, params: dict[str, Any]) -> Iterator[Page]:
        offset = self.start
        for _ in range(self.max_pages):
            page = client.fetch(
                client.url, {**params, self.offset_param: offset, self.limit_param: self.limit}
            )
            if page.records:
                yield page
            offset += len(page.records)
            if len(page.records) < self.limit:
                return
            total = self._total(client, page)
            if total is not None and offset - self.start >= total:
                return
        raise self.too_many_pages(client)

    def _total(self, client: PageClient, page: Page) -> int | None:
        total = _header_count(client, page, self.total_header)
        if self.total_path:
            found = resolve_path(page.body, self.total_path)
            total = None if found is MISSING or found is None else _count(found)
            if total is None and found is not MISSING and found is not None:
                raise SourceError(
                    f"source {client.name!r}: {page.shown}: pagination.total_path "
                    f"{self.total_path!r} is {found!r}, not a count"
                )
        return total


PAGINATORS: dict[str, type[Paginator]] = {
    cls.style: cls
    for cls in (
        SinglePage,
        LinkHeaderPaginator,
        PageNumberPaginator,
        CursorPaginator,
        HasMorePaginator,
        OffsetPaginator,
    )
}


def paginator_style(table: Mapping[str, Any]) -> Any:
    """The style a `pagination` table chooses (no table: one request)."""
    style = table.get("style", "none")
    if style == "cursor" and "has_more_path" in table:
        return "has_more"  # Stripe's has_more, as first spelt: a cursor style with has_more_path
    return style


# The `pagination` table as declared: its keys are those of the style it chooses (PAGINATORS).
PAGINATION = Tagged(
    "style",
    lambda: {name: Table({**COMMON_OPTIONS, **cls.options}) for name, cls in PAGINATORS.items()},
    default="none",
    choose=paginator_style,
)


def build_paginator(source: str, table: Mapping[str, Any]) -> Paginator:
    """The paginator a source's `pagination` table asks for (no table: one request)."""
    style = paginator_style(table)
    if style != table.get("style", "none"):
        table = {**table, "style": style}
    if style not in PAGINATORS:
        raise ConfigurationError(
            f"source {source!r}: pagination.style {style!r} is not one of {', '.join(PAGINATORS)}"
        )
    return PAGINATORS[style](source, table)


def _reject_foreign_options(
    source: str, style: str, table: Mapping[str, Any], allowed: frozenset[str]
) -> None:
    unknown = sorted(set(table) - allowed)
    if not unknown:
        return
    owners = sorted(
        {
            name
            for name, cls in PAGINATORS.items()
            if name != style and any(key in cls.options for key in unknown)
        }
    )
    hint = f"; style {', '.join(map(repr, owners))} reads it" if owners else ""
    raise ConfigurationError(
        f"source {source!r}: pagination.{', pagination.'.join(unknown)} is not an option of pagination "
        f"style {style!r} (its options: {', '.join(sorted(allowed))}{hint})"
    )


def _whole(source: str, option: str, value: Any, *, minimum: int = 0) -> int:
    try:
        number = int(value) if not isinstance(value, bool) else None
    except (TypeError, ValueError):
        number = None
    if number is None or number < minimum:
        limit = "positive" if minimum == 1 else f">= {minimum}"
        raise ConfigurationError(
            f"source {source!r}: pagination.{option} must be a {limit} whole number, got {value!r}"
        )
    return number


def _end_statuses(source: str, value: Any) -> frozenset[int]:
    if not isinstance(value, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) and 400 <= v < 500 for v in value
    ):
        raise ConfigurationError(
            f"source {source!r}: pagination.end_statuses must be a list of 4xx statuses, got {value!r}"
        )
    return frozenset(value)


def _next_url(client: PageClient, current: str, link: str, seen: set[str]) -> str:
    url = urljoin(current, link)
    here, there = urlsplit(client.url), urlsplit(url)
    if client.sends_credentials() and (here.scheme, here.hostname, here.port) != (
        there.scheme,
        there.hostname,
        there.port,
    ):
        raise SourceError(
            f"source {client.name!r}: the next-page link points to another server ({client.mask(url)}); "
            "not sending the credentials there"
        )
    if url in seen:
        raise SourceError(f"source {client.name!r}: the next-page link repeats {client.mask(url)} (a loop)")
    seen.add(url)
    return url


def _check_new(client: PageClient, page: Page, cursor: Any, seen: set[str]) -> None:
    if str(cursor) in seen:
        raise SourceError(
            f"source {client.name!r}: {page.shown}: the next cursor {client.scrub(str(cursor))!r} "
            "was already used (a loop)"
        )
    seen.add(str(cursor))


def _header_count(client: PageClient, page: Page, header: str | None) -> int | None:
    if not header or header not in page.response.headers:
        return None
    total = _count(page.response.headers[header])
    if total is None:
        raise SourceError(
            f"source {client.name!r}: {page.shown}: header {header} is "
            f"{page.response.headers[header]!r}, not a count"
        )
    return total


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
