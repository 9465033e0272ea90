"""The ops console's figures, from run records: durations, error lines, the reconciliation that adds up,
the log tail, quarantine messages and records with personal fields masked."""

from __future__ import annotations

import json

from etlcore import console


def test_durations_read_as_a_person_would_say_them():
    assert [console.duration_human(s) for s in (None, 4.25, 35.966081, 754, 3725)] == [
        "-",
        "4.2s",
        "36s",
        "12m 34s",
        "1h 02m",
    ]


def test_the_error_column_shows_the_first_line_cut_with_an_ellipsis():
    assert (
        console.error_first_line("source 'products': no file\nTraceback ...") == "source 'products': no file"
    )
    assert console.error_first_line("x" * 200, width=20) == "x" * 19 + "…"
    assert console.error_first_line("") == ""


def test_reconciliation_per_dataset_adds_up_loaded_quarantined_duplicates_and_filtered_per_rule():
    details = {
        "datasets": {
            "order_lines": {
                "rows_in": 959,
                "rows_out": 462,
                "rejected": 6,
                "duplicates": 11,
                "filtered": {"cancelled": 470, "test_order": 10},
                "rule_failures": {"unknown_product": 4, "missing_rate": 2},
                "warnings": {},
            },
            "products": {"rows_in": 5, "rows_out": 4, "rejected": 0, "duplicates": 0, "filtered": {}},
        },
        "outputs": {"sales_lines": 462},
    }
    lines, products = console.reconciliation(details)
    assert (lines.dataset, lines.rows_in, lines.loaded, lines.quarantined, lines.duplicates) == (
        "order_lines",
        959,
        462,
        6,
        11,
    )
    assert lines.filtered == {"cancelled": 470, "test_order": 10} and lines.filtered_total == 480
    assert lines.rule_failures == {"missing_rate": 2, "unknown_product": 4}
    assert lines.balanced and lines.accounted == 959
    assert not products.balanced and products.accounted == 4  # one row unaccounted for: shown as such
    assert console.reconciliation({"loaded": {"sales_lines": 3}}) == []


def test_the_log_tail_is_the_recorded_one_else_the_end_of_the_file_else_nothing(tmp_path):
    log = tmp_path / "spark.log"
    log.write_text("".join(f"line {n}\n" for n in range(100)))
    where, tail = console.log_tail({"log": str(log)}, lines=3)
    assert (where, tail) == (str(log), "line 97\nline 98\nline 99")
    assert console.log_tail({"log": str(log), "log_tail": "recorded 1\nrecorded 2"}) == (
        str(log),
        "recorded 1\nrecorded 2",
    )
    assert console.log_tail({"log": str(tmp_path / "gone.log")}) == (str(tmp_path / "gone.log"), "")
    assert console.log_tail({}) == ("", "")


def test_a_quarantined_record_shows_every_personal_field_masked_whatever_it_holds():
    raw = json.dumps(
        {
            "customer_email": "hmac-abc",
            "customer_email_encrypted": "[encrypted]",
            "Email": "a@b.c",
            "sku": "X9",
        }
    )
    shown = json.loads(console.record_masked(raw, {"customer_email", "customer_email_encrypted", "email"}))
    assert shown == {
        "customer_email": console.MASK,
        "customer_email_encrypted": console.MASK,
        "Email": console.MASK,
        "sku": "X9",
    }
    assert console.record_masked("not json", {"x"}) == console.MASK
    assert json.loads(console.record_masked(raw, {console.EVERY}))["sku"] == console.MASK
    assert "\n  " in console.record_masked(raw, ())  # pretty-printed


def test_a_quarantine_message_gives_each_rule_its_column_and_offending_value_personal_ones_masked():
    message = (
        "invalid_unit_price: unit_price='abc'; unknown_product: sku='X9' (not in products; see the master); "
        "missing_customer_email: customer_email='hmac-1'; late_line"
    )
    reasons = console.message_reasons(message, {"customer_email"})
    assert [(r.code, r.column, r.value) for r in reasons] == [
        ("invalid_unit_price", "unit_price", "'abc'"),
        ("unknown_product", "sku", "'X9'"),
        ("missing_customer_email", "customer_email", console.MASK),
        ("late_line", "", ""),
    ]
    assert reasons[1].note == "(not in products; see the master)"
    assert {r.value for r in console.message_reasons(message, {console.EVERY}) if r.value} == {console.MASK}
    masked = console.message_masked(message, {"customer_email"})
    assert "hmac-1" not in masked and "unknown_product: sku='X9' (not in products; see the master)" in masked
