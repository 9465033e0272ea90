"""Developer machine and `make demo`: embedded SQLite, local staging folder, Spark in local mode."""

from __future__ import annotations

import os

from .base import *  # noqa: F403

DEBUG = os.environ.get("DJANGO_DEBUG", "1") == "1"
# Local only: a fixed key is fine for a developer's own admin; production.py demands a real one.
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "local-development-only-not-a-secret")
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
# The RabbitMQ of a developer machine; production has no default (docs/celery.md).
ETL_CELERY_BROKER_DEFAULT = "amqp://guest:guest@127.0.0.1:5672//"
