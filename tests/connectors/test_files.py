"""connectors.files: CSV / JSON Lines / Parquet exports, including the real Online Retail II extract."""

from __future__ import annotations

import csv
import gzip
import json
from datetime import date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from connectors import build_connector
from connectors.base import ExtractWindow
from connectors.errors import (
    EXCERPT_CHARS,
    ConfigurationError,
    SourceError,
    library_error_text,
    value_excerpt,
)
from connectors.files import FileConnector
from connectors.records import to_staging_batch

RETAIL_CSV = Path("/work/shared/datasets/online_retail_ii_subset/online_retail_ii_subset.csv")

# The staged columns of an invoice line; only `from` changes between the retailer's two export layouts.
RETAIL_COLUMNS = {
    "invoice": {"from": "Invoice", "required": True},
    "stock_code": {"from": "StockCode", "required": True},
    "description": {"from": "Description"},
    "quantity": {"from": "Quantity", "required": True},
    "invoiced_at": {"from": "InvoiceDate", "required": True},
    "unit_price": {"from": "Price", "required": True},
    "customer_id": {"from": "Customer ID"},
    "country": {"from": "Country"},
}
OLD_LAYOUT = {"Invoice": "InvoiceNo", "Price": "UnitPrice", "Customer ID": "CustomerID"}


def connector(**options) -> FileConnector:
    built = build_connector(name=options.pop("name", "products"), options={"kind": "file", **options})
    assert isinstance(built, FileConnector)
    return built


def staged_rows(source: FileConnector, window, columns) -> list[dict]:
    rows: list[dict] = []
    for batch in source.iter_batches(window):
        rows.extend(
            to_staging_batch(batch, columns=columns, explode=None, source_label=source.name).to_pylist()
        )
    return rows


# --- the real export -------------------------------------------------------------------------------------


@pytest.mark.skipif(not RETAIL_CSV.exists(), reason="shared Online Retail II subset not present")
def test_real_retail_export_arrives_whole_and_verbatim_by_configuration_alone(window):
    source = connector(name="retail", path=str(RETAIL_CSV), batch_size=5_000)

    batches = list(source.iter_batches(window))
    rows = [
        row
        for batch in batches
        for row in to_staging_batch(
            batch, columns=RETAIL_COLUMNS, explode=None, source_label="retail"
        ).to_pylist()
    ]

    with RETAIL_CSV.open(newline="", encoding="utf-8") as handle:
        expected = [
            {name: (line[spec["from"]] or None) for name, spec in RETAIL_COLUMNS.items()}
            for line in csv.DictReader(handle)
        ]
    assert len(rows) == 34_766
    assert all(batch.num_rows <= 5_000 for batch in batches)
    assert rows == expected  # every value, in file order, as the file spells it
    descriptions = [row["description"] or "" for row in rows]
    assert "CHARLOTTE BAG , SUKI DESIGN" in descriptions  # quoted, with commas
    assert sum(d.endswith(" ") for d in descriptions) > 8_000  # trailing spaces are kept
    assert any(row["invoice"].startswith("C") for row in rows)  # text invoice numbers among digits
    assert sum(row["customer_id"] is None for row in rows) == 601  # lines without a customer


@pytest.mark.skipif(not RETAIL_CSV.exists(), reason="shared Online Retail II subset not present")
def test_alternative_retail_header_names_need_only_a_column_mapping_change(tmp_path, window):
    with RETAIL_CSV.open(newline="", encoding="utf-8") as handle:
        lines = list(csv.reader(handle))[:200]
    header = [OLD_LAYOUT.get(name, name) for name in lines[0]]
    old_export = tmp_path / "old_export.csv"
    with old_export.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([header, *lines[1:]])
    old_columns = {
        name: {**spec, "from": OLD_LAYOUT.get(spec["from"], spec["from"])}
        for name, spec in RETAIL_COLUMNS.items()
    }

    new_rows = staged_rows(connector(path=str(RETAIL_CSV)), window, RETAIL_COLUMNS)[:199]
    old_rows = staged_rows(connector(path="old_export.csv", base_dir=str(tmp_path)), window, old_columns)

    assert old_rows == new_rows
    assert list(old_rows[0]) == list(RETAIL_COLUMNS)


