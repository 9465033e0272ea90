"""connectors.records: raw batches -> staged text batches."""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, date, datetime, time
from decimal import Decimal
from types import SimpleNamespace

import pyarrow as pa
import pytest

from connectors.errors import ConfigurationError, SourceError
from connectors.records import (
    ColumnSpec,
    Erasure,
    FieldObserver,
    column_specs,
    erasure_token,
    pseudonym,
    schema_drift,
    staging_schema,
    suppression_token,
    to_staging_batch,
    to_text,
)

ORDER_COLUMNS = {
    "order_id": {"from": "id", "required": True},
    "line_number": {"from": "lines.line_number", "required": True},
    "customer_email": {"from": "customer.email"},
    "sku": {"from": "lines.sku", "required": True},
    "unit_price": {"from": "lines.unit_price", "required": True},
}


_NO_LINES = object()


def order(order_id: str, lines: object = _NO_LINES) -> dict:
    record = {"id": order_id, "customer": {"email": f"{order_id}@example.com"}}
    if lines is not _NO_LINES:
        record["lines"] = lines
    return record


def test_explode_makes_one_row_per_line_carrying_the_parent_fields():
    batch = [
        order(
            "A1",
            [{"line_number": 1, "sku": "X", "unit_price": Decimal("2.50")}, {"line_number": 2, "sku": "Y"}],
        ),
        order("B2", [{"line_number": 1, "sku": "Z", "unit_price": Decimal("10")}]),
    ]

    staged = to_staging_batch(batch, columns=ORDER_COLUMNS, explode="lines", source_label="orders")

    assert staged.to_pylist() == [
        {
            "order_id": "A1",
            "line_number": "1",
            "customer_email": "A1@example.com",
            "sku": "X",
            "unit_price": "2.50",
        },
        {
            "order_id": "A1",
            "line_number": "2",
            "customer_email": "A1@example.com",
            "sku": "Y",
            "unit_price": None,
        },
        {
            "order_id": "B2",
            "line_number": "1",
            "customer_email": "B2@example.com",
            "sku": "Z",
            "unit_price": "10",
        },
    ]


def test_explode_drops_orders_whose_lines_are_empty_missing_or_null():
    batch = [
        order("empty", []),
        order("missing"),
        order("null", None),
        order("ok", [{"sku": "X"}]),
    ]

    staged = to_staging_batch(batch, columns=ORDER_COLUMNS, explode="lines", source_label="orders")

    assert staged.column("order_id").to_pylist() == ["ok"]


def test_explode_of_a_field_that_is_not_a_list_names_the_source_and_field():
    with pytest.raises(SourceError, match=r"source 'orders'.*'lines'.*dict, not a list"):
        to_staging_batch(
            [order("A1", {"sku": "X"})],
            columns=ORDER_COLUMNS,
            explode="lines",
            source_label="orders",
        )


def test_column_reading_the_exploded_field_itself_gets_each_element():
    staged = to_staging_batch(
        [{"id": 1, "tags": ["a", "b"]}],
        columns={"id": {"from": "id"}, "tag": {"from": "tags"}},
        explode="tags",
        source_label="s",
    )
    assert staged.to_pylist() == [{"id": "1", "tag": "a"}, {"id": "1", "tag": "b"}]


def test_dotted_paths_read_nested_fields_and_missing_fields_are_null():
    batch = [{"address": {"city": "Lyon", "geo": {"lat": 45.76}}}, {"address": None}, {}]

    staged = to_staging_batch(
        batch,
        columns={"city": {"from": "address.city"}, "lat": {"from": "address.geo.lat"}},
        explode=None,
        source_label="stores",
    )

    assert staged.to_pylist() == [
        {"city": "Lyon", "lat": "45.76"},
        {"city": None, "lat": None},
        {"city": None, "lat": None},
    ]


