"""The Celery application: `celery -A conf worker` and `celery -A conf beat` (docs/celery.md).

Its settings are Django's `CELERY_*` (conf/settings/base.py), except the broker URL, which holds a
password: etlcore/broker.py reads it from the environment, and it never becomes a Django setting.
"""

from __future__ import annotations

import os
import sys

from celery import Celery
from celery.signals import beat_init, celeryd_init, setup_logging

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "conf.settings.local")

app = Celery("django_spark_etl")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["etlcore"])


@app.on_after_configure.connect
def _broker_from_environment(sender: Celery, **kwargs: object) -> None:
    from etlcore.broker import broker_url

    url = broker_url()
    if url:
        sender.conf.broker_url = url


@celeryd_init.connect
@beat_init.connect
def _broker_required(**kwargs: object) -> None:
    """A worker or beat without a configured broker stops at once, in one line."""
    from etlcore.broker import broker_url_required
    from etlcore.errors import ConfigurationError

    try:
        broker_url_required()
    except ConfigurationError as exc:
        sys.exit(f"error: {exc}")


@setup_logging.connect
def _logging_as_configured(**kwargs: object) -> None:
    """Connected, so Celery leaves logging alone: Django's LOGGING (etlcore/logs.py) is the configuration,
    and a worker's events are the same console or JSON lines as a command's."""
