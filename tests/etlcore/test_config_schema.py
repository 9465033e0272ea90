"""The pipeline file is checked completely when it is read: every key and type against its table's
declaration (source options against their kind's), and every name that becomes a path against one pattern."""

from __future__ import annotations

from io import StringIO
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command

from connectors import connector_kinds
from connectors.presets import PRESETS
from connectors.rest.incremental import INCREMENTAL_OPTIONS
from etlcore.config import COLUMN, DATASET, NAME, PIPELINE, pipeline_load, pipeline_name_check, pipeline_parse
from etlcore.errors import ConfigurationError
from etlcore.models import PipelineRun
from tests.pipelines import dataset, pipeline_toml, pipeline_write

SHIPPED = sorted((Path(settings.BASE_DIR) / "conf" / "pipelines").glob("*.toml"))
ORDERS = {
    "order_id": {"from": "id", "required": True},
    "quantity": {"from": "qty", "type": "int", "required": True},
}


def orders_file(**quantity: object) -> dict:
    return dataset("orders.csv", order_id=ORDERS["order_id"], quantity={**ORDERS["quantity"], **quantity})


def parse_text(folder: Path, text: str):
    path = folder / "shop.toml"
    path.write_text(text, encoding="utf-8")
    return pipeline_parse(path, environ={})


def refusal(folder: Path, text: str) -> str:
    with pytest.raises(ConfigurationError) as raised:
        parse_text(folder, text)
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(str(folder / "shop.toml"))
    return message.removeprefix(str(folder / "shop.toml"))


def good_text(**parts) -> str:
    return pipeline_toml(datasets={"orders": orders_file()}, **parts)


# --- unknown keys: each typo the issue lists, through pipeline_parse --------------------------------------

TOP_KEYS = (
    "name, description, timezone, staging_root, extract_workers, engine, spark, dask, warehouse, run, queue, "
    "trigger, datasets"
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            good_text(top='timezon = "Europe/Paris"'),
            f": unknown key 'timezon' (did you mean 'timezone'? known: {TOP_KEYS})",
        ),
        (
            good_text(top="extract_worker = 2"),
            f": unknown key 'extract_worker' (did you mean 'extract_workers'? known: {TOP_KEYS})",
        ),
        (
            good_text(top='staging_rot = "/srv/staging"'),
            f": unknown key 'staging_rot' (did you mean 'staging_root'? known: {TOP_KEYS})",
        ),
        (
            good_text(database="default").replace('database = "default"', 'databse = "other"'),
            " [warehouse]: unknown key 'databse' (did you mean 'database'? known: database)",
        ),
        (
            pipeline_toml(datasets={"orders": orders_file(requried=True)}),
            " [datasets.orders.columns.quantity]: unknown key 'requried' (did you mean 'required'? "
            "known: from, type, required, pii)",
        ),
        (
            good_text() + '[spark.option]\nrates = { dataset = "rates" }\n',
            " [spark]: unknown key 'option' (did you mean 'options'? known: job, master, conf, "
            "pseudonym_key_env, pii_keys_env, erasure_key_env, reporting_currency, timeout_seconds, env, "
            "options)",
        ),
    ],
    ids=["timezon", "extract_worker", "staging_rot", "warehouse-databse", "column-requried", "spark-option"],
)
def test_a_misspelt_key_fails_naming_the_file_table_key_closest_key_and_known_keys(tmp_path, text, expected):
    assert refusal(tmp_path, text) == expected