def test_exact_header_with_spaces_or_dots_wins_over_a_dotted_path():
    batch = [
        {"Customer ID": "12417", "unit.price": "3.75", "unit": {"price": "nested"}, "a.b": {"c": "deep"}}
    ]

    staged = to_staging_batch(
        batch,
        columns={
            "customer": {"from": "Customer ID"},
            "price": {"from": "unit.price"},
            "c": {"from": "a.b.c"},
        },
        explode=None,
        source_label="retail",
    )

    assert staged.to_pylist() == [{"customer": "12417", "price": "3.75", "c": "deep"}]


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("  trailing  ", "  trailing  "),
        (True, "true"),
        (False, "false"),
        (0, "0"),
        (-12, "-12"),
        (0.1, "0.1"),
        (1.0, "1.0"),
        (1e-7, "1e-07"),
        (Decimal("2.950"), "2.950"),
        (datetime(2026, 11, 1, 10, 30, tzinfo=UTC), "2026-11-01T10:30:00+00:00"),
        (datetime(2026, 11, 1, 10, 30, 0, 5), "2026-11-01T10:30:00.000005"),
        (date(2026, 11, 1), "2026-11-01"),
        (time(9, 5), "09:05:00"),
        ({"b": 1, "a": [Decimal("1.10"), None, True]}, '{"a":[1.10,null,true],"b":1}'),
        ([{"y": "é", "x": 2.5}], '[{"x":2.5,"y":"\\u00e9"}]'),
        (None, None),
    ],
)
def test_values_become_text_by_the_staging_rules(value, text):
    assert to_text(value) == text


def test_nested_values_are_canonical_json_like_json_dumps_with_sorted_keys():
    import json

    value = {"z": {"k": [1, 2.5, "s", None, False]}, "a": 'x"y'}
    assert to_text(value) == json.dumps(value, sort_keys=True, separators=(",", ":"))


def test_output_has_exactly_the_declared_columns_in_declared_order_all_text():
    columns = {"b": {"from": "y"}, "a": {"from": "x"}}

    staged = to_staging_batch([{"x": 1, "y": 2, "z": 3}], columns=columns, explode=None, source_label="s")

    assert staged.schema == pa.schema([("b", pa.string()), ("a", pa.string())])
    assert staged.schema == staging_schema(columns)
    assert staged.to_pylist() == [{"b": "2", "a": "1"}]


def test_empty_batch_gives_an_empty_batch_with_the_staging_schema():
    staged = to_staging_batch([], columns={"a": {"from": "x"}}, explode=None, source_label="s")
    assert staged.num_rows == 0
    assert staged.schema == pa.schema([("a", pa.string())])


def test_column_declarations_may_be_specs_config_tables_or_objects_with_from_():
    columns = {
        "a": ColumnSpec(name="a", source="x", type="int", required=True),
        "b": {"from_": "y", "required": False},
        "c": SimpleNamespace(from_="z", type="string", required=True),
        "d": {},
    }

    specs = column_specs(columns)

    assert specs == [
        ColumnSpec("a", "x", "int", True),
        ColumnSpec("b", "y", "string", False),
        ColumnSpec("c", "z", "string", True),
        ColumnSpec("d", "d", "string", False),
    ]


def test_a_non_object_record_is_a_source_error():
    with pytest.raises(SourceError, match=r"source 'api'.*record 1 .*str, not an object"):
        to_staging_batch([{"a": 1}, "oops"], columns={"a": {"from": "a"}}, explode=None, source_label="api")


# --- Arrow batches (tabular sources) ---------------------------------------------------------------------


def products_batch() -> pa.RecordBatch:
    return pa.RecordBatch.from_pydict(
        {
            "SKU": ["A-1", "B-2", None],
            "Product Name": ["Mug ", "Box, red", "Lamp"],
            "List Price": pa.array([Decimal("2.9500"), Decimal("10.0000"), None], pa.decimal128(18, 4)),
            "Stock": pa.array([3, None, -1], pa.int64()),
            "Active": [True, False, None],
            "Updated": pa.array(
                [datetime(2026, 11, 1, 10, 30), datetime(2026, 11, 1, 10, 30, 0, 5), None], pa.timestamp("us")
            ),
            "Seen": pa.array(
                [datetime(2026, 11, 1, 9, 0, tzinfo=UTC)] * 3, pa.timestamp("s", tz="Europe/Paris")
            ),
            "Day": pa.array([date(2026, 11, 1)] * 3),
        }
    )


