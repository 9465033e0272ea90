"""connectors.postgres against a real PostgreSQL database whose source schema each test creates."""

from __future__ import annotations

import time
from datetime import UTC, date, datetime

import pyarrow as pa
import pytest

from connectors import build_connector
from connectors.base import ExtractWindow
from connectors.errors import ConfigurationError, SourceError
from connectors.postgres import PostgresConnector
from connectors.records import to_staging_batch

pytestmark = pytest.mark.postgres

FETCHES = pytest.mark.parametrize("fetch", ["copy", "cursor"])

# Eleven orders, three or four to a timestamp, so with batch_size=2 ties straddle batch boundaries.
ORDERS = [
    (1, "2026-11-01 08:00:00+00", "a"),
    (2, "2026-11-01 08:00:00+00", "b"),
    (3, "2026-11-01 08:00:00+00", "c"),
    (4, "2026-11-01 09:30:00+00", "d"),
    (5, "2026-11-01 09:30:00+00", "e"),
    (6, "2026-11-01 09:30:00+00", "f"),
    (7, "2026-11-01 09:30:00+00", "g"),
    (8, "2026-11-01 23:59:59.999999+00", "h"),
    (9, "2026-11-02 00:00:00+00", "i"),  # the next window's
    (10, "2026-11-02 00:00:00+00", "j"),
    (11, "2026-11-02 05:00:00+00", "k"),
]


def connector(state=None, **options) -> PostgresConnector:
    defaults = {"kind": "postgres", "dsn_env": "SALES_DB_URL"}
    built = build_connector(name=options.pop("name", "orders"), options={**defaults, **options}, state=state)
    assert isinstance(built, PostgresConnector)
    return built


def incremental(state=None, **options) -> PostgresConnector:
    defaults = {
        "table": "orders",
        "mode": "incremental",
        "watermark_column": "updated_at",
        "tiebreaker_column": "id",
        "batch_size": 2,
    }
    return connector(state, **{**defaults, **options})


def rows(source: PostgresConnector, window: ExtractWindow) -> list[dict]:
    out: list[dict] = []
    for batch in source.iter_batches(window):
        assert isinstance(batch, pa.RecordBatch)
        assert batch.num_rows <= source.batch_size
        out.extend(batch.to_pylist())
    return out


def day(d: int) -> ExtractWindow:
    return ExtractWindow(
        business_date=date(2026, 11, d),
        start=datetime(2026, 11, d, tzinfo=UTC),
        end=datetime(2026, 11, d + 1, tzinfo=UTC),
    )


@pytest.fixture
def orders(source_db):
    source_db.execute(
        "CREATE TABLE orders (id bigint PRIMARY KEY, updated_at timestamptz NOT NULL, note text)"
    )
    source_db.execute(
        "INSERT INTO orders VALUES " + ", ".join(["(%s, %s, %s)"] * len(ORDERS)),
        [v for row in ORDERS for v in row],
    )
    return source_db


# --- incremental ----------------------------------------------------------------------------------------


@FETCHES
def test_incremental_reads_rows_sharing_a_timestamp_across_batches_once_in_order(orders, fetch):
    source = incremental(fetch=fetch)

    got = rows(source, day(1))

    assert [r["id"] for r in got] == ["1", "2", "3", "4", "5", "6", "7", "8"]
    assert source.next_state["watermark"] == ["2026-11-01 23:59:59.999999+00", "8"]


@FETCHES
def test_incremental_next_window_continues_after_saved_state_without_skip_or_duplicate(orders, fetch):
    first = incremental(fetch=fetch, batch_size=3)
    first_ids = [r["id"] for r in rows(first, day(1))]
    # Arrives after the first run: a row sharing the saved watermark (greater id) and later ones.
    orders.execute(
        "INSERT INTO orders VALUES (12, '2026-11-01 23:59:59.999999+00', 'tie'), "
        "(13, '2026-11-02 00:00:00+00', 'l')"
    )

    second = incremental(first.next_state, fetch=fetch, batch_size=3)
    second_ids = [r["id"] for r in rows(second, day(2))]

    assert second_ids == ["12", "9", "10", "13", "11"]
    assert sorted(map(int, first_ids + second_ids)) == list(range(1, 14))
    assert second.next_state["watermark"] == ["2026-11-02 05:00:00+00", "11"]