def test_the_correctly_spelt_keys_of_those_typos_parse(tmp_path):
    top = 'timezone = "Europe/Paris"\nextract_workers = 2\nstaging_root = "/srv/staging"'
    text = pipeline_toml(datasets={"orders": orders_file(required=False)}, top=top, database="default")
    config = parse_text(tmp_path, text + '[spark.options]\nrates = { dataset = "orders" }\n')
    assert (str(config.timezone), config.extract_workers, config.staging_root) == (
        "Europe/Paris",
        2,
        Path("/srv/staging"),
    )
    assert config.database == "default" and config.spark.options == {"rates": {"dataset": "orders"}}
    assert [c.required for c in config.datasets["orders"].columns] == [True, False]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (good_text(top='extract_workers = "two"'), ": extract_workers must be a whole number, got 'two'"),
        (
            pipeline_toml(datasets={"orders": orders_file(required="yes")}),
            " [datasets.orders.columns.quantity]: required must be true or false, got 'yes'",
        ),
        (good_text(spark={"timeout_seconds": "60"}), " [spark]: timeout_seconds must be a number, got '60'"),
        (
            pipeline_toml(datasets={"orders": dataset("orders.csv", key="order_id", order_id={})}),
            " [datasets.orders]: key must be a list of texts, got 'order_id'",
        ),
        (
            good_text().replace('[spark]\njob = "spark_jobs.sales_daily"', 'spark = "sales"'),
            ": spark must be a table, got 'sales'",
        ),
        (
            pipeline_toml(datasets={"orders": orders_file(type=4)}),
            " [datasets.orders.columns.quantity]: type must be text, got 4",
        ),
    ],
    ids=["extract_workers-text", "required-text", "timeout-text", "key-text", "spark-text", "type-number"],
)
def test_a_known_key_of_the_wrong_type_fails_in_one_line_naming_file_table_and_key(tmp_path, text, expected):
    assert refusal(tmp_path, text) == expected


# --- source options: each kind's own declaration ----------------------------------------------------------

REST = {"kind": "rest", "base_url": "http://127.0.0.1:9", "records_path": "orders"}


def with_source(source: dict) -> str:
    return pipeline_toml(datasets={"orders": dataset(source=source, order_id=ORDERS["order_id"])})


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (
            {"kind": "file", "pathh": "orders.csv"},
            " [datasets.orders.source]: unknown key 'pathh' (did you mean 'path'? known: kind, path, "
            "base_dir, format, csv, encoding, batch_size, required, window_filter)",
        ),
        (
            {"kind": "file", "path": "o.csv", "csv": {"delimter": ";"}},
            " [datasets.orders.source.csv]: unknown key 'delimter' (did you mean 'delimiter'? ",
        ),
        (
            {"kind": "file", "path": "o.csv", "window_filter": {"colum": "At", "format": "%Y"}},
            " [datasets.orders.source.window_filter]: unknown key 'colum' (did you mean 'column'? ",
        ),
        (
            {"kind": "file", "path": "o.csv", "required": "yes"},
            " [datasets.orders.source]: required must be true or false, got 'yes'",
        ),
        (
            {**REST, "base_ur": "x"},
            " [datasets.orders.source]: unknown key 'base_ur' (did you mean 'base_url'? ",
        ),
        (
            {**REST, "auth": {"type": "bearer", "toke_env": "T"}},
            " [datasets.orders.source.auth]: unknown key 'toke_env' for type 'bearer' "
            "(did you mean 'token_env'? known: type, token_env)",
        ),
        (
            {**REST, "auth": {"type": "bearer", "value_env": "T"}},
            " [datasets.orders.source.auth]: unknown key 'value_env' for type 'bearer' "
            "(known: type, token_env; type 'header' reads it)",
        ),
        (
            {**REST, "incremental": {"param": "since", "cursor_feild": "updated_at"}},
            " [datasets.orders.source.incremental]: unknown key 'cursor_feild' "
            "(did you mean 'cursor_field'? ",
        ),
        (
            {**REST, "pagination": {"style": "offset", "limt": 50}},
            " [datasets.orders.source.pagination]: unknown key 'limt' for style 'offset' "
            "(did you mean 'limit'? ",
        ),
        (
            {**REST, "timeout_seconds": "30"},
            " [datasets.orders.source]: timeout_seconds must be a number, got '30'",
        ),
        (
            {
                "kind": "rest",
                "preset": "shopify",
                "base_url": "https://a.example",
                "incremental": {"lookback": 5},
            },
            " [datasets.orders.source.incremental]: unknown key 'lookback' "
            "(did you mean 'lookback_seconds'? ",
        ),
        (
            {"kind": "postgres", "dsn_evn": "PG", "table": "orders"},
            " [datasets.orders.source]: unknown key 'dsn_evn' (did you mean 'dsn_env'? ",
        ),
        (
            {"kind": "postgres", "dsn_env": "PG", "table": "orders", "batch_size": "1000"},
            " [datasets.orders.source]: batch_size must be a whole number, got '1000'",
        ),
        (
            {"kind": "s3", "bukcet": "b"},
            " [datasets.orders.source]: unknown key 'bukcet' (did you mean 'bucket'? ",
        ),
        (
            {"kind": "s3", "bucket": "b", "csv": {"block_size": 1}},
            " [datasets.orders.source.csv]: unknown key 'block_size' (",
        ),
    ],
    ids=[
        "file-top",
        "file-csv",
        "file-window_filter",
        "file-type",
        "rest-top",
        "rest-auth",
        "rest-auth-other-type",
        "rest-incremental",
        "rest-pagination",
        "rest-type",
        "rest-preset-merged",
        "postgres-top",
        "postgres-type",
        "s3-top",
        "s3-csv",
    ],
)
def test_a_source_option_its_kind_does_not_declare_fails_when_the_file_is_read(tmp_path, source, expected):
    assert refusal(tmp_path, with_source(source)).startswith(expected)