def test_arrow_batch_columns_are_selected_renamed_and_cast_to_exact_text():
    columns = {
        "name": {"from": "Product Name", "required": True},
        "sku": {"from": "SKU", "required": True},
        "list_price": {"from": "List Price"},
        "stock": {"from": "Stock"},
        "active": {"from": "Active"},
        "updated_at": {"from": "Updated"},
        "seen_at": {"from": "Seen"},
        "day": {"from": "Day"},
    }

    staged = to_staging_batch(products_batch(), columns=columns, explode=None, source_label="products")

    assert staged.schema == staging_schema(columns)
    assert staged.to_pylist()[:2] == [
        {
            "name": "Mug ",
            "sku": "A-1",
            "list_price": "2.9500",
            "stock": "3",
            "active": "true",
            "updated_at": "2026-11-01T10:30:00.000000",
            "seen_at": "2026-11-01T09:00:00Z",  # the instant in UTC, not Paris wall-clock
            "day": "2026-11-01",
        },
        {
            "name": "Box, red",
            "sku": "B-2",
            "list_price": "10.0000",
            "stock": None,
            "active": "false",
            "updated_at": "2026-11-01T10:30:00.000005",
            "seen_at": "2026-11-01T09:00:00Z",
            "day": "2026-11-01",
        },
    ]
    assert staged.column("sku").to_pylist()[2] is None


def test_arrow_batch_missing_required_field_names_source_field_and_available_fields():
    columns = {"sku": {"from": "sku", "required": True}, "name": {"from": "Product Name", "required": True}}

    with pytest.raises(SourceError) as caught:
        to_staging_batch(products_batch(), columns=columns, explode=None, source_label="products")

    message = str(caught.value)
    assert "source 'products'" in message
    assert "'sku' (column sku)" in message
    assert "'SKU', 'Product Name', 'List Price'" in message  # what the file does have


def test_arrow_batch_missing_optional_field_is_all_null():
    staged = to_staging_batch(
        products_batch(),
        columns={"sku": {"from": "SKU"}, "category": {"from": "Category"}},
        explode=None,
        source_label="p",
    )
    assert staged.column("category").to_pylist() == [None, None, None]
    assert staged.column("category").type == pa.string()


def test_arrow_struct_columns_are_read_by_dotted_path_and_nested_values_become_json():
    batch = pa.RecordBatch.from_pylist(
        [{"code": "S1", "address": {"city": "Lyon", "country": "FR"}, "tags": ["a", "b"]}]
    )

    staged = to_staging_batch(
        batch,
        columns={"city": {"from": "address.city", "required": True}, "tags": {"from": "tags"}},
        explode=None,
        source_label="stores",
    )

    assert staged.to_pylist() == [{"city": "Lyon", "tags": '["a","b"]'}]


def test_arrow_batch_can_be_exploded_like_records():
    batch = pa.RecordBatch.from_pylist(
        [{"id": "A1", "lines": [{"sku": "X"}, {"sku": "Y"}]}, {"id": "B2", "lines": []}]
    )

    staged = to_staging_batch(
        batch, columns={"id": {"from": "id"}, "sku": {"from": "lines.sku"}}, explode="lines", source_label="o"
    )

    assert staged.to_pylist() == [{"id": "A1", "sku": "X"}, {"id": "A1", "sku": "Y"}]


def test_dictionary_encoded_and_large_string_columns_come_out_as_plain_text():
    batch = pa.RecordBatch.from_pydict(
        {
            "country": pa.array(["FR", "BE", "FR"]).dictionary_encode(),
            "note": pa.array(["x", None, "z"], pa.large_string()),
        }
    )

    staged = to_staging_batch(
        batch,
        columns={"country": {"from": "country"}, "note": {"from": "note"}},
        explode=None,
        source_label="s",
    )

    assert staged.schema == pa.schema([("country", pa.string()), ("note", pa.string())])
    assert staged.to_pylist() == [
        {"country": "FR", "note": "x"},
        {"country": "BE", "note": None},
        {"country": "FR", "note": "z"},
    ]


