"""Volume guards: the pure evaluation at its bounds, strict parsing of [datasets.<name>.guards], the
reference date, and what pipeline_status shows. The run through the real steps is in test_guards_run.py."""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal
from io import StringIO
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import call_command
from django.utils import timezone

from etlcore.config import GuardConfig, pipeline_load, pipeline_parse
from etlcore.errors import ConfigurationError
from etlcore.guards import PreviousCounts, guards_evaluate
from etlcore.models import PipelineRun, StepRun
from etlcore.selectors import guards_previous
from tests.pipelines import dataset, pipeline_toml

DAY = date(2026, 11, 2)
BEFORE = date(2026, 11, 1)


def guard(name: str, bound: str | int, on_breach: str = "fail") -> GuardConfig:
    return GuardConfig(name=name, bound=Decimal(bound), on_breach=on_breach)


def counts(rows_in: int, *, rejected: int = 0, duplicates: int = 0, filtered: dict | None = None) -> dict:
    filtered = filtered or {}
    rows_out = rows_in - rejected - duplicates - sum(filtered.values())
    return {
        "rows_in": rows_in,
        "rows_out": rows_out,
        "rejected": rejected,
        "duplicates": duplicates,
        "filtered": filtered,
        "warnings": {},
    }


def evaluate(declared: GuardConfig, figures: dict, previous: dict | None = None, dataset: str = "products"):
    reference = None
    if previous is not None:
        reference = PreviousCounts(business_date=BEFORE, run_id=7, datasets=previous)
    return guards_evaluate(
        business_date=DAY, guards={dataset: (declared,)}, counts={dataset: figures}, previous=reference
    )


def messages(report) -> list[str]:
    return [b.message for b in report.breaches]


# --- evaluation ----------------------------------------------------------------------------------------


def test_min_rows_passes_at_the_bound_and_fails_one_row_short_naming_figure_and_bound():
    assert evaluate(guard("min_rows", 3), counts(3)).breaches == []
    report = evaluate(guard("min_rows", 3), counts(2))
    assert messages(report) == ["products on 2026-11-02: 2 rows, the guard requires at least 3 (min_rows)"]
    assert [(b.guard, b.value, b.bound, b.on_breach) for b in report.breaches] == [("min_rows", 2, 3, "fail")]
    assert [b.message for b in report.failures] == messages(report)


def test_an_empty_export_breaks_min_rows_and_its_shares_are_not_evaluated():
    report = guards_evaluate(
        business_date=DAY,
        guards={"products": (guard("min_rows", 1), guard("max_quarantined_share", "0.05"))},
        counts={"products": counts(0)},
        previous=None,
    )
    assert messages(report) == ["products on 2026-11-02: 0 rows, the guard requires at least 1 (min_rows)"]
    assert [(s.guard, s.reason) for s in report.skipped] == [
        ("max_quarantined_share", "no records: a share of nothing")
    ]


def test_quarantined_share_at_the_bound_passes_and_one_row_more_fails():
    assert evaluate(guard("max_quarantined_share", "0.05"), counts(100, rejected=5)).breaches == []
    report = evaluate(guard("max_quarantined_share", "0.05"), counts(100, rejected=6), dataset="order_lines")
    assert messages(report) == [
        "order_lines on 2026-11-02: 6 of 100 records quarantined (6 %), "
        "the guard allows at most 5 % (max_quarantined_share)"
    ]
    assert report.breaches[0].value == 0.06


def test_shares_compare_exactly_so_a_decimal_bound_is_not_broken_by_float_rounding():
    # 30/100 > float(0.3) in binary floating point; the guard reads 0.3 as written.
    assert evaluate(guard("max_quarantined_share", "0.3"), counts(100, rejected=30)).breaches == []
    assert evaluate(guard("max_drop", "0.3"), counts(70), previous={"products": counts(100)}).breaches == []
    assert evaluate(guard("max_drop", "0.3"), counts(69), previous={"products": counts(100)}).breaches


