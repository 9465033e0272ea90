"""Quality rules declared in a pipeline file: parsed into the job spec, every mistake refused at load with
the file, dataset and rule named."""

from __future__ import annotations

from pathlib import Path

import pytest

from etlcore.config import pipeline_parse
from etlcore.errors import ConfigurationError
from spark_jobs.rule_spec import RULE_CHECKS, RULE_COMMON_KEYS
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


def test_when_ignore_case_match_and_negate_reach_the_job_spec(tmp_path):
    config = parse(
        tmp_path,
        """
[[datasets.lines.rules]]
code = "stock_write_off"
check = "range"
column = "qty"
min = 0
severity = "filter"
when = "id not like 'C%'"
[[datasets.lines.rules]]
code = "manual_line"
check = "allowed"
column = "sku"
values = ["M", "POST"]
ignore_case = true
[[datasets.lines.rules]]
code = "gift_voucher"
check = "pattern"
column = "sku"
pattern = "gift_"
match = "search"
negate = true
when = "day >= '2026-01-01' and qty in (1, 2)"
[[datasets.lines.rules]]
code = "one_email"
check = "unique"
columns = ["email"]
when = "email is not null"
""",
    )

    assert config.datasets["lines"].spark_rules() == [
        {
            "code": "stock_write_off",
            "check": "range",
            "severity": "filter",
            "column": "qty",
            "when": "id not like 'C%'",
            "min": "0",
        },
        {
            "code": "manual_line",
            "check": "allowed",
            "severity": "reject",
            "column": "sku",
            "values": ["M", "POST"],
            "ignore_case": True,
        },
        {
            "code": "gift_voucher",
            "check": "pattern",
            "severity": "reject",
            "column": "sku",
            "when": "day >= '2026-01-01' and qty in (1, 2)",
            "pattern": "gift_",
            "match": "search",
            "negate": True,
        },
        {
            "code": "one_email",
            "check": "unique",
            "severity": "reject",
            "columns": ["email"],
            "when": "email is not null",
        },
    ]


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
        (
            RULE + 'check = "range"\ncolumn = "qty"\nmin = 0\nwhen = "id not like \'C%"',
            r"rule 1 \(r1\): when \"id not like 'C%\": the text opened at character 13 is not closed",
        ),
        (
            RULE + 'check = "range"\ncolumn = "qty"\nmin = 0\nwhen = "invoice not like \'C%\'"',
            r"rule 1 \(r1\): when .*: unknown column 'invoice' at character 1 \(declared: id, sku, qty",
        ),
        (
            RULE + 'check = "required"\ncolumn = "id"\nwhen = "qty < \'0\'"',
            r"'0' is not a value of qty \(int\): write a number",
        ),
        (
            RULE + 'check = "required"\ncolumn = "id"\nwhen = "day > \'yesterday\'"',
            r"'yesterday' is not a valid date value",
        ),
        (RULE + 'check = "required"\ncolumn = "id"\nwhen = "sku > \'A\'"', r"'>' compares numbers"),
        (RULE + 'check = "required"\ncolumn = "id"\nwhen = "qty < 0 and"', r"expected a column name"),
        (RULE + 'check = "required"\ncolumn = "id"\nwhen = 5', r"when 5: a condition must be non-empty"),
        (
            RULE + 'check = "unique"\ncolumns = ["id"]\nwhen = "nope is null"',
            r"rule 1 \(r1\): when 'nope is null': unknown column 'nope'",
        ),
        (
            RULE + 'check = "allowed"\ncolumn = "qty"\nvalues = [1]\nignore_case = true',
            r"ignore_case needs a text column; qty is int",
        ),
        (
            RULE + 'check = "allowed"\ncolumn = "sku"\nvalues = ["M"]\nignore_case = "yes"',
            r"ignore_case must be true or false",
        ),
        (
            RULE + 'check = "required"\ncolumn = "sku"\nignore_case = true',
            r"unknown key\(s\) \['ignore_case'\] for check 'required'",
        ),
        (
            RULE + 'check = "pattern"\ncolumn = "sku"\npattern = "x"\nmatch = "partial"',
            r"match 'partial' is not one of full, search",
        ),
        (
            RULE + 'check = "pattern"\ncolumn = "sku"\npattern = "x"\nnegate = 1',
            r"negate must be true or false",
        ),
        (
            RULE + 'check = "allowed"\ncolumn = "sku"\nvalues = ["M"]\nnegate = true',
            r"unknown key\(s\) \['negate'\] for check 'allowed'",
        ),
    ],
)
def test_invalid_rule_is_refused_at_load_naming_the_file_dataset_and_rule(tmp_path, rule, error):
    with pytest.raises(ConfigurationError, match=error) as raised:
        parse(tmp_path, rule)
    assert "shop.toml" in str(raised.value) and "[datasets.lines]" in str(raised.value)


def test_pii_flag_must_be_a_boolean_or_encrypt(tmp_path):
    path = tmp_path / "shop.toml"
    path.write_text(pipeline("").replace("pii = true", 'pii = "yes"'))
    expected = r"\[datasets\.lines\.columns\.email\]: pii must be true, false or \"encrypt\", got 'yes'$"
    with pytest.raises(ConfigurationError, match=expected):
        pipeline_parse(path, environ={})


def test_every_rule_key_is_documented_for_exactly_the_checks_that_take_it():
    docs = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text(encoding="utf-8")
    section = docs.split("### Quality rules: `[[datasets.<name>.rules]]`\n", 1)[1].split("\n| key |", 1)[1]
    rows = [line.split("|") for line in section.split("\n\n", 1)[0].splitlines() if line.startswith("| `")]
    documented: dict[str, set[str]] = {}
    for _, keys, checks, *_ in rows:
        if checks.strip() == "all":
            taken = set(RULE_CHECKS)
        elif checks.strip() == "all but `unique`":
            taken = set(RULE_CHECKS) - {"unique"}
        else:
            taken = set(checks.split("`")[1::2])
        for key in keys.split("`")[1::2]:
            documented[key] = taken
    declared: dict[str, set[str]] = {key: set(RULE_CHECKS) for key in RULE_COMMON_KEYS}
    for check, keys in RULE_CHECKS.items():
        for key in keys:
            declared.setdefault(key, set()).add(check)

    assert documented == declared
