"""The `when` condition language of spark_jobs.rule_spec: what a condition parses into (plain Python, the
tree every engine compiles), and every way it is refused."""

from __future__ import annotations

import pytest

from spark_jobs.rule_spec import And, Compare, In, IsNull, Like, Not, Or, condition_columns, condition_parse

TYPES = {
    "order_id": "string",
    "quantity": "int",
    "price": "decimal(18,4)",
    "day": "date",
    "at": "timestamp",
    "paid": "boolean",
}


def test_precedence_is_sql_not_binds_tightest_then_and_then_or_and_parentheses_group():
    parsed = condition_parse(
        "quantity < 0 OR not order_id like 'C%' and (paid = true or day >= '2026-01-01')", TYPES
    )

    assert parsed == Or(
        (
            Compare("quantity", "<", "0"),
            And(
                (
                    Not(Like("order_id", "C%")),
                    Or((Compare("paid", "=", "true"), Compare("day", ">=", "2026-01-01"))),
                )
            ),
        )
    )
    assert condition_columns(parsed) == {"quantity", "order_id", "paid", "day"}


def test_literals_keep_the_exact_text_of_the_columns_type_never_a_float():
    parsed = condition_parse(
        "price in (0.1, 1.10, -3) and order_id not in ('it''s', 'C1') and at <> '2026-11-01 09:00:00+01:00' "
        "and order_id is not null and day is null and quantity != +7",
        TYPES,
    )

    assert parsed == And(
        (
            In("price", ("0.1", "1.10", "-3")),
            In("order_id", ("it's", "C1"), negate=True),
            Compare("at", "!=", "2026-11-01T09:00:00+01:00"),
            IsNull("order_id", negate=True),
            IsNull("day"),
            Compare("quantity", "!=", "7"),
        )
    )


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("", r"must be non-empty text"),
        ("qty < 0", r"unknown column 'qty' at character 1 \(declared: order_id, quantity"),
        ("quantity < '0'", r"'0' is not a value of quantity \(int\): write a number \(at character 12\)"),
        ("order_id = 1", r"1 is not a value of order_id \(string\): write 'text'"),
        ("paid = 1", r"write true or false"),
        ("quantity = 1.5", r"'1.5' is not a valid int value"),
        ("price = 0.00001", r"more than 4 decimals"),
        ("day = '2026-02-30'", r"'2026-02-30' is not a valid date value"),
        ("order_id < 'x'", r"'<' compares numbers, dates and timestamps; order_id is string"),
        ("quantity like '1%'", r"`like` needs a text column; quantity is int"),
        ("order_id like C", r"expected a 'text' pattern after `like`, found 'C'"),
        ("order_id like 'C%", r"the text opened at character 15 is not closed"),
        ("quantity <", r"expected a value for quantity, found the end at character 11"),
        ("quantity < 0 and", r"expected a column name, found the end"),
        ("(quantity < 0", r"expected `\)`, found the end"),
        ("quantity < 0 quantity > 1", r"expected `and`, `or` or the end, found 'quantity' at character 14"),
        ("order_id not = 'x'", r"expected `in` or `like` after `not`"),
        ("quantity", r"expected a comparison"),
        ("quantity is 0", r"expected `null`"),
        ("quantity in ()", r"expected a value for quantity"),
        ("quantity < 0; drop table x", r"unexpected ';' at character 13"),
        ("__import__('os') = 1", r"unknown column '__import__'"),
        ('order_id = "C"', r"unexpected '\"' at character 12"),
        ("x" * 2001, r"at most 2000 characters"),
    ],
)
def test_a_bad_condition_is_refused_with_the_problem_and_where_it_is(text, error):
    with pytest.raises(ValueError, match=error):
        condition_parse(text, TYPES)
