"""REST incremental extraction across consecutive dates: every version of every record exactly once.

The servers (tests/connectors/sales_apis.py) filter the way the real APIs do: Shopify's updated_at_min is
inclusive, WooCommerce's modified_after exclusive. What must be delivered is counted from the server's store.
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from connectors import build_connector
from connectors.base import ExtractWindow
from connectors.errors import ConfigurationError

from .sales_apis import TOKEN, sales_api

SHOPIFY_PATH = "/admin/api/2025-01/orders.json"


def day(n: int) -> ExtractWindow:
    """Business date 2026-11-0<n> in UTC."""
    start = datetime(2026, 11, n, tzinfo=UTC)
    return ExtractWindow(business_date=date(2026, 11, n), start=start, end=start + timedelta(days=1))


def extract(
    options: dict[str, Any], state: dict | None, window: ExtractWindow
) -> tuple[list[dict], dict | None]:
    """One extraction as the extract service runs it; the state goes through JSON as it does when saved."""
    source = build_connector(name="orders", options=options, state=state)
    try:
        found = [record for batch in source.iter_batches(window) for record in batch]
    finally:
        source.close()
    return found, json.loads(json.dumps(source.next_state))


def versions(records: list[dict]) -> Counter:
    return Counter((int(str(r["id"]).removeprefix("sq")), r["version"]) for r in records)


@pytest.fixture
def shop(monkeypatch):
    monkeypatch.setenv("SHOP_TOKEN", TOKEN)
    with sales_api("shopify") as api:
        yield api


def shopify_options(api, **incremental: Any) -> dict[str, Any]:
    return {
        "kind": "rest",
        "base_url": api.url,
        "path": SHOPIFY_PATH,
        "params": {"status": "any", "limit": "2"},
        "records_path": "orders",
        "auth": {"type": "header", "header": "X-Shopify-Access-Token", "value_env": "SHOP_TOKEN"},
        "pagination": {"style": "link_header"},
        "incremental": {
            "param": "updated_at_min",
            "end_param": "updated_at_max",
            "cursor_field": "updated_at",
            **incremental,
        },
    }


def test_inclusive_filter_does_not_deliver_the_last_order_again_on_the_next_date(shop):
    options = shopify_options(shop)
    shop.store.put(1, "2026-11-06T10:00:00+00:00")
    shop.store.put(2, "2026-11-06T23:59:59+00:00")  # Friday's last order

    friday, state = extract(options, None, day(6))
    saturday, state = extract(options, state, day(7))  # no sales on Saturday

    assert versions(friday) == Counter({(1, 1): 1, (2, 1): 1})
    assert saturday == []
    shop.store.put(3, "2026-11-08T09:00:00+00:00")
    sunday, state = extract(options, state, day(8))
    assert versions(sunday) == Counter({(3, 1): 1})


def test_orders_sharing_the_watermark_second_split_across_runs_are_each_delivered_once(shop):
    options = shopify_options(shop)
    shop.store.put(5, "2026-11-06T18:00:00+00:00")
    first, state = extract(options, None, day(6))
    # Two more orders stamped the same second, committed after the first run read the endpoint.
    shop.store.put(4, "2026-11-06T18:00:00+00:00")
    shop.store.put(6, "2026-11-06T18:00:00+00:00")
    second, state = extract(options, state, day(7))
    third, state = extract(options, state, day(8))

    assert versions(first + second + third) == Counter(shop.store.history)
    assert versions(second) == Counter({(4, 1): 1, (6, 1): 1})
    assert third == []


def test_order_at_the_watermark_updated_again_within_the_same_second_comes_back_with_its_new_version(shop):
    options = shopify_options(shop)
    shop.store.put(1, "2026-11-06T18:00:00+00:00")
    first, state = extract(options, None, day(6))
    shop.store.put(1, "2026-11-06T18:00:00+00:00", status="cancelled")  # same second, new content
    shop.store.put(1, "2026-11-07T08:00:00+00:00", status="cancelled")  # and later again
    second, state = extract(options, state, day(7))

    assert versions(first) == Counter({(1, 1): 1})
    # The version stamped 18:00 was replaced before the second run; the API shows only the latest.
    assert versions(second) == Counter({(1, 3): 1})


def test_order_updated_again_at_the_watermark_between_runs_is_read_again(shop):
    options = shopify_options(shop)
    shop.store.put(1, "2026-11-06T18:00:00+00:00")
    shop.store.put(2, "2026-11-06T18:00:00+00:00")
    first, state = extract(options, None, day(6))
    shop.store.put(2, "2026-11-06T18:00:00+00:00", status="cancelled")
    second, state = extract(options, state, day(7))

    assert versions(first + second) == Counter(shop.store.history)
    assert versions(second) == Counter({(2, 2): 1})


def test_lookback_re_reads_its_interval_but_not_the_orders_at_the_watermark(shop):
    options = shopify_options(shop, lookback_seconds=3600)
    shop.store.put(1, "2026-11-06T17:30:00+00:00")
    shop.store.put(2, "2026-11-06T18:00:00+00:00")
    first, state = extract(options, None, day(6))
    second, state = extract(options, state, day(7))

    assert versions(second) == Counter({(1, 1): 1})  # inside the hour of lookback: expected again
    assert state["watermark"] == "2026-11-06T18:00:00+00:00"


def test_watermark_saved_before_ties_were_recorded_is_read_and_then_upgraded(shop):
    options = shopify_options(shop)
    shop.store.put(2, "2026-11-06T23:59:59+00:00")
    old_state = {"watermark": "2026-11-06T23:59:59+00:00"}  # the format saved before this change

    once, state = extract(options, old_state, day(7))  # the boundary order comes once more, as before
    then, state = extract(options, state, day(8))

    assert versions(once) == Counter({(2, 1): 1})
    assert then == []
    assert state["watermark"] == "2026-11-06T23:59:59+00:00"


def test_exclusive_filter_still_reads_orders_arriving_later_in_the_watermark_second(monkeypatch):
    monkeypatch.setenv("WC_KEY", "ck_test")
    monkeypatch.setenv("WC_SECRET", TOKEN)
    with sales_api("woocommerce") as api:
        options = {
            "kind": "rest",
            "base_url": api.url,
            "path": "/wp-json/wc/v3/orders",
            "params": {"dates_are_gmt": "true", "per_page": "2"},
            "auth": {"type": "basic", "username_env": "WC_KEY", "password_env": "WC_SECRET"},
            "pagination": {"style": "page_number", "total_pages_header": "X-WP-TotalPages"},
            "incremental": {
                "param": "modified_after",
                "cursor_field": "date_modified_gmt",
                "bound": "exclusive",
                "initial": "2026-01-01T00:00:00Z",
            },
        }
        api.store.put(1, "2026-11-06T18:00:00+00:00")
        first, state = extract(options, None, day(6))
        api.store.put(2, "2026-11-06T18:00:00+00:00")  # same second, after the run
        second, state = extract(options, state, day(7))
        third, state = extract(options, state, day(8))

    assert versions(first + second + third) == Counter(api.store.history)
    assert third == []


def test_incremental_param_also_given_in_params_is_a_configuration_error_naming_source_and_key(shop):
    options = shopify_options(shop)
    options["params"] = {**options["params"], "updated_at_min": "{window_start}"}

    with pytest.raises(ConfigurationError) as caught:
        build_connector(name="orders", options=options)

    message = str(caught.value)
    assert "source 'orders'" in message and "updated_at_min" in message and "\n" not in message


def test_unknown_bound_is_a_configuration_error(shop):
    with pytest.raises(ConfigurationError, match=r"source 'orders': incremental.bound 'open' is not one of"):
        build_connector(name="orders", options=shopify_options(shop, bound="open"))