@pytest.mark.skipif(not RETAIL_CSV.exists(), reason="shared Online Retail II subset not present")
def test_old_header_names_with_the_new_mapping_fail_naming_the_missing_field(tmp_path, window):
    (tmp_path / "old.csv").write_text(
        "InvoiceNo,StockCode,Quantity,InvoiceDate,UnitPrice\n1,A,1,2010-01-01,1.0\n"
    )
    source = connector(name="retail", path=str(tmp_path / "old.csv"))

    with pytest.raises(
        SourceError, match=r"source 'retail': required field not found: 'Invoice' .*'InvoiceNo'"
    ):
        staged_rows(source, window, RETAIL_COLUMNS)


# --- CSV -------------------------------------------------------------------------------------------------


def test_csv_columns_are_all_text_even_when_the_first_block_looks_numeric(tmp_path, window):
    # Invoice numbers are digits for many rows and then "C…" (a cancellation) far past the first block.
    rows = [f"{489_000 + i},{i}.50,00{i}" for i in range(2_000)] + ["C489449,-1.00,007"]
    (tmp_path / "lines.csv").write_text("Invoice,Price,Code\n" + "\n".join(rows) + "\n")

    source = connector(path="lines.csv", base_dir=str(tmp_path), csv={"block_size": 4096})
    batches = list(source.iter_batches(window))

    assert len(batches) > 1
    assert all(field.type == pa.string() for batch in batches for field in batch.schema)
    last = batches[-1].to_pylist()[-1]
    assert last == {"Invoice": "C489449", "Price": "-1.00", "Code": "007"}  # leading zeros and text kept


def test_csv_batches_never_exceed_batch_size(tmp_path, window):
    (tmp_path / "n.csv").write_text("n\n" + "\n".join(str(i) for i in range(1_005)) + "\n")

    batches = list(connector(path=str(tmp_path / "n.csv"), batch_size=100).iter_batches(window))

    assert [b.num_rows for b in batches] == [100] * 10 + [5]


def test_csv_empty_unquoted_field_is_null_and_quoted_empty_string_is_kept(tmp_path, window):
    (tmp_path / "p.csv").write_text('sku,category\nA,\nB,""\n')

    rows = list(connector(path=str(tmp_path / "p.csv")).iter_batches(window))[0].to_pylist()

    assert rows == [{"sku": "A", "category": None}, {"sku": "B", "category": ""}]


def test_csv_text_like_na_or_null_stays_text(tmp_path, window):
    (tmp_path / "p.csv").write_text("sku,name\nNA,NULL\n")

    rows = list(connector(path=str(tmp_path / "p.csv")).iter_batches(window))[0].to_pylist()

    assert rows == [{"sku": "NA", "name": "NULL"}]


def test_gzip_csv_is_read_like_plain_csv(tmp_path, window):
    with gzip.open(tmp_path / "products_20261101.csv.gz", "wt", encoding="utf-8", newline="") as handle:
        handle.write('SKU,Product Name\nA-1,"Mug, ""retro"" "\n')

    source = connector(path=str(tmp_path / "products_{date:%Y%m%d}.csv.gz"))
    rows = [row for batch in source.iter_batches(window) for row in batch.to_pylist()]

    assert source.format == "csv"
    assert rows == [{"SKU": "A-1", "Product Name": 'Mug, "retro" '}]


def test_csv_byte_order_mark_is_not_part_of_the_first_column_name(tmp_path, window):
    (tmp_path / "excel.csv").write_bytes("\ufeffSKU,Product Name\nA-1,Mug\n".encode())

    rows = list(connector(path=str(tmp_path / "excel.csv")).iter_batches(window))[0].to_pylist()

    assert rows == [{"SKU": "A-1", "Product Name": "Mug"}]