@FETCHES
def test_row_committed_later_at_the_saved_watermark_with_a_lower_id_is_still_read(source_db, fetch):
    # updated_at = now() is the transaction's start: a transaction holding id 1 can commit after a run
    # has read id 2 stamped the same instant.
    source_db.execute(
        "CREATE TABLE orders (id bigint PRIMARY KEY, updated_at timestamptz NOT NULL, note text)"
    )
    source_db.execute("INSERT INTO orders VALUES (2, '2026-11-01 18:00:00+00', 'b')")
    first = incremental(fetch=fetch)
    first_ids = [r["id"] for r in rows(first, day(1))]
    source_db.execute("INSERT INTO orders VALUES (1, '2026-11-01 18:00:00+00', 'a')")

    second = incremental(first.next_state, fetch=fetch)
    second_ids = [r["id"] for r in rows(second, day(2))]
    third = incremental(second.next_state, fetch=fetch)

    assert first_ids == ["2"] and second_ids == ["1"]
    assert rows(third, day(3)) == []


@FETCHES
def test_row_at_the_saved_watermark_updated_again_with_the_same_timestamp_is_read_again(source_db, fetch):
    # An application stamping updated_at to the second (timestamp(0)) updates a row twice within one.
    source_db.execute(
        "CREATE TABLE orders (id bigint PRIMARY KEY, updated_at timestamptz NOT NULL, note text)"
    )
    source_db.execute(
        "INSERT INTO orders VALUES (1, '2026-11-01 18:00:00+00', 'a'), (2, '2026-11-01 18:00:00+00', 'b')"
    )
    first = incremental(fetch=fetch)
    rows(first, day(1))
    source_db.execute("UPDATE orders SET note = 'b2' WHERE id = 2")

    second = incremental(first.next_state, fetch=fetch)

    assert [(r["id"], r["note"]) for r in rows(second, day(2))] == [("2", "b2")]
    assert rows(incremental(second.next_state, fetch=fetch), day(2)) == []


def test_incremental_with_nothing_new_keeps_the_state(orders):
    state = {"watermark": ["2026-11-02 05:00:00+00", "11"]}
    source = incremental(state)

    assert rows(source, day(2)) == []
    assert source.next_state == state


def test_incremental_rerun_of_a_window_from_the_same_state_reads_the_same_rows(orders):
    state = {"watermark": ["2026-11-01 08:00:00+00", "2"]}

    once = rows(incremental(state), day(1))
    again = rows(incremental(state), day(1))

    assert once == again
    assert [r["id"] for r in once] == ["3", "4", "5", "6", "7", "8"]


def test_initial_watermark_bounds_the_first_incremental_run(orders):
    source = incremental(initial_watermark="2026-11-01T09:30:00Z")

    assert [r["id"] for r in rows(source, day(1))] == ["4", "5", "6", "7", "8"]


def test_incremental_needs_a_tiebreaker_so_ties_cannot_be_skipped():
    with pytest.raises(ConfigurationError, match="tiebreaker_column"):
        connector(table="orders", mode="incremental", watermark_column="updated_at")


def test_saved_state_of_another_shape_is_refused():
    with pytest.raises(ConfigurationError, match="does not match"):
        incremental({"watermark": ["2026-11-01 08:00:00+00"]})


def test_composite_tiebreaker_orders_and_resumes_on_every_key_column(source_db):
    source_db.execute(
        "CREATE TABLE lines (order_id int, line int, updated_at timestamptz, PRIMARY KEY (order_id, line))"
    )
    source_db.execute(
        "INSERT INTO lines SELECT o, l, '2026-11-01 10:00+00' "
        "FROM generate_series(1, 3) AS o, generate_series(1, 2) AS l"
    )
    state = {"watermark": ["2026-11-01 10:00:00+00", "2", "1"]}
    source = incremental(state, table="lines", tiebreaker_column=["order_id", "line"])

    got = [(r["order_id"], r["line"]) for r in rows(source, day(1))]

    assert got == [("2", "2"), ("3", "1"), ("3", "2")]
    assert source.next_state["watermark"] == ["2026-11-01 10:00:00+00", "3", "2"]