# --- schema drift ----------------------------------------------------------------------------------------


def observed(batch, explode=None) -> FieldObserver:
    observer = FieldObserver(explode=explode)
    observer.observe(batch)
    return observer


def test_new_nested_object_is_one_added_entry_and_new_key_in_a_read_object_is_named():
    batch = [
        {
            "id": "A1",
            "customer": {"email": "a@x", "phone": "1"},  # phone: new inside an object that is read
            "shipping": {"city": "Graz", "zip": "8010"},  # new object: one entry, not one per key
            "lines": [{"sku": "X", "unit_price": Decimal("2.5"), "line_number": 1, "gift": True}],
        }
    ]
    fields = observed(batch, explode="lines")

    drift = schema_drift(observed=fields.fields(), columns=ORDER_COLUMNS, null_paths=fields.null_paths)

    assert drift.added == ("customer.phone", "lines.gift", "shipping")
    assert drift.missing == ()


def test_ignored_fields_and_what_is_under_them_are_no_drift_but_other_new_fields_still_are():
    batch = [
        {
            "id": "A1",
            "customer": {"email": "a@x", "name": "Ann", "phone": "1"},
            "shipping": {"city": "Graz", "zip": "8010"},
            "lines": [{"sku": "X", "unit_price": Decimal("2.5"), "line_number": 1}],
        }
    ]
    fields = observed(batch, explode="lines")
    previous = {"shipping.zip": "number"}  # a type change under an ignored field is not reported either

    drift = schema_drift(
        observed=fields.fields(),
        columns=ORDER_COLUMNS,
        null_paths=fields.null_paths,
        previous=previous,
        ignored=["customer.name", "shipping"],
    )

    assert (drift.added, drift.changed) == (("customer.phone",), ())


def test_declared_field_never_delivered_is_missing_but_one_under_a_null_parent_is_not():
    batch = [{"id": "A1", "customer": None, "lines": [{"line_number": 1, "sku": "X"}]}]
    fields = observed(batch, explode="lines")

    drift = schema_drift(observed=fields.fields(), columns=ORDER_COLUMNS, null_paths=fields.null_paths)

    assert drift.missing == ("lines.unit_price",)  # customer.email: its parent is there, null (a guest)
    assert drift.added == ()


def test_type_change_is_drift_against_the_previous_fields_and_nulls_are_no_type():
    fields = observed([{"id": 1, "price": "2.50", "note": None}, {"id": 2, "price": "3", "note": None}])
    columns = {"id": {}, "price": {}, "note": {}}

    drift = schema_drift(
        observed=fields.fields(),
        columns=columns,
        previous={"id": "number", "price": "number", "note": "string"},
    )

    assert fields.fields() == {"id": "number", "note": "null", "price": "string"}
    assert drift.changed == ({"field": "price", "was": "number", "now": "string"},)
    assert drift.as_dict() == {
        "added": [],
        "missing": [],
        "changed": [{"field": "price", "was": "number", "now": "string"}],
    }


def test_arrow_batches_report_schema_fields_struct_children_and_arrow_types():
    batch = pa.RecordBatch.from_pydict(
        {"SKU": ["A"], "Extra": [1], "address": [{"city": "Graz", "zip": "8010"}]}
    )
    fields = observed(batch)

    drift = schema_drift(
        observed=fields.fields(),
        columns={"sku": {"from": "SKU"}, "city": {"from": "address.city"}, "name": {"from": "Name"}},
        previous={"SKU": "string", "Extra": "string"},
    )

    assert fields.fields()["Extra"] == "int64" and "address.zip" in fields.fields()
    assert drift.as_dict() == {
        "added": ["Extra", "address.zip"],
        "missing": ["Name"],
        "changed": [{"field": "Extra", "was": "string", "now": "int64"}],
    }


