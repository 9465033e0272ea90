"""`make demo`: generate the demo sources, serve the orders API on loopback, run the nightly pipeline for
each demo date, and prove with table checksums what the run changed in the warehouse."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

from django.db.models import Count, Sum

from etlcore.config import pipeline_load
from etlcore.models import PipelineRun
from etlcore.services.pipeline import STEPS, pipeline_execute
from warehouse.checks import warehouse_checksums
from warehouse.models import FactSalesLine, QuarantinedRow

from .api_server import TOKEN_ENV, demo_api_token, start_demo_api
from .generate import DEMO_API_TOKEN_DEFAULT, DEMO_BUSINESS_DATES, generate_demo_data

DEMO_PIPELINE = "retail_demo"
PSEUDONYM_KEY_ENV = "ETL_PSEUDONYM_KEY"
# Used only when ETL_PSEUDONYM_KEY is unset, and only by the demo: its customers are made up.
DEMO_PSEUDONYM_KEY = "demo-pseudonym-key-not-a-secret"
PII_KEYS_ENV = "ETL_PII_KEYS"
# The same for the Fernet key of the demo's encrypted e-mail (pii = "encrypt"): published, made-up data only.
# Made once with Fernet.generate_key(); a real pipeline's keys come from the environment, with no default.
DEMO_PII_KEYS = "k1neBVlvCAqGkLGdhiCkJYsNX4nVDuVweBJSqaglb0k="


def demo_secret_defaults() -> dict[str, str]:
    """The published values the demo gives its secrets' variables when they are unset: `make demo` runs
    with them, and `make check` validates the shipped pipelines with them (made-up data, loopback only)."""
    return {
        TOKEN_ENV: DEMO_API_TOKEN_DEFAULT,
        PSEUDONYM_KEY_ENV: DEMO_PSEUDONYM_KEY,
        PII_KEYS_ENV: DEMO_PII_KEYS,
    }


@dataclass
class DemoReport:
    runs: list[PipelineRun]
    data_dir: Path
    api_url: str
    tables_before: dict[str, tuple[int, str]]
    tables_after: dict[str, tuple[int, str]]
    defaults_used: list[str]
    datasets: list[str] = field(default_factory=list)  # the pipeline's datasets, in its file's order
    # Per business date, what the warehouse holds after the run: quarantined rows per reason code, and
    # sales lines per currency (the conversion to the reporting currency at work).
    quarantined: dict[date, dict[str, int]] = field(default_factory=dict)
    lines_by_currency: dict[date, dict[str, int]] = field(default_factory=dict)

    @property
    def changed_tables(self) -> list[str]:
        return [t for t, v in self.tables_after.items() if self.tables_before.get(t) != v]


def demo_run(*, data_dir: Path, business_dates: Sequence[date] = DEMO_BUSINESS_DATES) -> DemoReport:
    dataset = generate_demo_data(out_dir=data_dir, business_dates=business_dates)
    token, _from_env = demo_api_token()
    defaults = {
        TOKEN_ENV: token,
        PSEUDONYM_KEY_ENV: DEMO_PSEUDONYM_KEY,
        PII_KEYS_ENV: DEMO_PII_KEYS,
        "ETL_DEMO_DIR": str(data_dir),
    }
    defaults_used = [
        name for name in (TOKEN_ENV, PSEUDONYM_KEY_ENV, PII_KEYS_ENV) if not os.environ.get(name)
    ]
    with (
        start_demo_api(orders_path=dataset.orders_path, token=token) as api,
        environ_defaults({**defaults, "ETL_DEMO_API_URL": api.url}),
    ):
        config = pipeline_load(DEMO_PIPELINE)
        database = config.database
        before = warehouse_checksums(using=database)
        runs = [
            pipeline_execute(
                pipeline=DEMO_PIPELINE, business_date=day.isoformat(), steps=STEPS, command="run_pipeline"
            )
            for day in business_dates
        ]
        after = warehouse_checksums(using=database)
    return DemoReport(
        runs=runs,
        data_dir=data_dir,
        api_url=api.url,
        tables_before=before,
        tables_after=after,
        defaults_used=defaults_used,
        datasets=list(config.datasets),
        quarantined={d: _quarantined(database, d) for d in business_dates},
        lines_by_currency={d: _lines_by_currency(database, d) for d in business_dates},
    )


def _quarantined(database: str, business_date: date) -> dict[str, int]:
    rows = (
        QuarantinedRow.objects.using(database)
        .filter(pipeline=DEMO_PIPELINE, business_date=business_date)
        .values("reason_code")
        .annotate(rows=Sum("occurrences"))
        .order_by("reason_code")
    )
    return {r["reason_code"]: r["rows"] for r in rows}


def _lines_by_currency(database: str, business_date: date) -> dict[str, int]:
    rows = (
        FactSalesLine.objects.using(database)
        .filter(date__date=business_date)
        .values("currency")
        .annotate(lines=Count("id"))
        .order_by("-lines", "currency")
    )
    return {r["currency"]: r["lines"] for r in rows}


@contextmanager
def environ_defaults(values: dict[str, str]) -> Iterator[None]:
    """Set variables the user has not set, for the duration of the demo (or of a validation) only.

    The API URL always comes from the server just started (its port is chosen by the OS)."""
    saved = {name: os.environ.get(name) for name in values}
    for name, value in values.items():
        if name == "ETL_DEMO_API_URL" or not os.environ.get(name):
            os.environ[name] = value
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
