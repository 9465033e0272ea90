"""The Celery application: `celery -A conf worker` and `celery -A conf beat` (docs/celery.md).

Its settings are Django's `CELERY_*` (conf/settings/base.py), except the broker URL, which holds a
password: etlcore/broker.py reads it from the environment, and it never becomes a Django setting.
"""

from __future__ import annotations

import os
import sys

from celery import Celery
from celery.signals import beat_init, celeryd_after_setup, celeryd_init, setup_logging

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


@celeryd_after_setup.connect
def _one_slot_warned(sender: str, instance: object, **kwargs: object) -> None:
    """A run's task waits for its extract tasks: a worker taking both with one pool process can never
    start them itself (docs/celery.md, "Queues and workers")."""
    from django.conf import settings

    queues = set(instance.app.amqp.queues.consume_from or ())
    run_queue = settings.ETL_CELERY_QUEUE
    if run_queue in queues and f"{run_queue}.extract" in queues and instance.concurrency < 2:
        import structlog

        structlog.get_logger("etlcore.tasks").warning(
            "worker_concurrency_too_low",
            worker=sender,
            concurrency=instance.concurrency,
            hint=f"a run holds one pool process while its extract tasks wait for another: use "
            f"--concurrency 2 or more, or another worker on {run_queue}.extract (docs/celery.md)",
        )


@setup_logging.connect
def _logging_as_configured(**kwargs: object) -> None:
    """Connected, so Celery leaves logging alone: Django's LOGGING (etlcore/logs.py) is the configuration,
    and a worker's events are the same console or JSON lines as a command's."""