def test_no_drift_is_falsy_and_records_of_one_shape_are_walked_once():
    observer = FieldObserver(explode="lines")
    observer.observe([{"id": i, "lines": [{"sku": "X"}]} for i in range(1000)])
    observer.observe([{"id": 1, "lines": [{"sku": "X", "qty": 2}]}])  # a new shape is still seen

    assert observer.fields() == {
        "id": "number",
        "lines": "array",
        "lines.qty": "number",
        "lines.sku": "string",
    }
    assert observer.rows == 1001
    assert not schema_drift(
        observed=observer.fields(),
        columns={"id": {}, "sku": {"from": "lines.sku"}, "q": {"from": "lines.qty"}},
    )


# --- personal columns are staged as pseudonyms ------------------------------------------------------------

KEY = b"staging-pseudonym-key"
PERSONAL = {
    "order_id": {"from": "id"},
    "email": {"from": "customer.email", "pii": True},
}


def _hmac(text: str) -> str:  # the documented pseudonym, computed here independently
    return hmac.new(KEY, text.encode("utf-8"), hashlib.sha256).hexdigest()


def test_a_personal_column_is_staged_as_its_pseudonym_never_in_clear():
    records = [
        {"id": "O1", "customer": {"email": "  Alice.CANARY@Example.com "}},
        {"id": "O2", "customer": {"email": "   "}},
        {"id": "O3", "customer": None},
    ]
    staged = to_staging_batch(records, columns=PERSONAL, source_label="orders", pseudonym_key=KEY)
    assert staged.column("order_id").to_pylist() == ["O1", "O2", "O3"]
    assert staged.column("email").to_pylist() == [_hmac("alice.canary@example.com"), None, None]
    assert "CANARY" not in str(staged.to_pylist()).upper()
    assert staged.schema.field("email").metadata == {b"pii": b"hmac-sha256"}
    assert staged.schema.field("order_id").metadata is None


def test_a_tabular_sources_personal_column_is_staged_as_its_pseudonym_too():
    batch = pa.RecordBatch.from_pydict({"id": ["O1"], "email": ["Bob\u00a0 CANARY@x.org"]})
    columns = {"order_id": {"from": "id"}, "email": {"from": "email", "pii": True}}
    staged = to_staging_batch(batch, columns=columns, source_label="orders", pseudonym_key=KEY)
    assert staged.column("email").to_pylist() == [_hmac("bob canary@x.org")]


def test_a_personal_column_without_the_key_is_refused_not_staged_in_clear():
    with pytest.raises(ConfigurationError, match=r"source 'orders': column\(s\) email are personal"):
        to_staging_batch([{"id": "O1"}], columns=PERSONAL, source_label="orders")


def test_an_encrypted_column_is_staged_as_a_fernet_token_per_value_never_in_clear():
    from cryptography.fernet import Fernet

    key = Fernet.generate_key()
    records = [
        {"id": "O1", "customer": {"email": "Alice.CANARY@Example.com"}},
        {"id": "O2", "customer": {"email": "Alice.CANARY@Example.com"}},
        {"id": "O3", "customer": None},
    ]
    columns = {"order_id": {"from": "id"}, "email": {"from": "customer.email", "pii": "encrypt"}}
    staged = to_staging_batch(records, columns=columns, source_label="orders", encrypter=Fernet(key))
    first, second, guest = staged.column("email").to_pylist()
    assert guest is None and first != second  # equal values, different tokens
    assert {Fernet(key).decrypt(t.encode()) for t in (first, second)} == {b"Alice.CANARY@Example.com"}
    assert "CANARY" not in str(staged.to_pylist()).upper()
    assert staged.schema.field("email").metadata == {b"pii": b"fernet"}


