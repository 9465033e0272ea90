"""Job-level fixtures of the sales job: staged Parquet inputs (every value text, as extraction writes them)
and the job spec that reads them.

The tests that run the whole job (`run_job`) build their inputs here, and the cross-engine equivalence
test (test_engine_equivalence.py) runs the same fixtures through every engine. Each builder writes its
staged files under `folder` and returns the spec, its `output_dir` being `folder / "out"`.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from warehouse.loading.specs import INTEGER_RANGES, output_constraints
from warehouse.models import DimCustomer, DimProduct, DimStore, FactSalesLine

KEY = b"test-pseudonym-key"
DAY = "2026-11-01"

# As declared in conf/pipelines/retail_demo.toml.
LINE_SPEC = {
    "columns": {
        "order_id": {"type": "string", "required": True},
        "line_number": {"type": "int", "required": True},
        "ordered_at": {"type": "timestamp", "required": True},
        "updated_at": {"type": "timestamp", "required": True},
        "store_code": {"type": "string", "required": True},
        "customer_email": {"type": "string", "required": False, "pii": True},
        "customer_country": {"type": "string", "required": False},
        "sku": {"type": "string", "required": True},
        "quantity": {"type": "int", "required": True},
        "unit_price": {"type": "decimal(18,4)", "required": True},
        "currency": {"type": "string", "required": True},
    },
    "key": ["order_id", "line_number"],
    "version_column": "updated_at",
    "rules": [
        {
            "code": "zero_quantity",
            "check": "not_allowed",
            "severity": "reject",
            "column": "quantity",
            "values": [0],
        },
        {
            "code": "negative_price",
            "check": "range",
            "severity": "reject",
            "column": "unit_price",
            "min": "0",
        },
    ],
}
PRODUCT_SPEC = {
    "columns": {
        "sku": {"type": "string", "required": True},
        "name": {"type": "string", "required": True},
        "category": {"type": "string", "required": False},
        "list_price": {"type": "decimal(18,2)", "required": False},
    },
    "key": ["sku"],
}
STORE_SPEC = {
    "columns": {
        "store_code": {"type": "string", "required": True},
        "name": {"type": "string", "required": True},
        "city": {"type": "string", "required": False},
        "region": {"type": "string", "required": False},
        "country": {"type": "string", "required": False},
    },
    "key": ["store_code"],
}
PRODUCTS = [
    {"sku": "P1", "name": "Mug", "category": "Kitchen", "list_price": "9.90"},
    {"sku": "P2", "name": "Tea", "category": None, "list_price": "4.5"},
]
STORES = [{"store_code": "S1", "name": "Centre", "city": "Lyon", "region": "ARA", "country": "FR"}]

# The warehouse's limits, from the models, that warehouse_limits_spec's rows break.
NAME_MAX = DimProduct._meta.get_field("name").max_length
ORDER_ID_MAX = FactSalesLine._meta.get_field("order_id").max_length
COUNTRY_MAX = DimCustomer._meta.get_field("country").max_length
STORE_CODE_MAX = DimStore._meta.get_field("store_code").max_length
INT_MIN, INT_MAX = INTEGER_RANGES[FactSalesLine._meta.get_field("quantity").get_internal_type()]
TOO_LONG_NAME = "n" * (NAME_MAX + 100)


def line(**overrides) -> dict:
    row = {
        "order_id": "O1",
        "line_number": "1",
        "ordered_at": "2026-11-01T09:00:00Z",
        "updated_at": "2026-11-01T09:00:00Z",
        "store_code": "S1",
        "customer_email": "ann@example.com",
        "customer_country": "FR",
        "sku": "P1",
        "quantity": "1",
        "unit_price": "2.0000",
        "currency": "EUR",
    }
    row.update(overrides)
    return row


def write_staged(path: Path, rows: list[dict], spec: dict) -> str:
    """One staged Parquet file: the spec's declared columns, in order, every value text as extracted."""
    columns = list(spec["columns"])
    table = pa.table({c: pa.array([r.get(c) for r in rows], pa.string()) for c in columns})
    pq.write_table(table, path)
    return str(path)