def test_jsonl_in_the_wrong_encoding_is_a_source_error_naming_the_file(tmp_path, window):
    path = tmp_path / "stores.jsonl"
    path.write_bytes('{"name": "Caf\u00e9"}\n'.encode("latin-1"))

    with pytest.raises(SourceError, match=rf"source 'products': {path}: cannot read past line 0"):
        list(connector(path=str(path)).iter_batches(window))


def test_csv_options_delimiter_quote_encoding_and_header_names(tmp_path, window):
    (tmp_path / "stores.txt").write_bytes("code;name\nS1;'Caf\u00e9; Lyon'\n".encode("latin-1"))

    source = connector(
        path=str(tmp_path / "stores.txt"),
        format="csv",
        csv={
            "delimiter": ";",
            "quote_char": "'",
            "encoding": "latin-1",
            "column_names": ["store_code", "store_name"],
        },
    )
    rows = [row for batch in source.iter_batches(window) for row in batch.to_pylist()]

    assert rows == [{"store_code": "S1", "store_name": "Caf\u00e9; Lyon"}]  # file header replaced, not read


def test_csv_without_header_row_takes_the_configured_names(tmp_path, window):
    (tmp_path / "raw.csv").write_text("S1,Lyon\nS2,Gent\n")

    source = connector(
        path=str(tmp_path / "raw.csv"), csv={"header": False, "column_names": ["code", "city"]}
    )

    assert [r for b in source.iter_batches(window) for r in b.to_pylist()] == [
        {"code": "S1", "city": "Lyon"},
        {"code": "S2", "city": "Gent"},
    ]


def test_malformed_csv_row_is_a_source_error_naming_the_file_and_line_not_the_row(tmp_path, window):
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n3,4,5\n")

    with pytest.raises(
        SourceError,
        match=rf"source 'products': cannot read CSV file {bad} line 3: .*Expected 2 columns, got 3$",
    ):
        list(connector(path=str(bad)).iter_batches(window))


def test_value_excerpt_is_one_short_escaped_line():
    assert value_excerpt("a\x00b\nc") == "'a\\x00b\\nc'"
    assert value_excerpt(b"\xff\xfe") == "b'\\xff\\xfe'"
    long = value_excerpt("x" * 500)
    assert len(long) == EXCERPT_CHARS and long.endswith("…")


def test_library_error_text_drops_the_row_pyarrow_echoes():
    exc = ValueError("CSV parse error: Expected 3 columns, got 2: 2,someone@example.com\nnext")
    assert library_error_text(exc) == "CSV parse error: Expected 3 columns, got 2"


def test_empty_csv_file_is_a_source_error(tmp_path, window):
    (tmp_path / "empty.csv").write_text("")

    with pytest.raises(SourceError, match="empty.csv"):
        list(connector(path=str(tmp_path / "empty.csv")).iter_batches(window))


# --- files, globs, windows -------------------------------------------------------------------------------


def test_missing_file_is_a_source_error_naming_the_resolved_path(tmp_path, window):
    source = connector(path="exports/products_{date:%Y%m%d}.csv", base_dir=str(tmp_path))

    with pytest.raises(SourceError) as caught:
        list(source.iter_batches(window))

    assert str(caught.value) == f"source 'products': no file matches {tmp_path}/exports/products_20261101.csv"


def test_missing_optional_file_yields_no_batches(tmp_path, window):
    source = connector(path=str(tmp_path / "nothing_*.csv"), required=False)
    assert list(source.iter_batches(window)) == []


def test_path_placeholders_pick_the_window_file_and_glob_matches_read_in_sorted_order(tmp_path, window):
    for name, value in [("b", "2"), ("a", "1"), ("c", "3")]:
        (tmp_path / f"part-{name}_2026-11-01.csv").write_text(f"n\n{value}\n")
    (tmp_path / "part-a_2026-10-31.csv").write_text("n\nyesterday\n")

    source = connector(path="part-*_{date}.csv", base_dir=str(tmp_path))
    values = [row["n"] for batch in source.iter_batches(window) for row in batch.to_pylist()]

    assert values == ["1", "2", "3"]
    assert source.describe() == f"file:{tmp_path}/part-*_2026-11-01.csv"


