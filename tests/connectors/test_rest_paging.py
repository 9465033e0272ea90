"""connectors.rest.paging: the registry chooses one class per style, and each style accepts only its own
keys, so an option given to the wrong style fails when the source is configured (paging itself is
exercised against a loopback server in test_rest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from connectors import build_connector
from connectors.errors import ConfigurationError
from connectors.presets import PRESETS, with_preset
from connectors.rest import RestConnector
from connectors.rest.paging import (
    PAGINATORS,
    CursorPaginator,
    HasMorePaginator,
    LinkHeaderPaginator,
    OffsetPaginator,
    PageNumberPaginator,
    SinglePage,
    build_paginator,
)
from etlcore.config import pipeline_parse
from tests.pipelines import dataset, pipeline_write

EXPECTED_CLASS = {
    "none": SinglePage,
    "link_header": LinkHeaderPaginator,
    "page_number": PageNumberPaginator,
    "cursor": CursorPaginator,
    "has_more": HasMorePaginator,
    "offset": OffsetPaginator,
}

# A key another style reads, given to each style.
MISPLACED = {
    "none": "limit",
    "link_header": "page_param",
    "page_number": "limit",
    "cursor": "limit",
    "has_more": "cursor_path",
    "offset": "total_pages_header",
}


def test_the_registry_holds_exactly_the_documented_styles():
    assert set(PAGINATORS) == set(EXPECTED_CLASS)


@pytest.mark.parametrize("style", sorted(EXPECTED_CLASS))
def test_the_registry_builds_the_class_of_each_style(style):
    paginator = build_paginator("orders", {"style": style})
    assert type(paginator) is EXPECTED_CLASS[style]
    assert paginator.style == style


def test_no_pagination_table_is_a_single_request():
    assert type(build_paginator("orders", {})) is SinglePage


def test_cursor_with_has_more_path_is_stripes_has_more_style():
    paginator = build_paginator("orders", {"style": "cursor", "has_more_path": "has_more", "id_path": "id"})
    assert type(paginator) is HasMorePaginator
    assert paginator.id_path == "id"


@pytest.mark.parametrize("style", sorted(MISPLACED))
def test_an_option_of_another_style_fails_naming_the_key_and_the_styles_keys(style):
    key = MISPLACED[style]
    with pytest.raises(ConfigurationError) as raised:
        build_paginator("orders", {"style": style, key: 5})
    message = str(raised.value)
    assert message.startswith(
        f"source 'orders': pagination.{key} is not an option of pagination style {style!r}"
    )
    allowed = sorted({*EXPECTED_CLASS[style].options, "style", "max_pages"})
    assert f"(its options: {', '.join(allowed)};" in message
    assert "\n" not in message


@pytest.mark.parametrize("style", sorted(EXPECTED_CLASS))
def test_a_misspelt_option_fails_for_every_style(style):
    with pytest.raises(ConfigurationError, match=rf"pagination\.max_page is not an option of .*'{style}'"):
        build_paginator("orders", {"style": style, "max_page": 10})


def test_the_error_says_which_style_reads_a_misplaced_key():
    with pytest.raises(ConfigurationError, match=r"pagination\.limit .*style 'offset' reads it\)$"):
        build_paginator("orders", {"style": "cursor", "limit": 50})


def test_an_unknown_style_lists_the_registered_ones():
    with pytest.raises(
        ConfigurationError, match=r"pagination\.style 'pages' is not one of none, link_header"
    ):
        build_paginator("orders", {"style": "pages"})


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"style": "offset", "limit": 0}, r"pagination\.limit must be a positive whole number, got 0"),
        ({"style": "page_number", "max_pages": 0}, r"pagination\.max_pages must be a positive whole number"),
        ({"style": "page_number", "end_statuses": [500]}, r"pagination\.end_statuses must be a list of 4xx"),
        ({"style": "offset", "start": "x"}, r"pagination\.start must be a >= 0 whole number, got 'x'"),
    ],
)
def test_a_styles_own_values_are_checked_in_its_constructor(table, message):
    with pytest.raises(ConfigurationError, match=message):
        build_paginator("orders", table)


def test_the_connector_refuses_a_limit_given_to_the_cursor_style():
    options = {
        "kind": "rest",
        "base_url": "http://127.0.0.1:9",
        "pagination": {"style": "cursor", "limit": 50},
    }
    with pytest.raises(ConfigurationError, match=r"source 'orders': pagination\.limit is not an option"):
        build_connector(name="orders", options=options)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_presets_pagination_is_valid_for_its_style(preset):
    table = PRESETS[preset].options["pagination"]
    paginator = build_paginator(preset, table)
    assert type(paginator) is EXPECTED_CLASS[table["style"]]


def test_a_key_added_to_a_presets_pagination_must_fit_the_presets_style():
    options = with_preset("orders", {"preset": "woocommerce", "base_url": "https://shop.example.com"})
    RestConnector.check_options(name="orders", options=options)
    with pytest.raises(ConfigurationError, match=r"^pagination: unknown key 'limit' for style 'page_number'"):
        RestConnector.check_options(
            name="orders",
            options={"preset": "woocommerce", "base_url": "https://x.example", "pagination": {"limit": 5}},
        )


def write_orders_pipeline(folder: Path, pagination: dict) -> Path:
    source = {
        "kind": "rest",
        "base_url": "http://127.0.0.1:9",
        "records_path": "orders",
        "pagination": pagination,
    }
    orders = dataset(source=source, id={"from": "id", "type": "string", "required": True})
    return pipeline_write(folder, datasets={"orders": orders})


def test_a_misplaced_pagination_key_fails_when_the_pipeline_file_is_read(tmp_path):
    path = write_orders_pipeline(tmp_path, {"style": "cursor", "cursor_path": "next"})
    assert pipeline_parse(path, environ={}).datasets["orders"].source["pagination"]["style"] == "cursor"

    write_orders_pipeline(tmp_path, {"style": "cursor", "limit": 50})
    with pytest.raises(ConfigurationError) as raised:
        pipeline_parse(path, environ={})
    message = str(raised.value)
    where = f"{path} [datasets.orders.source.pagination]"
    assert message.startswith(f"{where}: unknown key 'limit' for style 'cursor'")
    assert message.endswith("(known: style, max_pages, cursor_path, cursor_param; style 'offset' reads it)")