# --- full refresh ---------------------------------------------------------------------------------------


@FETCHES
def test_full_refresh_reads_the_whole_table_every_run_and_leaves_the_state_alone(orders, fetch):
    state = {"watermark": ["2026-11-01 08:00:00+00", "3"]}
    source = connector(state, table="public.orders".replace("public", orders.schema), fetch=fetch)

    first = rows(source, day(1))
    second = rows(source, day(1))

    assert sorted(int(r["id"]) for r in first) == list(range(1, 12))
    assert first == second
    assert source.next_state == state


def test_columns_option_reads_only_those_columns_in_that_order(orders):
    source = connector(table="orders", columns=["note", "id"])

    got = rows(source, day(1))

    assert list(got[0]) == ["note", "id"]


# --- values ---------------------------------------------------------------------------------------------


@FETCHES
def test_null_and_empty_string_stay_distinct_and_text_survives_verbatim(source_db, fetch):
    source_db.execute("CREATE TABLE notes (id int, body text)")
    tricky = ['say "hi", then\nleave', "", None, "naïve ünïcödé ✓", "\\N", ",", '"']
    source_db.execute(
        "INSERT INTO notes VALUES " + ", ".join(["(%s, %s)"] * len(tricky)),
        [v for i, body in enumerate(tricky) for v in (i, body)],
    )

    got = rows(connector(table="notes", fetch=fetch, query=None), day(1))

    assert [r["body"] for r in sorted(got, key=lambda r: int(r["id"]))] == tricky


@FETCHES
def test_values_arrive_as_postgresql_prints_them_numerics_exact_timestamps_iso_utc(source_db, fetch):
    source_db.execute(
        "CREATE TABLE typed (n numeric(12,2), big bigint, f double precision, ts timestamptz, "
        "local timestamp, d date, b boolean, j jsonb, a int[])"
    )
    source_db.execute(
        "SET TIME ZONE 'Europe/Paris'; INSERT INTO typed VALUES (1234567890.10, 9007199254740993, 0.1, "
        "'2026-11-01 10:00:00.123456+01', '2026-11-01 10:00:00', '2026-11-01', true, '{\"k\": 1.50}', "
        "'{1,2}')"
    )

    (got,) = rows(connector(table="typed", fetch=fetch), day(1))

    assert got == {
        "n": "1234567890.10",
        "big": "9007199254740993",
        "f": "0.1",
        "ts": "2026-11-01 09:00:00.123456+00",
        "local": "2026-11-01 10:00:00",
        "d": "2026-11-01",
        "b": "t",
        "j": '{"k": 1.50}',
        "a": "{1,2}",
    }


def test_staged_batch_maps_source_columns_by_their_from_names(orders):
    source = incremental()
    columns = {"order_id": {"from": "id", "required": True}, "changed_at": {"from": "updated_at"}}

    staged = [
        row
        for batch in source.iter_batches(day(1))
        for row in to_staging_batch(batch, columns=columns, source_label="orders").to_pylist()
    ]

    assert staged[0] == {"order_id": "1", "changed_at": "2026-11-01 08:00:00+00"}
    assert len(staged) == 8


# --- identifiers, queries -------------------------------------------------------------------------------