def test_a_source_check_beyond_keys_and_types_names_the_file_and_table_too(tmp_path):
    message = refusal(tmp_path, with_source({**REST, "preset": "shopfy"}))
    assert message.startswith(" [datasets.orders.source]: preset 'shopfy' is not one of shopify, square, ")
    message = refusal(tmp_path, with_source({**REST, "pagination": {"style": "cursor", "limit": 5}}))
    assert message.startswith(" [datasets.orders.source.pagination]: unknown key 'limit' for style 'cursor'")


@pytest.mark.parametrize("kind", sorted(connector_kinds()))
def test_every_source_kind_declares_its_options_and_its_connector_reads_no_other(kind):
    declared = connector_kinds()[kind].option_schema
    assert "kind" in declared.keys
    with pytest.raises(ConfigurationError, match=r"source 'orders': unknown option ko"):
        connector_kinds()[kind](name="orders", options={"kind": kind, "ko": 1})


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_rest_preset_fits_the_rest_declaration(preset):
    given = {"base_url": "https://shop.example.com", "body.location_ids": {"body": {"location_ids": ["L1"]}}}
    options: dict = {"kind": "rest", "preset": preset}
    for key in PRESETS[preset].requires:
        options.update({key: given[key]} if key == "base_url" else given[key])
    connector_kinds()["rest"].check_options(name="orders", options=options)


# --- names that become paths ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["../../../escaped", "Orders", "order-lines", "2orders", "o" * 64, "orders/../x", "órders", ""]
)
def test_a_dataset_name_that_is_not_a_safe_name_is_refused(tmp_path, name):
    message = refusal(tmp_path, pipeline_toml(datasets={name: orders_file()}))
    assert message.startswith(" [datasets]: dataset name ")
    assert message.endswith(
        "is not valid: a lowercase letter, then lowercase letters, digits or _ (at most 63 characters)"
    )


def test_an_escaping_dataset_name_is_refused_before_anything_is_written(tmp_path):
    staging = tmp_path / "staging"
    text = pipeline_toml(datasets={"../../../escaped": orders_file()}, staging=staging)
    assert refusal(tmp_path, text) == (
        " [datasets]: dataset name '../../../escaped' is not valid: a lowercase letter, then lowercase "
        "letters, digits or _ (at most 63 characters)"
    )
    assert not staging.exists()