def job_spec(folder: Path, inputs: dict[str, tuple[dict, list[dict]]], *, pipeline: str = "p") -> dict:
    """The spec of one date whose inputs (name -> (input spec, rows)) are staged under `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    return {
        "pipeline": pipeline,
        "business_date": DAY,
        "inputs": {
            name: {**spec, "files": [write_staged(folder / f"{name}.parquet", rows, spec)]}
            for name, (spec, rows) in inputs.items()
        },
        "output_dir": str(folder / "out"),
        "pseudonym_key_env": "ETL_PSEUDONYM_KEY_TEST_UNUSED",
        "reporting_currency": "EUR",
        "constraints": output_constraints(),
    }


def every_output_spec(folder: Path) -> dict:
    """Duplicates, versions, a return, an unknown product and an invalid price on the demo's columns:
    every output has rows (tests/spark_jobs/test_sales_daily.py)."""
    lines = [
        line(order_id="O1", line_number="1", quantity="2", unit_price="1.50"),
        line(order_id="O1", line_number="1", quantity="2", unit_price="1.50"),  # exact duplicate
        line(order_id="O1", line_number="2", updated_at="2026-11-01T08:00:00Z"),  # older version
        line(order_id="O1", line_number="2", updated_at="2026-11-01T09:30:00Z", quantity="-1"),
        line(order_id="O2", line_number="1", sku="NOPE", customer_email=None),  # unknown product
        line(order_id="O3", line_number="1", unit_price="abc"),  # invalid price
        line(order_id="O3", line_number="1", unit_price="abc"),  # ... twice
    ]
    products = [*PRODUCTS, PRODUCTS[0], {"sku": "P3", "name": ""}]  # one duplicate, one rejected
    inputs = {
        "order_lines": (LINE_SPEC, lines),
        "products": (PRODUCT_SPEC, products),
        "stores": (STORE_SPEC, STORES),
    }
    return job_spec(folder, inputs, pipeline="retail_demo")


def _rule(code: str, check: str, severity: str = "reject", **params) -> dict:
    return {"code": code, "check": check, "severity": severity, **params}


def declared_rules_spec(folder: Path) -> dict:
    """Declared filter, warn, reference and conditional rules on the order lines
    (tests/spark_jobs/test_rules.py)."""
    line_spec = {
        **LINE_SPEC,
        "rules": [
            *LINE_SPEC["rules"],
            _rule("postage", "not_allowed", "filter", column="sku", values=["POST"]),
            _rule("bulk", "range", "warn", column="quantity", max="5"),
            _rule("unknown_product", "reference", column="sku", dataset="products", key="sku",
                  message="not in the catalogue"),
            _rule("write_off", "range", "filter", column="quantity", min="0", when="order_id not like 'R%'"),
            _rule("big_return", "range", column="quantity", min="-5", when="order_id like 'R%'"),
        ],
    }  # fmt: skip
    lines = [
        line(line_number="1", quantity="9"),  # loaded with a warning
        line(line_number="2", sku="POST"),  # filtered, not quarantined as an unknown product
        line(line_number="3", quantity="0"),  # rejected by a declared rule
        line(line_number="4", sku="NOPE"),  # rejected by the declared reference rule
        line(line_number="5", quantity="-1", sku="POST"),  # filtered twice: counted under postage
        line(order_id="R1", line_number="1", quantity="-6"),  # a return: rejected, not written off
        line(order_id="R1", line_number="2", quantity="-5"),  # a return: loaded
    ]
    inputs = {
        "order_lines": (line_spec, lines),
        "products": (PRODUCT_SPEC, PRODUCTS),
        "stores": (STORE_SPEC, STORES),
    }
    return job_spec(folder, inputs)


def warehouse_limits_spec(folder: Path) -> dict:
    """Values the warehouse's columns cannot hold, quarantined by the job's implicit rules
    (tests/spark_jobs/test_implicit_rules.py)."""
    line_spec = {
        **LINE_SPEC,
        "rules": [
            *LINE_SPEC["rules"],
            _rule("order_id_shape", "pattern", column="order_id", pattern="O[0-9]+"),
        ],
    }
    lines = [
        line(order_id="O1"),
        line(order_id="X" * (ORDER_ID_MAX + 1)),  # breaks the declared rule too
        line(order_id="O3", quantity=str(INT_MAX + 1)),  # an int column: does not parse
        line(order_id="O4", currency="EURO"),
        line(order_id="O5", currency="ßß"),  # 2 characters, but SSSS once upper-cased as loaded
        line(order_id="O6", customer_country="F" * (COUNTRY_MAX + 1)),
        line(order_id="O7", quantity="2000000000", unit_price="99999999999999.0000"),
        line(order_id="O8", sku="P5", customer_country=" " + "F" * COUNTRY_MAX + " "),  # fits once trimmed
    ]
    products = [
        *PRODUCTS,
        {"sku": "P3", "name": TOO_LONG_NAME},
        {"sku": "P4", "name": "x" * 150 + "     " + "y" * (NAME_MAX - 151)},  # NAME_MAX once collapsed
        {"sku": "P5", "name": "😀" * NAME_MAX},  # characters, not bytes or UTF-16 units
    ]
    stores = [*STORES, {"store_code": "S" * (STORE_CODE_MAX + 1), "name": "Far"}]
    inputs = {
        "order_lines": (line_spec, lines),
        "products": (PRODUCT_SPEC, products),
        "stores": (STORE_SPEC, stores),
    }
    return job_spec(folder, inputs)


def rule_syntax_spec(folder: Path) -> dict:
    """Patterns in the Java syntax the pipeline file documents (docs/configuration.md: `\\d` and `\\w` are
    ASCII in Java, `(?i)` folds ASCII case only) on text in other scripts, and `when` conditions: typed
    comparisons, exact decimal literals, timestamp literals with an offset, `in`, `is null`, `not`,
    precedence, quotes and `like` with `_` and an escape."""
    line_spec = {
        **LINE_SPEC,
        "rules": [
            *LINE_SPEC["rules"],
            _rule("order_id_digits", "pattern", "warn", column="order_id", pattern=r"[OR]\d+"),
            _rule("sku_word", "pattern", "warn", column="sku", pattern=r"\w+"),
            _rule("spanish_country", "pattern", "warn", column="customer_country", pattern="(?i)és",
                  match="search", negate=True),
            _rule("country_letters", "pattern", "warn", column="customer_country", pattern="[A-Za-z]{2}"),
            _rule("known_currency", "allowed", "warn", column="currency", values=["eur"], ignore_case=True),
            _rule("big_foreign", "range", "warn", column="quantity", max="0",
                  when="unit_price >= 10.50 and currency in ('GBP', 'USD')"
                       " or not (customer_country is not null) and order_id = 'X''Y'"),
            _rule("above_the_cent", "range", "warn", column="quantity", max="0",
                  when="unit_price > 12345678901234.5678"),
            _rule("after_noon", "range", "warn", column="quantity", max="0",
                  when="ordered_at >= '2026-11-01T13:00:00+01:00'"),
            _rule("one_character", "range", "warn", column="quantity", max="0", when="order_id like 'O_'"),
            _rule("escaped", "range", "warn", column="quantity", max="0", when="order_id like 'X\\_%'"),
        ],
    }  # fmt: skip
    lines = [
        line(order_id="O1", ordered_at="2026-11-01T12:00:00Z"),
        line(order_id="O\u0661"),  # Arabic-Indic digit one
        line(order_id="O\uff11", customer_country="ÉS"),  # fullwidth digit one
        line(order_id="O2", customer_country="és", unit_price="10.50", currency="GBP"),
        line(order_id="O3", customer_country="Es", currency="eur", unit_price="10.49"),
        line(order_id="O4", customer_country="ÇA", currency="Eur", ordered_at="2026-11-01T11:59:59.999999Z"),
        line(order_id="X'Y", customer_country=None),
        line(order_id="X_1", unit_price="12345678901234.5679"),
        line(order_id="XY1", unit_price="12345678901234.5678"),
    ]
    inputs = {
        "order_lines": (line_spec, lines),
        "products": (PRODUCT_SPEC, PRODUCTS),
        "stores": (STORE_SPEC, STORES),
    }
    return job_spec(folder, inputs)


def unicode_class_pattern_spec(folder: Path) -> dict:
    """A Java character class (`\\p{Lu}`: an upper-case letter of any script) in a pattern rule."""
    line_spec = {
        **LINE_SPEC,
        "rules": [
            *LINE_SPEC["rules"],
            _rule("country_upper", "pattern", "warn", column="customer_country", pattern=r"\p{Lu}{2}"),
        ],
    }
    lines = [
        line(order_id="O1"),
        line(order_id="O2", customer_country="ÉS"),
        line(order_id="O3", customer_country="fr"),
    ]
    inputs = {
        "order_lines": (line_spec, lines),
        "products": (PRODUCT_SPEC, PRODUCTS),
        "stores": (STORE_SPEC, STORES),
    }
    return job_spec(folder, inputs)


def wall_clock_times_spec(folder: Path) -> dict:
    """Order times without an offset read as Paris wall-clock time (`source_timezone`), business dates cut
    at Paris midnight, around both daylight-saving changes: a time that happens twice, one that never does."""
    times = [
        "2026-11-01 09:00:00",
        "2026-11-01T00:30:00",  # the previous day in UTC
        "2026-10-31T23:30:00Z",  # an instant: the offset wins; 00:30 in Paris
        "2026-11-01T23:59:59.999999",
        "2026-10-25 02:30:00",  # twice that night: clocks went back from 03:00 to 02:00
        "2026-03-29 02:30:00",  # never: clocks went forward from 02:00 to 03:00
        "2026-03-29T02:30:00+01:00",
        "2026-10-25T01:59:59",
        "2026-10-25T03:00:00",
    ]
    lines = [line(order_id=f"O{n}", ordered_at=at, updated_at=at) for n, at in enumerate(times, start=1)]
    inputs = {
        "order_lines": (LINE_SPEC, lines),
        "products": (PRODUCT_SPEC, PRODUCTS),
        "stores": (STORE_SPEC, STORES),
    }
    return {
        **job_spec(folder, inputs),
        "timezone": "Europe/Paris",
        "options": {"source_timezone": "Europe/Paris"},
    }


def far_dates_spec(folder: Path) -> dict:
    """Order times at the ends of the four-digit years the timestamp shape takes: year 0, the Gregorian
    reform, and an offset that carries the last second of 9999 into year 10000 in UTC."""
    times = [
        "0000-01-01T00:00:00Z",
        "0001-01-01T00:30:00+01:00",  # year 0 in UTC
        "1582-10-10T12:00:00Z",  # a day the Julian to Gregorian change skipped
        "1900-01-01T00:00:00Z",
        "9999-12-31T23:59:59Z",
        "9999-12-31T23:59:59-01:00",  # 10000-01-01T00:59:59 UTC
    ]
    lines = [line(order_id=f"O{n}", ordered_at=at, updated_at=at) for n, at in enumerate(times, start=1)]
    inputs = {
        "order_lines": (LINE_SPEC, lines),
        "products": (PRODUCT_SPEC, PRODUCTS),
        "stores": (STORE_SPEC, STORES),
    }
    return job_spec(folder, inputs)
