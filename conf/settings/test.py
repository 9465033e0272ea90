"""Test settings: SQLite as `default`, a PostgreSQL server as `postgres`, so the warehouse and run-tracking
tests run on both with the same migrations."""

from __future__ import annotations

import os

import dj_database_url

from tests.postgres_server import drop_stale_test_databases, postgres_url

from .base import *  # noqa: F403

SECRET_KEY = "test-only"
DEBUG = False
ALLOWED_HOSTS = ["testserver"]

POSTGRES_URL, POSTGRES_FOUND = postgres_url()
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
if POSTGRES_URL:
    DATABASES["postgres"] = dj_database_url.parse(POSTGRES_URL, conn_max_age=0)
    # One test database per test run, so two suites on one server (two developers, CI) never collide.
    DATABASES["postgres"]["TEST"] = {"NAME": f"test_dse_{os.getpid()}"}
    drop_stale_test_databases(POSTGRES_URL)
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