def test_describe_before_reading_shows_the_absolute_template(tmp_path):
    source = connector(path="exports/products_{date:%Y%m%d}.csv", base_dir=str(tmp_path))
    assert source.describe() == f"file:{tmp_path}/exports/products_{{date:%Y%m%d}}.csv"


def test_unknown_placeholder_is_a_configuration_error(tmp_path, window):
    source = connector(path=str(tmp_path / "x_{day}.csv"))
    with pytest.raises(ConfigurationError, match=r"unknown placeholder \{day\}"):
        list(source.iter_batches(window))


def test_format_comes_from_the_extension_or_must_be_given(tmp_path):
    assert connector(path="a.jsonl.gz").format == "jsonl"
    assert connector(path="a.parquet").format == "parquet"
    with pytest.raises(ConfigurationError, match="cannot tell the format"):
        connector(path="a.xlsx")
    with pytest.raises(ConfigurationError, match="format 'xml'"):
        connector(path="a.csv", format="xml")


def test_misspelt_option_is_a_configuration_error():
    with pytest.raises(ConfigurationError, match="unknown option csv.delimeter"):
        connector(path="a.csv", csv={"delimeter": ";"})


# --- JSON Lines ------------------------------------------------------------------------------------------


def test_jsonl_records_are_batched_and_prices_keep_their_exact_text(tmp_path, window):
    lines = [json.dumps({"code": f"S{i}", "address": {"city": "Lyon"}}) for i in range(5)]
    lines.insert(2, "")  # blank lines are skipped
    lines.append('{"code": "S5", "price": 2.950, "address": {"city": "Gent"}}')
    (tmp_path / "stores.jsonl").write_text("\n".join(lines) + "\n")

    batches = list(
        connector(name="stores", path=str(tmp_path / "stores.jsonl"), batch_size=4).iter_batches(window)
    )

    assert [len(b) for b in batches] == [4, 2]
    staged = to_staging_batch(
        batches[1],
        columns={"code": {"from": "code"}, "city": {"from": "address.city"}, "price": {"from": "price"}},
        explode=None,
        source_label="stores",
    )
    assert staged.to_pylist()[-1] == {"code": "S5", "city": "Gent", "price": "2.950"}


def test_jsonl_malformed_line_is_a_source_error_naming_file_and_line(tmp_path, window):
    path = tmp_path / "stores.jsonl"
    path.write_text('{"code": "S1"}\n{"code": "S2"}\n{"code": "S3",\n')

    with pytest.raises(SourceError, match=rf"source 'stores': {path} line 3: malformed JSON"):
        list(connector(name="stores", path=str(path)).iter_batches(window))


def test_jsonl_line_that_is_not_an_object_is_a_source_error(tmp_path, window):
    path = tmp_path / "stores.jsonl"
    path.write_text('{"code": "S1"}\n["S2"]\n')

    with pytest.raises(SourceError, match=rf"{path} line 2: expected a JSON object, got list"):
        list(connector(name="stores", path=str(path)).iter_batches(window))


def test_gzip_jsonl_with_byte_order_mark_is_read(tmp_path, window):
    with gzip.open(tmp_path / "stores.jsonl.gz", "wb") as handle:
        handle.write('\ufeff{"code": "S1"}\n{"code": "S2"}\n'.encode())

    records = list(connector(path=str(tmp_path / "stores.jsonl.gz")).iter_batches(window))

    assert records == [[{"code": "S1"}, {"code": "S2"}]]


# --- Parquet ---------------------------------------------------------------------------------------------


def test_parquet_is_streamed_in_batches_of_batch_size(tmp_path, window):
    table = pa.table({"sku": [f"A{i}" for i in range(25)], "price": pa.array(range(25), pa.int32())})
    pq.write_table(table, tmp_path / "products.parquet", row_group_size=10)

    batches = list(connector(path=str(tmp_path / "products.parquet"), batch_size=8).iter_batches(window))

    assert all(b.num_rows <= 8 for b in batches)
    assert pa.Table.from_batches(batches).equals(table)


