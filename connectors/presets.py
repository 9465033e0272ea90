"""Ready-made REST source settings for common commerce APIs: `preset = "shopify"` in a source.

One declaration per API. A preset fills paging, auth, where the records are, the incremental filter with
its bound semantics, and the options that avoid each API's traps; every value is overridable by the
source's own keys (tables merge key by key). Facts: /work/shared/notes/sales-api-dialects.md and the APIs'
public documentation.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ConfigurationError
from .records import MISSING, resolve_path

__all__ = ["PRESETS", "Preset", "with_preset"]


@dataclass(frozen=True)
class Preset:
    options: Mapping[str, Any]
    requires: tuple[str, ...] = ()  # dotted keys only the user can know (the shop's address, a location)


SHOPIFY = Preset(
    requires=("base_url",),  # https://<shop>.myshopify.com
    options={
        "path": "/admin/api/2025-01/orders.json",
        # Without status=any Shopify lists open orders only: cancelled and closed ones vanish silently.
        "params": {"status": "any", "limit": "250"},
        "records_path": "orders",
        "auth": {"type": "header", "header": "X-Shopify-Access-Token", "value_env": "SHOPIFY_ACCESS_TOKEN"},
        "pagination": {"style": "link_header"},  # the next link carries page_info and nothing else
        # updated_at_min is "at or after": inclusive.
        "incremental": {
            "param": "updated_at_min",
            "end_param": "updated_at_max",
            "cursor_field": "updated_at",
            "bound": "inclusive",
        },
        "rate_limit_per_second": 2,  # the standard plan's leaky bucket drains at 2 requests/s
    },
)

STRIPE = Preset(
    options={
        "base_url": "https://api.stripe.com",
        "path": "/v1/charges",
        "params": {"limit": "100"},
        "records_path": "data",
        "auth": {"type": "bearer", "token_env": "STRIPE_SECRET_KEY"},
        "pagination": {
            "style": "has_more",
            "has_more_path": "has_more",
            "starting_after_param": "starting_after",
        },
        # Lists filter on creation only (Unix seconds); updates to old objects come through /v1/events.
        "incremental": {
            "param": "created[gte]",
            "end_param": "created[lt]",
            "cursor_field": "created",
            "format": "epoch",
            "bound": "inclusive",
        },
        "rate_limit_per_second": 25,
    },
)

WOOCOMMERCE = Preset(
    requires=("base_url",),  # https://shop.example.com
    options={
        "path": "/wp-json/wc/v3/orders",
        # dates_are_gmt: the filter and date_modified_gmt are UTC, not the site's time zone.
        "params": {"per_page": "100", "dates_are_gmt": "true", "orderby": "id", "order": "asc"},
        "auth": {
            "type": "basic",
            "username_env": "WOOCOMMERCE_CONSUMER_KEY",
            "password_env": "WOOCOMMERCE_CONSUMER_SECRET",
        },
        # Past its last page WooCommerce answers 400 (woocommerce_rest_invalid_page_number), not [].
        "pagination": {
            "style": "page_number",
            "total_pages_header": "X-WP-TotalPages",
            "end_statuses": [400],
        },
        # modified_after is a WordPress date_query "after": exclusive.
        "incremental": {
            "param": "modified_after",
            "end_param": "modified_before",
            "cursor_field": "date_modified_gmt",
            "bound": "exclusive",
        },
    },
)

SQUARE = Preset(
    requires=("body.location_ids",),  # the locations to search, at most 10
    options={
        "base_url": "https://connect.squareup.com",
        "path": "/v2/orders/search",
        "method": "POST",
        "headers": {"Square-Version": "2025-01-23"},
        "auth": {"type": "bearer", "token_env": "SQUARE_ACCESS_TOKEN"},
        # Filtering on updated_at needs sort_field UPDATED_AT.
        "body": {"limit": 500, "query": {"sort": {"sort_field": "UPDATED_AT", "sort_order": "ASC"}}},
        "records_path": "orders",
        "records_optional": True,  # an empty answer is {} with no "orders"
        "pagination": {"style": "cursor", "cursor_path": "cursor", "cursor_param": "cursor"},
        "incremental": {
            "param": "query.filter.date_time_filter.updated_at.start_at",
            "end_param": "query.filter.date_time_filter.updated_at.end_at",
            "cursor_field": "updated_at",
            "bound": "inclusive",
        },
    },
)

PRESETS: dict[str, Preset] = {
    "shopify": SHOPIFY,
    "stripe": STRIPE,
    "woocommerce": WOOCOMMERCE,
    "square": SQUARE,
}


def with_preset(name: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The source's options over its preset's, if it names one. A table merges key by key; `false` in
    place of a preset's table removes it (`incremental = false` for a full read)."""
    chosen = options.get("preset")
    if chosen is None:
        return dict(options)
    if chosen not in PRESETS:
        raise ConfigurationError(
            f"source {name!r}: preset {chosen!r} is not one of {', '.join(sorted(PRESETS))}"
        )
    preset = PRESETS[chosen]
    merged = _merge(preset.options, {k: v for k, v in options.items() if k != "preset"})
    for key in preset.requires:
        if resolve_path(merged, key) in (MISSING, None, "", []):
            raise ConfigurationError(f"source {name!r}: preset {chosen!r} needs {key} in the source")
    return merged


def _merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if value is False and isinstance(base.get(key), Mapping):
            merged.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(base.get(key), Mapping):
            merged[key] = _merge(base[key], value)
        else:
            merged[key] = value
    return merged