@FETCHES
def test_odd_identifiers_are_quoted_not_interpolated(source_db, fetch):
    source_db.execute(
        'CREATE TABLE "Order Lines" ("order" int, "unit price" numeric(6,2), "updated at" timestamptz, '
        '"x""; DROP TABLE keep; --" text)'
    )
    source_db.execute("CREATE TABLE keep (id int)")
    source_db.execute(
        """INSERT INTO "Order Lines" VALUES (1, 2.50, '2026-11-01 10:00+00', 'v'), """
        """(2, 3.00, '2026-11-01 10:00+00', 'w')"""
    )
    source = connector(
        table=[source_db.schema, "Order Lines"],
        columns=["order", "unit price", 'x"; DROP TABLE keep; --'],
        mode="incremental",
        watermark_column="updated at",
        tiebreaker_column="order",
        batch_size=1,
        fetch=fetch,
    )

    got = rows(source, day(1))

    assert [(r["order"], r["unit price"], r['x"; DROP TABLE keep; --']) for r in got] == [
        ("1", "2.50", "v"),
        ("2", "3.00", "w"),
    ]
    assert source.next_state["watermark"] == ["2026-11-01 10:00:00+00", "2"]
    with pytest.raises(
        SourceError, match=r'column src\.x"; drop table keep; -- does not exist|does not exist'
    ):
        rows(connector(table="keep", columns=['id"; DROP TABLE keep; --']), day(1))
    source_db.execute("SELECT * FROM keep")  # still there


def test_unknown_table_is_a_source_error_naming_it(source_db):
    with pytest.raises(
        SourceError, match=r"source 'orders': cannot read table public\.nope: .*does not exist"
    ):
        rows(connector(table="public.nope"), day(1))


def test_unknown_watermark_column_is_named(orders):
    with pytest.raises(SourceError, match="table orders has no column updated_on"):
        rows(incremental(watermark_column="updated_on"), day(1))


def test_query_mode_filters_incrementally_around_the_authors_sql(orders):
    source = connector(
        query="SELECT id, updated_at, upper(note) AS note FROM orders WHERE note LIKE '%' AND id <> 5;",
        mode="incremental",
        watermark_column="updated_at",
        tiebreaker_column="id",
        batch_size=2,
    )

    got = rows(source, day(1))

    assert [r["id"] for r in got] == ["1", "2", "3", "4", "6", "7", "8"]
    assert got[0]["note"] == "A"
    assert source.describe().startswith("postgres:")


def test_query_failing_midway_reports_the_servers_reason(source_db):
    source = connector(query="SELECT i, 1 / (i - 150000) AS x FROM generate_series(1, 200000) AS i")

    with pytest.raises(SourceError, match="reading the query failed: division by zero"):
        rows(source, day(1))


def test_consumer_stopping_early_releases_the_copy_without_hanging(source_db):
    source = connector(query="SELECT i, repeat('x', 100) AS pad FROM generate_series(1, 3000000) AS i")
    started = time.monotonic()

    batches = source.iter_batches(day(1))
    first = next(batches)
    batches.close()

    assert first.num_rows == source.batch_size
    assert time.monotonic() - started < 10


# --- configuration and connection ----------------------------------------------------------------------


def test_missing_dsn_variable_is_a_configuration_error_naming_it(monkeypatch):
    monkeypatch.delenv("NO_SUCH_DB_URL", raising=False)
    source = connector(table="orders", dsn_env="NO_SUCH_DB_URL")

    with pytest.raises(ConfigurationError, match="environment variable NO_SUCH_DB_URL .* not set"):
        rows(source, day(1))


def test_connection_failure_names_the_host_and_never_the_password(monkeypatch):
    monkeypatch.setenv("SALES_DB_URL", "postgresql://etl:s3cr3t-pw@127.0.0.1:1/sales")

    with pytest.raises(SourceError) as caught:
        rows(connector(table="orders", connect_timeout_seconds=2), day(1))

    assert "source 'orders': cannot connect to PostgreSQL at etl@127.0.0.1:1/sales" in str(caught.value)
    assert "s3cr3t-pw" not in str(caught.value)
    assert "s3cr3t-pw" not in connector(table="orders").describe()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "exactly one of 'table' or 'query'"),
        ({"table": "t", "query": "select 1"}, "exactly one of 'table' or 'query'"),
        ({"table": "t", "mode": "append"}, "mode 'append'"),
        ({"table": "t", "fetch": "rows"}, "fetch 'rows'"),
        ({"table": "t", "watermark_column": "u"}, "incremental"),
        ({"table": "t", "colums": ["a"]}, "unknown option colums"),
        ({"table": "t", "dsn_env": None}, "dsn_env"),
    ],
)
def test_invalid_options_are_configuration_errors(options, message):
    with pytest.raises(ConfigurationError, match=message):
        connector(**options)
