"""Where the task queue's broker is: the one place that reads it (docs/celery.md).

The URL holds a password, so it is not a Django setting (settings are shown by `diffsettings` and error
pages): CELERY_BROKER_URL, or the file CELERY_BROKER_URL_FILE names, else local settings'
ETL_CELERY_BROKER_DEFAULT. Production has no default: without the variable nothing is enqueued and no
worker starts, rather than Celery quietly trying amqp://guest@localhost//.
"""

from __future__ import annotations

from django.conf import settings

from connectors.secrets import secret_get

from .errors import ConfigurationError

BROKER_ENV = "CELERY_BROKER_URL"


def broker_url() -> str | None:
    """The broker URL, or None when none is configured. Raises `ConfigurationError` for an unreadable file."""
    return secret_get(BROKER_ENV) or settings.ETL_CELERY_BROKER_DEFAULT or None


def broker_url_required() -> str:
    url = broker_url()
    if not url:
        raise ConfigurationError(
            f"environment variable {BROKER_ENV} (or {BROKER_ENV}_FILE) is required to use the task queue, "
            "e.g. amqp://user:password@rabbitmq-host:5672/vhost (docs/celery.md)"
        )
    return url