def test_shares_are_of_the_records_left_after_de_duplication():
    # 100 rows delivered, half of them copies: 5 quarantined are 10 % of the 50 records, not 5 %.
    report = evaluate(guard("max_quarantined_share", "0.05"), counts(100, rejected=5, duplicates=50))
    assert messages(report) == [
        "products on 2026-11-02: 5 of 50 records quarantined (10 %), "
        "the guard allows at most 5 % (max_quarantined_share)"
    ]


def test_filtered_share_adds_every_filter_code_and_fails_just_past_the_bound():
    filtered = {"postage": 30, "fee": 20}
    assert evaluate(guard("max_filtered_share", "0.5"), counts(100, filtered=filtered)).breaches == []
    report = evaluate(guard("max_filtered_share", "0.5"), counts(100, filtered={**filtered, "fee": 21}))
    assert messages(report) == [
        "products on 2026-11-02: 51 of 100 records filtered (51 %), "
        "the guard allows at most 50 % (max_filtered_share)"
    ]


def test_the_trial_case_fails_on_the_empty_products_and_on_the_order_lines_quarantined():
    report = guards_evaluate(
        business_date=DAY,
        guards={
            "order_lines": (guard("max_quarantined_share", "0.05"),),
            "products": (guard("min_rows", 1),),
        },
        counts={"order_lines": counts(596, rejected=579), "products": counts(0)},
        previous=None,
    )
    assert messages(report) == [
        "order_lines on 2026-11-02: 579 of 596 records quarantined (97.15 %), "
        "the guard allows at most 5 % (max_quarantined_share)",
        "products on 2026-11-02: 0 rows, the guard requires at least 1 (min_rows)",
    ]


def test_max_drop_against_the_previous_date_passes_at_the_bound_and_fails_one_row_past():
    previous = {"products": counts(60)}
    assert evaluate(guard("max_drop", "0.5"), counts(30), previous).breaches == []
    assert evaluate(guard("max_drop", "0.5"), counts(90), previous).breaches == []  # growth is no drop
    report = evaluate(guard("max_drop", "0.5"), counts(29), previous)
    assert messages(report) == [
        "products on 2026-11-02: 29 rows, 51.67 % fewer than the 60 of 2026-11-01, "
        "the guard allows a drop of at most 50 % (max_drop)"
    ]


@pytest.mark.parametrize(
    ("previous", "reason"),
    [
        (None, "no earlier date with a successful run"),
        ({"stores": counts(5)}, "no figure for the dataset on 2026-11-01"),
        ({"products": counts(0)}, "0 rows on 2026-11-01: nothing to drop from"),
    ],
    ids=["no-previous-date", "dataset-new-since", "previous-empty"],
)
def test_max_drop_without_a_usable_previous_figure_is_not_evaluated_and_says_why(previous, reason):
    report = evaluate(guard("max_drop", "0.5"), counts(0), previous)
    assert report.breaches == []
    assert [(s.dataset, s.guard, s.reason) for s in report.skipped] == [("products", "max_drop", reason)]


def test_a_warn_guard_is_a_breach_but_not_a_failure():
    report = evaluate(guard("min_rows", 1, on_breach="warn"), counts(0))
    assert [b.on_breach for b in report.breaches] == ["warn"]
    assert report.failures == []


# --- configuration -------------------------------------------------------------------------------------


def pipeline(guards: str, **parts) -> str:
    products = dataset("products.csv", sku={"required": True}, extra=guards)
    return pipeline_toml(datasets={"products": products}, **parts)


def parse(tmp_path: Path, guards: str):
    path = tmp_path / "shop.toml"
    path.write_text(pipeline(guards))
    return pipeline_parse(path, environ={})


def test_guards_parse_exactly_with_a_default_action_and_a_per_guard_one(tmp_path):
    config = parse(
        tmp_path,
        """[datasets.products.guards]
min_rows = 1
max_quarantined_share = 0.05
max_filtered_share = 1
max_drop = { value = 0.3, on_breach = "warn" }
on_breach = "fail"
""",
    )
    assert config.datasets["products"].guards == (
        GuardConfig("min_rows", Decimal(1), "fail"),
        GuardConfig("max_quarantined_share", Decimal("0.05"), "fail"),
        GuardConfig("max_filtered_share", Decimal(1), "fail"),
        GuardConfig("max_drop", Decimal("0.3"), "warn"),
    )
    default_warn = parse(
        tmp_path,
        '[datasets.products.guards]\nmin_rows = 0\nmax_drop = { value = 0.5 }\non_breach = "warn"\n',
    )
    assert default_warn.datasets["products"].guards == (
        GuardConfig("min_rows", Decimal(0), "warn"),
        GuardConfig("max_drop", Decimal("0.5"), "warn"),  # a guard's table inherits the dataset's action
    )
    assert parse(tmp_path, "").datasets["products"].guards == ()