def test_an_encrypted_column_without_an_encrypter_is_refused_not_staged_in_clear():
    columns = {"order_id": {"from": "id"}, "email": {"from": "email", "pii": "encrypt"}}
    with pytest.raises(ConfigurationError, match=r"source 'orders': column\(s\) email are encrypted"):
        to_staging_batch([{"id": "O1", "email": "a@b.c"}], columns=columns, source_label="orders")


@pytest.mark.parametrize(
    ("text", "cleaned"),
    [
        ("a@b.c", "a@b.c"),
        ("\tA@B.C\r\n", "a@b.c"),
        ("first  last@x.org", "first last@x.org"),
        ("\u2003Zoë@Exämple.de\u3000", "zoë@exämple.de"),
        ("x\u2028y@z", "x y@z"),
        ("\x1cA@B\x1c", "\x1ca@b\x1c"),  # an information separator is not white space to Java's \s
    ],
)
def test_the_pseudonym_cleans_white_space_as_the_job_does_then_lower_cases(text, cleaned):
    assert pseudonym(KEY, text) == _hmac(cleaned)


def test_an_erased_customers_rows_are_staged_with_their_identity_null_and_every_other_value_kept():
    """The erasure list on the way in: matched on the clear value, normalised as the pseudonym is, in a
    personal column or a clear one; a token of the clear value under the erasure key, or the older token of
    the pseudonym under the pseudonym key."""
    key, erasure_key = b"k", b"e"
    columns = {
        "order_id": {"from": "id"},
        "customer_email": {"from": "email", "pii": True},
        "customer_id": {"from": "cid"},  # the job's customer_key_from in clear (online_retail.toml)
        "country": {"from": "country"},
    }
    records = [
        {"id": "1", "email": "Ann@Example.com ", "cid": "c1", "country": "FR"},
        {"id": "2", "email": "bob@example.com", "cid": "c2", "country": "DE"},
        {"id": "3", "email": None, "cid": "C9", "country": "IT"},
    ]
    tokens = frozenset({erasure_token(erasure_key, "ann@example.com")})
    older = frozenset({suppression_token(key, pseudonym(key, "c9"))})
    erasure = Erasure(
        ("customer_email", "customer_id"),
        tokens=tokens,
        key=erasure_key,
        pseudonym_tokens=older,
        pseudonym_key=key,
    )
    staged = to_staging_batch(
        records, columns=columns, source_label="t", pseudonym_key=key, erasure=erasure
    ).to_pylist()

    assert staged == [
        {"order_id": "1", "customer_email": None, "customer_id": None, "country": "FR"},
        {
            "order_id": "2",
            "customer_email": pseudonym(key, "bob@example.com"),
            "customer_id": "c2",
            "country": "DE",
        },
        {"order_id": "3", "customer_email": None, "customer_id": None, "country": "IT"},
    ]
    # The list's tokens are not the customer keys the warehouse holds, nor made with its key.
    assert not (tokens | older) & {pseudonym(key, "ann@example.com"), pseudonym(key, "c9")}
    assert erasure_token(b"another key", "ann@example.com") not in tokens
    unlisted = to_staging_batch(records, columns=columns, source_label="t", pseudonym_key=key)
    assert unlisted.column("customer_id").to_pylist() == ["c1", "c2", "C9"]


def test_an_encrypted_column_alone_identifies_an_erased_customer_matched_before_it_is_encrypted():
    from cryptography.fernet import Fernet

    erasure_key = b"e"
    columns = {"order_id": {"from": "id"}, "email": {"from": "email", "pii": "encrypt"}}
    records = [{"id": "1", "email": " ANN@example.com"}, {"id": "2", "email": "bob@example.com"}]
    erasure = Erasure(
        ("email",), tokens=frozenset({erasure_token(erasure_key, "ann@example.com")}), key=erasure_key
    )
    cipher = Fernet(Fernet.generate_key())
    staged = to_staging_batch(
        records, columns=columns, source_label="t", encrypter=cipher, erasure=erasure
    ).to_pylist()
    assert staged[0] == {"order_id": "1", "email": None}
    assert cipher.decrypt(staged[1]["email"].encode()) == b"bob@example.com"
