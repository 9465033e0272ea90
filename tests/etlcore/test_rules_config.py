"""Quality rules declared in a pipeline file: parsed into the job spec, every mistake refused at load with
the file, dataset and rule named."""

from __future__ import annotations

import pytest

from etlcore.config import pipeline_parse
from etlcore.errors import ConfigurationError
from tests.pipelines import dataset, pipeline_toml

PRODUCTS = dataset("products.csv", sku={"type": "string", "required": True}, price={"type": "decimal(18,2)"})
LINE_COLUMNS = {
    "id": {"type": "string", "required": True},
    "sku": {"type": "string"},
    "qty": {"type": "int"},
    "day": {"type": "date"},
    "email": {"type": "string", "pii": True},
}


def pipeline(rules: str) -> str:
    lines = dataset("lines.csv", extra=rules, **LINE_COLUMNS)
    return pipeline_toml(datasets={"products": PRODUCTS, "lines": lines})


def parse(tmp_path, rules: str):
    path = tmp_path / "shop.toml"
    path.write_text(pipeline(rules))
    return pipeline_parse(path, environ={})


def test_declared_rules_reach_the_job_spec_with_values_normalised_to_exact_text(tmp_path):
    config = parse(
        tmp_path,
        """
[[datasets.lines.rules]]
code = "qty_range"
check = "range"
column = "qty"
min = 1
max = "100"
exclusive_max = true
severity = "warn"
message = "unusual quantity"
[[datasets.lines.rules]]
code = "recent"
check = "range"
column = "day"
min = 2026-01-01
[[datasets.lines.rules]]
code = "unknown_product"
check = "reference"
column = "sku"
dataset = "products"
key = "sku"
[[datasets.lines.rules]]
code = "one_line_per_sku"
check = "unique"
columns = ["id", "sku"]
[[datasets.products.rules]]
code = "price_list"
check = "allowed"
column = "price"
values = ["1.5", 2, 0.25]
""",
    )

    assert config.datasets["lines"].spark_rules() == [
        {
            "code": "qty_range",
            "check": "range",
            "severity": "warn",
            "column": "qty",
            "message": "unusual quantity",
            "min": "1",
            "max": "100",
            "exclusive_max": True,
        },
        {"code": "recent", "check": "range", "severity": "reject", "column": "day", "min": "2026-01-01"},
        {
            "code": "unknown_product",
            "check": "reference",
            "severity": "reject",
            "column": "sku",
            "dataset": "products",
            "key": "sku",
        },
        {"code": "one_line_per_sku", "check": "unique", "severity": "reject", "columns": ["id", "sku"]},
    ]
    assert config.datasets["products"].spark_rules()[0]["values"] == ["1.5", "2", "0.25"]
    assert config.datasets["lines"].spark_columns()["email"] == {
        "type": "string",
        "required": False,
        "pii": True,
    }
    assert "pii" not in config.datasets["lines"].spark_columns()["sku"]


RULE = '[[datasets.lines.rules]]\ncode = "r1"\n'


@pytest.mark.parametrize(
    ("rule", "error"),
    [
        (
            '[[datasets.lines.rules]]\ncode = "Bad Code"\ncheck = "required"\ncolumn = "id"',
            r"rule 1: `code` must be",
        ),
        (RULE + 'check = "maximum"\ncolumn = "qty"', r"rule 1 \(r1\): check 'maximum' is not one of"),
        (
            RULE + 'check = "required"\ncolumn = "qty"\nseverity = "ignore"',
            r"severity 'ignore' is not one of",
        ),
        (RULE + 'check = "required"\ncolumn = "nope"', r"`column` must name a column declared"),
        (
            RULE + 'check = "range"\ncolumn = "qty"\nminimum = 1',
            r"unknown key\(s\) \['minimum'\] for check 'range'",
        ),
        (RULE + 'check = "range"\ncolumn = "sku"\nmin = 1', r"range needs a number.*sku is string"),
        (RULE + 'check = "range"\ncolumn = "qty"', r"range needs `min`, `max` or both"),
        (RULE + 'check = "range"\ncolumn = "qty"\nmin = 1.5', r"1.5 is not a valid int value"),
        (RULE + 'check = "range"\ncolumn = "qty"\nmin = 5\nmax = 1', r"min 5 is greater than max 1"),
        (RULE + 'check = "range"\ncolumn = "day"\nmin = "2026-02-30"', r"'2026-02-30' is not a valid date"),
        (RULE + 'check = "allowed"\ncolumn = "qty"\nvalues = []', r"`values` must be a non-empty list"),
        (RULE + 'check = "allowed"\ncolumn = "qty"\nvalues = ["x"]', r"'x' is not a valid int value"),
        (RULE + 'check = "pattern"\ncolumn = "sku"\npattern = "[A-Z"', r"pattern '\[A-Z' is not a valid"),
        (RULE + 'check = "unique"\ncolumns = ["id", "nope"]', r"column\(s\) \['nope'\] are not declared"),
        (
            RULE + 'check = "reference"\ncolumn = "sku"\ndataset = "lines"\nkey = "sku"',
            r"'lines' is not another",
        ),
        (
            RULE + 'check = "reference"\ncolumn = "sku"\ndataset = "products"\nkey = "id"',
            r"key 'id' is not a col",
        ),
        (RULE + 'check = "reference"\ncolumn = "sku"\ndataset = "products"', r"reference needs `key`"),
        (
            RULE + 'check = "required"\ncolumn = "id"\n' + RULE + 'check = "required"\ncolumn = "sku"',
            r"\['r1'\] .*once",
        ),
    ],
)
def test_invalid_rule_is_refused_at_load_naming_the_file_dataset_and_rule(tmp_path, rule, error):
    with pytest.raises(ConfigurationError, match=error) as raised:
        parse(tmp_path, rule)
    assert "shop.toml" in str(raised.value) and "[datasets.lines]" in str(raised.value)


def test_pii_flag_must_be_a_boolean(tmp_path):
    path = tmp_path / "shop.toml"
    path.write_text(pipeline("").replace("pii = true", 'pii = "yes"'))
    with pytest.raises(ConfigurationError, match=r"\[datasets\.lines\.columns\.email\]: pii must be true or"):
        pipeline_parse(path, environ={})