@pytest.mark.parametrize(
    ("guards", "error"),
    [
        (
            "[datasets.products.guards]\nmin_row = 1\n",
            r"shop\.toml \[datasets\.products\.guards\]: unknown key 'min_row' \(did you mean 'min_rows'\? "
            r"known: min_rows, max_quarantined_share, max_filtered_share, max_drop, on_breach\)",
        ),
        (
            "[datasets.products.guards]\nmax_rows = 1\n",
            r"\[datasets\.products\.guards\]: unknown key 'max_rows' \(",
        ),
        (
            "[datasets.products.guard]\nmin_rows = 1\n",
            r"shop\.toml \[datasets\.products\]: unknown key 'guard' \(did you mean 'guards'\?",
        ),
        (
            '[datasets.products.guards]\nmax_drop = { value = 0.5, on_breech = "warn" }\n',
            r"\[datasets\.products\.guards\.max_drop\]: unknown key 'on_breech' \(did you mean 'on_breach'\?",
        ),
        (
            '[datasets.products.guards]\nmax_drop = { on_breach = "warn" }\n',
            r"\[datasets\.products\.guards\] max_drop: the table needs a `value`",
        ),
        (
            "[datasets.products.guards]\nmin_rows = -1\n",
            r"\[datasets\.products\.guards\] min_rows: must be a whole number of rows, 0 or more, got -1",
        ),
        ("[datasets.products.guards]\nmin_rows = 1.5\n", r"min_rows: must be a whole number .* got 1\.5"),
        ("[datasets.products.guards]\nmin_rows = true\n", r"min_rows: must be a whole number .* got True"),
        (
            "[datasets.products.guards]\nmax_quarantined_share = 1.5\n",
            r"\[datasets\.products\.guards\] max_quarantined_share: must be a share between 0 and 1 "
            r"\(0\.05 = 5 %\), got 1\.5",
        ),
        ("[datasets.products.guards]\nmax_drop = -0.1\n", r"max_drop: must be a share .* got -0\.1"),
        ("[datasets.products.guards]\nmax_filtered_share = nan\n", r"max_filtered_share: must be a share"),
        ('[datasets.products.guards]\nmax_drop = "50%"\n', r"max_drop: must be a share .* got '50%'"),
        (
            '[datasets.products.guards]\nmin_rows = 1\non_breach = "ignore"\n',
            r"\[datasets\.products\.guards\] on_breach: 'ignore' is not one of fail, warn",
        ),
        ("[datasets.products]\nguards = 1\n", r"\[datasets\.products\]: guards must be a table of guards"),
    ],
    ids=[
        "misspelt-guard",
        "unknown-guard",
        "misspelt-table",
        "misspelt-action",
        "table-without-value",
        "negative-min-rows",
        "fractional-min-rows",
        "boolean-min-rows",
        "share-above-one",
        "negative-share",
        "nan-share",
        "text-share",
        "unknown-action",
        "not-a-table",
    ],
)
def test_invalid_guards_are_an_error_naming_the_file_table_and_key(tmp_path, guards, error):
    if guards.startswith("[datasets.products]\n"):
        text = pipeline("").replace('key = ["sku"]\n', 'key = ["sku"]\nguards = 1\n')
        (tmp_path / "shop.toml").write_text(text)
        with pytest.raises(ConfigurationError, match=error):
            pipeline_parse(tmp_path / "shop.toml", environ={})
        return
    with pytest.raises(ConfigurationError, match=error):
        parse(tmp_path, guards)