def test_the_longest_safe_name_parses_everywhere(tmp_path):
    longest = "a" + "b" * 62
    rule = f'[[datasets.{longest}.rules]]\ncode = "{longest}"\ncheck = "required"\ncolumn = "order_id"\n'
    products = dataset("orders.csv", order_id=ORDERS["order_id"], extra=rule)
    path = pipeline_write(tmp_path, longest, datasets={longest: products})
    config = pipeline_parse(path, environ={})
    assert (config.name, list(config.datasets), config.datasets[longest].rules[0].code) == (
        longest,
        [longest],
        longest,
    )


def test_a_rule_code_follows_the_same_name_pattern(tmp_path):
    code = "r" * 64
    rule = f'[[datasets.orders.rules]]\ncode = "{code}"\ncheck = "required"\ncolumn = "order_id"\n'
    text = pipeline_toml(datasets={"orders": dataset("o.csv", order_id=ORDERS["order_id"], extra=rule)})
    assert "rule 1: `code` must be lower_snake_case" in refusal(tmp_path, text)


@pytest.mark.parametrize("name", ["../shop", "Shop", "x" * 64])
def test_the_pipeline_name_in_the_file_must_be_a_safe_name(tmp_path, name):
    message = refusal(tmp_path, pipeline_toml(name, datasets={"orders": orders_file()}))
    assert message.startswith(f": name {name!r}"[:20]) and "is not valid: a lowercase letter" in message


@pytest.mark.parametrize("name", ["x" * 500, "../../etc/passwd", "retail demo", "retail_demo;drop"])
def test_an_unsafe_pipeline_name_is_refused_before_it_is_looked_up(name, pipeline_dir):
    with pytest.raises(ConfigurationError) as raised:
        pipeline_load(name)
    message = str(raised.value)
    assert message.startswith("pipeline name ") and message.endswith("(at most 63 characters)")
    assert "\n" not in message and len(message) < 200  # a hostile name is cut, not echoed whole
    with pytest.raises(ConfigurationError):
        pipeline_name_check(name)


def test_every_name_the_suite_and_the_shipped_pipelines_use_is_safe():
    used = ["retail_demo", "online_retail", "shop", "api", "bench", "limits", "other", "web", "order_lines"]
    assert [n for n in used if not NAME.match(n)] == []


@pytest.mark.django_db(databases="__all__")
def test_an_over_long_pipeline_on_the_command_line_fails_in_one_line_with_a_failed_run(pipeline_dir):
    with pytest.raises(CommandError) as raised:
        call_command("run_pipeline", pipeline="x" * 500, business_date="2026-11-01", stdout=StringIO())
    message = str(raised.value)
    assert message.startswith("pipeline name 'xxxx") and "\n" not in message and len(message) < 200
    run = PipelineRun.objects.using("default").latest("id")
    assert (run.status, run.error) == ("failed", message)
    assert ("x" * 500).startswith(run.pipeline)


@pytest.mark.django_db(databases="__all__")
def test_the_failed_run_of_an_over_long_pipeline_name_fits_its_column(pipeline_dir):
    with pytest.raises(CommandError):
        call_command("run_pipeline", pipeline="x" * 500, business_date="2026-11-01", stdout=StringIO())
    run = PipelineRun.objects.using("default").latest("id")
    assert len(run.pipeline) <= PipelineRun._meta.get_field("pipeline").max_length


# --- what must keep parsing -------------------------------------------------------------------------------


