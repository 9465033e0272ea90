"""Test settings: SQLite as `default`; the `postgres` alias (a PostgreSQL server found or started, one test
database per run) is added at pytest's session start by tests/conftest.py, so importing these settings
starts nothing and touches no database. The warehouse and run-tracking tests run on both aliases with the
same migrations."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .base import *  # noqa: F403

SECRET_KEY = "test-only"
DEBUG = False
ALLOWED_HOSTS = ["testserver"]

DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
# Set with the `postgres` alias by tests.postgres_server.postgres_alias_configure at session start.
POSTGRES_URL: str | None = None
POSTGRES_FOUND = "not looked for: pytest's session start (tests/conftest.py) does"
# Lock files of the in-memory test databases: this test process's own, never the checkout's var/.
ETL_LOCK_DIR = Path(tempfile.gettempdir()) / f"dse-test-locks-{os.getpid()}"
# The suite stays quiet unless ETL_LOG_LEVEL asks (pytest shows a failing test's captured logs anyway).
LOGGING = logging_config(log_format=ETL_LOG_FORMAT, level=ETL_LOG_LEVEL or "WARNING")  # noqa: F405
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
# Runs publish no metrics unless a test asks (its `settings` fixture): a developer's exported
# ETL_METRICS_TEXTFILE_DIR or ETL_PUSHGATEWAY_URL must not receive the suite's runs.
ETL_METRICS_TEXTFILE_DIR = None
ETL_PUSHGATEWAY_URL = ""
ETL_PUSHGATEWAY_AUTH = None
