"""REST presets against loopback servers that behave like Shopify, Stripe, WooCommerce and Square.

Each dialect is extracted over consecutive dates with saved state; every version of every order must be
delivered exactly once, counted from the server's store (tests/connectors/sales_apis.py).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from connectors import build_connector
from connectors.errors import ConfigurationError, SourceError
from connectors.presets import PRESETS, with_preset

from .sales_apis import TOKEN, sales_api
from .test_rest_incremental import day, extract, versions

ENV = {
    "SHOPIFY_ACCESS_TOKEN": TOKEN,
    "STRIPE_SECRET_KEY": TOKEN,
    "WOOCOMMERCE_CONSUMER_KEY": "ck_test",
    "WOOCOMMERCE_CONSUMER_SECRET": TOKEN,
    "SQUARE_ACCESS_TOKEN": TOKEN,
}

# Small pages so every run pages; the rest is the preset's. Tables merge into the preset's key by key.
SMALL_PAGES = {
    "shopify": {"params": {"limit": "2"}, "rate_limit_per_second": 1000},
    "stripe": {"params": {"limit": "2"}, "rate_limit_per_second": 1000},
    "woocommerce": {"params": {"per_page": "2"}},
    "square": {"body": {"limit": 2, "location_ids": ["L1"]}},
}


@pytest.fixture(autouse=True)
def credentials(monkeypatch):
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)


def source_options(dialect: str, api, **overrides: Any) -> dict[str, Any]:
    return {"kind": "rest", "preset": dialect, "base_url": api.url, **SMALL_PAGES[dialect], **overrides}


def run_dates(api, options: dict[str, Any], dates: list[int], edits: dict[int, Any]) -> list[dict]:
    """Extract the dates in order, each from the previous one's saved state; `edits[n]` changes the shop
    after date n's extract."""
    delivered: list[dict] = []
    state = None
    for n in dates:
        found, state = extract(options, state, day(n))
        delivered += found
        if n in edits:
            edits[n](api.store)
    return delivered


def shop_day_one(store) -> None:
    store.put(1, "2026-11-01T09:00:00+00:00")
    store.put(2, "2026-11-01T12:00:00+00:00", status="cancelled")
    store.put(3, "2026-11-01T23:59:59+00:00")  # the day's last second, shared
    store.put(4, "2026-11-01T23:59:59+00:00")
    store.put(5, "2026-11-01T17:00:00+00:00")


def after_day_one(store) -> None:
    store.put(6, "2026-11-01T23:59:59+00:00")  # committed late within the watermark's second
    store.put(7, "2026-11-02T10:00:00+00:00")


def after_day_two_with_updates(store) -> None:
    store.put(1, "2026-11-03T08:00:00+00:00", status="cancelled")  # an old order updated again
    store.put(7, "2026-11-03T09:00:00+00:00")


def after_day_two_new_only(store) -> None:
    store.put(8, "2026-11-03T08:00:00+00:00")


@pytest.mark.parametrize("dialect", ["shopify", "woocommerce", "square"])
def test_preset_delivers_every_version_once_over_consecutive_dates(dialect):
    with sales_api(dialect) as api:
        shop_day_one(api.store)
        delivered = run_dates(
            api,
            source_options(dialect, api),
            [1, 2, 3, 4],  # nothing happens on the 4th: it must deliver nothing
            {1: after_day_one, 2: after_day_two_with_updates},
        )

    assert versions(delivered) == Counter(api.store.history)
    assert (1, 2) in versions(delivered) and (7, 2) in versions(delivered)  # updates come again


def test_stripe_preset_delivers_every_object_once_over_consecutive_dates():
    # Stripe lists filter on `created`, which never changes: updates to old objects are only visible
    # through /v1/events, so this scenario creates objects only.
    with sales_api("stripe") as api:
        shop_day_one(api.store)
        delivered = run_dates(
            api, source_options("stripe", api), [1, 2, 3, 4], {1: after_day_one, 2: after_day_two_new_only}
        )

    assert versions(delivered) == Counter(api.store.history)
    assert all(r["object"] == "charge" for r in delivered)


def test_shopify_preset_lists_cancelled_orders_too():
    with sales_api("shopify") as api:
        shop_day_one(api.store)
        found, _ = extract(source_options("shopify", api), None, day(1))
        without, _ = extract(source_options("shopify", api, params={"status": "open"}), None, day(1))

    assert 2 in {r["id"] for r in found}
    assert 2 not in {r["id"] for r in without}  # what Shopify does when status is left out


def test_woocommerce_preset_takes_a_400_past_the_last_page_as_the_end():
    with sales_api("woocommerce") as api:
        shop_day_one(api.store)
        api.store.stale_total_pages = 1  # the client asks for one page too many
        found, _ = extract(source_options("woocommerce", api), None, day(1))
        with pytest.raises(SourceError, match="HTTP 400"):
            extract(source_options("woocommerce", api, pagination={"end_statuses": []}), None, day(1))

    assert versions(found) == Counter(api.store.history)
    assert [s.query["page"] for s in api.seen[:4]] == ["1", "2", "3", "4"]  # 3 real pages; the 4th: 400


def test_square_preset_posts_the_same_query_with_the_cursor_in_the_body():
    with sales_api("square") as api:
        nothing, _ = extract(source_options("square", api), None, day(1))  # Square answers {}
        shop_day_one(api.store)
        api.seen.clear()
        found, _ = extract(source_options("square", api), None, day(1))

    assert nothing == []
    assert versions(found) == Counter(api.store.history)
    first, *following = [s.body for s in api.seen]
    assert following and all({**b, "cursor": None} == {**first, "cursor": None} for b in following)
    assert first["location_ids"] == ["L1"] and first["limit"] == 2  # the user's keys merged in
    assert first["query"]["sort"] == {"sort_field": "UPDATED_AT", "sort_order": "ASC"}  # the preset's


def test_square_preset_without_location_ids_is_a_configuration_error_naming_the_key():
    with pytest.raises(ConfigurationError, match=r"source 'orders': preset 'square' needs body.location_ids"):
        build_connector(name="orders", options={"kind": "rest", "preset": "square"})


def test_unknown_preset_is_a_configuration_error_listing_the_known_ones():
    with pytest.raises(ConfigurationError, match=r"preset 'shopyfi' is not one of shopify, square, stripe"):
        build_connector(name="orders", options={"kind": "rest", "preset": "shopyfi", "base_url": "http://x"})


def test_user_keys_override_preset_values_and_false_removes_a_preset_table():
    merged = with_preset(
        "orders",
        {
            "preset": "shopify",
            "base_url": "https://shop.example",
            "params": {"limit": "50"},
            "incremental": False,
        },
    )

    assert merged["params"] == {"status": "any", "limit": "50"}
    assert "incremental" not in merged
    assert merged["auth"] == PRESETS["shopify"].options["auth"]


def test_user_param_that_the_preset_filter_sets_is_a_configuration_error():
    with pytest.raises(ConfigurationError, match=r"source 'orders': params.updated_at_min is also"):
        build_connector(
            name="orders",
            options={
                "kind": "rest",
                "preset": "shopify",
                "base_url": "http://x",
                "params": {"updated_at_min": "1"},
            },
        )