@pytest.mark.parametrize("shipped", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_every_shipped_pipeline_parses(shipped):
    assert pipeline_parse(shipped, environ={}).name == shipped.stem


def test_every_part_the_test_factory_writes_parses(tmp_path):
    guards = '[datasets.products.guards]\nmin_rows = 1\nmax_drop = { value = 0.5, on_breach = "warn" }\n'
    rule = '[[datasets.products.rules]]\ncode = "no_sku"\ncheck = "required"\ncolumn = "sku"\n'
    products = dataset(
        "products.csv",
        options={"version_column": "at", "drift": "fail", "business_date_column": "at", "explode": "lines"},
        extra=guards + rule,
        sku={"from": "SKU", "type": "string", "required": True, "pii": False},
        at={"type": "timestamp"},
    )
    orders = dataset(source={**REST, "auth": {"type": "bearer", "token_env": "T"}}, key=[], id={})
    path = pipeline_write(
        tmp_path,
        datasets={"products": products, "orders": orders},
        spark={"master": "local[2]", "reporting_currency": "GBP", "timeout_seconds": 600},
        spark_conf={"spark.ui.enabled": "false"},
        database="default",
        staging=tmp_path / "staging",
        top='description = "all parts"\ntimezone = "Europe/London"\nextract_workers = 2',
    )
    config = pipeline_parse(path, environ={})
    assert list(config.datasets) == ["products", "orders"] and config.spark.conf == {
        "spark.ui.enabled": "false"
    }


DOCS = Path(settings.BASE_DIR) / "docs" / "configuration.md"


def documented_keys(heading: str) -> set[str]:
    """The keys of the first table after a heading of docs/configuration.md (`a`, `b` rows give both)."""
    section = DOCS.read_text(encoding="utf-8").split(f"{heading}\n", 1)[1]
    rows = [line for line in section.split("\n\n|", 1)[0].splitlines() if line.startswith("| `")]
    if not rows:  # the table follows a paragraph
        rows = [line for line in section.split("\n| key |", 1)[1].split("\n\n", 1)[0].splitlines()]
    return {key for row in rows for key in row.split("|")[1].split("`")[1::2]}


@pytest.mark.parametrize(
    ("heading", "declared", "undocumented"),
    [
        (
            "## Top level",
            PIPELINE.keys,
            {"spark", "dask", "warehouse", "run", "queue", "trigger", "datasets"},
        ),
        ("## `[run]`", PIPELINE.keys["run"].keys, {"retries"}),
        ("## `[queue]`", PIPELINE.keys["queue"].keys, set()),
        ("## `[trigger]`", PIPELINE.keys["trigger"].keys, set()),
        ("### `[run.retries]`", PIPELINE.keys["run"].keys["retries"].keys, set()),
        ("## `[spark]`", PIPELINE.keys["spark"].keys, set()),
        ("## `[dask]`", PIPELINE.keys["dask"].keys, set()),
        ("## `[warehouse]`", PIPELINE.keys["warehouse"].keys, set()),
        ("## `[datasets.<name>]`", DATASET.keys, {"source", "columns", "rules"}),
        ("### `[datasets.<name>.columns]`", COLUMN.keys, set()),
        (
            '### `[datasets.<name>.source]`: `kind = "file"`',
            connector_kinds()["file"].option_schema.keys,
            {"kind"},
        ),
        (
            '### `[datasets.<name>.source]`: `kind = "rest"`',
            connector_kinds()["rest"].option_schema.keys,
            {"kind"},
        ),
        (
            '### `[datasets.<name>.source]`: `kind = "postgres"`',
            connector_kinds()["postgres"].option_schema.keys,
            {"kind"},
        ),
        (
            '### `[datasets.<name>.source]`: `kind = "s3"`',
            connector_kinds()["s3"].option_schema.keys,
            {"kind"},
        ),
        ("## Incremental extraction", INCREMENTAL_OPTIONS.keys, set()),
    ],
    ids=[
        "top",
        "run",
        "queue",
        "trigger",
        "retries",
        "spark",
        "dask",
        "warehouse",
        "dataset",
        "columns",
        "file",
        "rest",
        "postgres",
        "s3",
        "incremental",
    ],
)
def test_every_declared_key_is_documented_and_every_documented_key_declared(heading, declared, undocumented):
    assert documented_keys(heading) == set(declared) - undocumented