def test_corrupt_parquet_is_a_source_error_naming_the_file(tmp_path, window):
    path = tmp_path / "products.parquet"
    path.write_bytes(b"not parquet at all")

    with pytest.raises(SourceError, match=rf"cannot read Parquet file {path}"):
        list(connector(path=str(path)).iter_batches(window))


# --- window filter: one file holding many dates ------------------------------------------------------------


def _london_day(day: str) -> ExtractWindow:
    london = ZoneInfo("Europe/London")
    start = datetime.combine(date.fromisoformat(day), time.min, tzinfo=london)
    return ExtractWindow(business_date=start.date(), start=start, end=start + timedelta(days=1))


@pytest.mark.skipif(not RETAIL_CSV.exists(), reason="shared Online Retail II subset not present")
def test_window_filter_keeps_exactly_the_rows_whose_wall_clock_time_falls_on_the_business_date():
    source = connector(
        name="retail",
        path=str(RETAIL_CSV),
        batch_size=5_000,
        window_filter={"column": "InvoiceDate", "format": "%Y-%m-%d %H:%M:%S"},
    )

    rows = staged_rows(source, _london_day("2011-05-23"), RETAIL_COLUMNS)

    with RETAIL_CSV.open(newline="", encoding="utf-8") as handle:
        expected = [
            {name: (line[spec["from"]] or None) for name, spec in RETAIL_COLUMNS.items()}
            for line in csv.DictReader(handle)
            if line["InvoiceDate"].startswith("2011-05-23")
        ]
    assert len(expected) == 55
    assert rows == expected


def test_window_filter_compares_wall_clock_times_in_the_window_zone_across_a_dst_change(tmp_path):
    # 2026-03-29: the UK clocks go forward at 01:00; the London day is 23 hours long.
    (tmp_path / "all.csv").write_text(
        "id,at\n1,2026-03-28 23:59:59\n2,2026-03-29 00:00:00\n3,2026-03-29 23:59:59\n4,2026-03-30 00:00:00\n",
    )
    source = connector(
        path=str(tmp_path / "all.csv"), window_filter={"column": "at", "format": "%Y-%m-%d %H:%M:%S"}
    )

    rows = staged_rows(source, _london_day("2026-03-29"), {"id": {"from": "id"}})

    assert [r["id"] for r in rows] == ["2", "3"]


def test_window_filter_on_json_lines_records(tmp_path):
    lines = [{"id": 1, "day": "2026-11-01"}, {"id": 2, "day": "2026-11-02"}]
    (tmp_path / "all.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    source = connector(
        path=str(tmp_path / "all.jsonl"), window_filter={"column": "day", "format": "%Y-%m-%d"}
    )

    rows = staged_rows(source, _london_day("2026-11-02"), {"id": {"from": "id"}})

    assert rows == [{"id": "2"}]


def test_window_filter_value_that_does_not_parse_is_a_source_error_naming_it(tmp_path):
    (tmp_path / "all.csv").write_text("id,at\n1,2026-11-01 10:00:00\n2,01/11/2026 10:00\n")
    source = connector(
        path=str(tmp_path / "all.csv"), window_filter={"column": "at", "format": "%Y-%m-%d %H:%M:%S"}
    )

    with pytest.raises(SourceError, match=r"'01/11/2026 10:00' is not a timestamp"):
        staged_rows(source, _london_day("2026-11-01"), {"id": {"from": "id"}})


def test_window_filter_needs_column_and_format():
    with pytest.raises(ConfigurationError, match="window_filter needs 'column' and 'format'"):
        connector(path="x.csv", window_filter={"column": "at"})
    with pytest.raises(ConfigurationError, match="unknown option window_filter.colum"):
        connector(path="x.csv", window_filter={"colum": "at", "format": "%Y"})
