"""Shared fixtures: one Spark session for the whole run, small and quiet."""

from __future__ import annotations

import os
import sys

import pytest

# The Fernet keys of encrypted personal columns (pii = "encrypt", the demo pipeline's e-mail copy): one key
# made for this test session, so every test running the demo pipeline extracts; tests of a missing or
# rotated key set or remove it themselves.
if not os.environ.get("ETL_PII_KEYS"):
    from cryptography.fernet import Fernet

    os.environ["ETL_PII_KEYS"] = Fernet.generate_key().decode("ascii")
# The erasure list's key (forget_customer), likewise made for this test session.
if not os.environ.get("ETL_ERASURE_KEY"):
    os.environ["ETL_ERASURE_KEY"] = os.urandom(16).hex()


def pytest_configure(config):
    """Session start, after pytest-django loaded the test settings and before any database is touched: find
    or start the PostgreSQL server of the `postgres` alias (conf/settings/test.py only declares SQLite)."""
    if config.getoption("version", 0) > 0 or config.getoption("help", False):
        return
    from django.conf import settings
    from django.db import connections

    from tests.postgres_server import postgres_alias_configure

    postgres_alias_configure(settings, connections)


def pytest_collection_modifyitems(config, items):
    """Files with real spark-submits (or marked `long`) first. `make test` hands files to two processes one
    at a time: the long files then run beside each other and the many short ones fill both processes at the
    end, rather than one long file running alone at the end while the other process has nothing left."""
    slow = {
        item.path
        for item in items
        if item.get_closest_marker("spark_submit") or item.get_closest_marker("long")
    }
    items.sort(key=lambda item: item.path not in slow)  # stable: each file's tests keep their order


@pytest.fixture(scope="session")
def spark():
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    session = (
        SparkSession.builder.master("local[2]")
        .appName("django-spark-etl-tests")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.default.parallelism", "2")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.driver.memory", "1g")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


def skip_or_fail_in_ci(reason: str, missing: str) -> None:
    """Skip a test whose server or data this machine lacks; under CI=true the run must not quietly shrink."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: a missing {missing} fails the run)")
    pytest.skip(reason)


def _postgres_or_skip() -> None:
    from django.conf import settings

    if "postgres" not in settings.DATABASES:
        skip_or_fail_in_ci(f"PostgreSQL tests: {settings.POSTGRES_FOUND}", "server")


@pytest.fixture(params=["default", "postgres"], ids=["sqlite", "postgres"])
def db_alias(request) -> str:
    """Run the test once on SQLite and once on PostgreSQL, each with its own migrated test database.

    The test needs `@pytest.mark.django_db(databases="__all__")` so both test databases exist."""
    if request.param == "postgres":
        _postgres_or_skip()
    return request.param


@pytest.fixture
def pipeline_dir(tmp_path, settings):
    """A folder of pipeline files that replaces conf/pipelines for the test."""
    folder = tmp_path / "pipelines"
    folder.mkdir()
    settings.ETL_PIPELINE_PATHS = [folder]
    return folder


@pytest.fixture
def staging_root(tmp_path, settings):
    """The test's own staging root: settings.ETL_STAGING_ROOT, which pipelines without `staging_root` use."""
    settings.ETL_STAGING_ROOT = tmp_path / "staging"
    return settings.ETL_STAGING_ROOT


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A browser test (one using a Playwright `page` fixture) that fails leaves a screenshot and the page's
    HTML behind, in a folder its report names."""
    outcome = yield
    report = outcome.get_result()
    page = item.funcargs.get("page") if hasattr(item, "funcargs") else None
    if report.when != "call" or not report.failed or page is None or not hasattr(page, "screenshot"):
        return
    folder = item.funcargs["tmp_path"] if "tmp_path" in item.funcargs else None
    if folder is None:
        from pathlib import Path

        folder = Path(item.config.rootpath) / "var" / "browser-failures" / item.name
    folder = folder / "browser-failure"
    folder.mkdir(parents=True, exist_ok=True)
    try:
        page.screenshot(path=str(folder / "screenshot.png"), full_page=True)
        (folder / "page.html").write_text(page.content(), encoding="utf-8")
        saved = f"screenshot and page HTML of {page.url} saved in {folder}"
    except Exception as exc:  # the page may be gone with the browser: say so, keep the real failure
        saved = f"no screenshot of the failed page ({exc.__class__.__name__}: {exc})"
    report.sections.append(("browser", saved))