def test_the_shipped_pipelines_declare_guards_on_every_dataset():
    demo = pipeline_parse(Path(settings.BASE_DIR) / "conf/pipelines/retail_demo.toml", environ={})
    assert {name: [g.name for g in ds.guards] for name, ds in demo.datasets.items()} == {
        "order_lines": ["min_rows", "max_quarantined_share", "max_drop"],
        "products": ["min_rows", "max_quarantined_share", "max_drop"],
        "stores": ["min_rows", "max_drop"],
        "rates": ["min_rows"],
    }
    retail = pipeline_parse(Path(settings.BASE_DIR) / "conf/pipelines/online_retail.toml", environ={})
    assert retail.datasets["order_lines"].guards == (
        GuardConfig("min_rows", Decimal(1), "fail"),
        GuardConfig("max_quarantined_share", Decimal("0.01"), "fail"),
        GuardConfig("max_drop", Decimal("0.9"), "warn"),
    )


# --- the reference date and pipeline_status -----------------------------------------------------------


def _run(
    alias: str, day: date, status: str, rows: int, *, pipeline: str = "shop", details: dict | None = None
):
    now = timezone.now()
    run = PipelineRun.objects.using(alias).create(
        pipeline=pipeline, business_date=day, command="run_pipeline", status=status, started_at=now
    )
    StepRun.objects.using(alias).create(
        run=run,
        step="transform",
        status="succeeded",
        started_at=now,
        details=details or {"datasets": {"products": counts(rows)}},
    )
    return run


@pytest.mark.django_db(databases="__all__")
def test_the_reference_is_the_nearest_earlier_date_with_a_succeeded_run_and_its_latest_run(
    pipeline_dir, db_alias
):
    (pipeline_dir / "shop.toml").write_text(pipeline("", database=db_alias))
    config = pipeline_load("shop")
    assert guards_previous(config=config, business_date=DAY) is None

    _run(db_alias, DAY - timedelta(days=3), "succeeded", 10)
    _run(db_alias, DAY - timedelta(days=2), "succeeded", 20)
    latest = _run(db_alias, DAY - timedelta(days=2), "succeeded", 21)  # a re-run of that date
    _run(db_alias, DAY - timedelta(days=1), "failed", 0)  # e.g. stopped by a guard: no reference
    _run(db_alias, DAY, "succeeded", 99)  # the date itself (a re-run) is never its own reference
    _run(db_alias, DAY + timedelta(days=1), "succeeded", 99)
    _run(db_alias, DAY - timedelta(days=1), "succeeded", 99, pipeline="other")

    previous = guards_previous(config=config, business_date=DAY)
    assert (previous.business_date, previous.run_id) == (DAY - timedelta(days=2), latest.pk)
    assert previous.datasets["products"]["rows_in"] == 21


@pytest.mark.django_db(databases="__all__")
def test_pipeline_status_shows_guard_failures_warnings_and_guards_not_evaluated(db_alias):
    guards = {
        "breaches": [
            {
                "dataset": "products",
                "guard": "min_rows",
                "on_breach": "fail",
                "value": 0,
                "bound": 1,
                "message": "products on 2026-11-02: 0 rows, the guard requires at least 1 (min_rows)",
            },
            {
                "dataset": "stores",
                "guard": "max_drop",
                "on_breach": "warn",
                "value": 0.6,
                "bound": 0.5,
                "message": "stores on 2026-11-02: 2 rows, 60 % fewer than ... (max_drop)",
            },
        ],
        "skipped": [
            {"dataset": "products", "guard": "max_drop", "reason": "no earlier date with a successful run"}
        ],
        "previous": None,
    }
    _run(db_alias, DAY, "failed", 0, details={"datasets": {"products": counts(0)}, "guards": guards})

    out = StringIO()
    call_command("pipeline_status", "--database", db_alias, stdout=out)
    lines = [line.strip() for line in out.getvalue().splitlines()]

    assert "guard failed: products on 2026-11-02: 0 rows, the guard requires at least 1 (min_rows)" in lines
    assert "guard warning: stores on 2026-11-02: 2 rows, 60 % fewer than ... (max_drop)" in lines
    assert "guard not evaluated: products max_drop (no earlier date with a successful run)" in lines
