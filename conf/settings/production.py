"""Production: every secret comes from the environment and has no default."""

from __future__ import annotations

import os

from django.core.exceptions import ImproperlyConfigured

from connectors.errors import ConfigurationError
from connectors.secrets import secret_get

from .base import *  # noqa: F403


def _required(name: str) -> str:
    """A secret from `$name` or the file `$name_FILE` names; production has no default for any."""
    try:
        value = secret_get(name)
    except ConfigurationError as exc:
        raise ImproperlyConfigured(str(exc)) from None
    if not value:
        raise ImproperlyConfigured(f"environment variable {name} (or {name}_FILE) is required in production")
    return value


def _flag(name: str, default: str) -> bool:
    return os.environ.get(name, default) == "1"


DEBUG = False
SECRET_KEY = _required("DJANGO_SECRET_KEY")
# No SQLite fallback: a cron line that lost its DATABASE_URL must fail, not load a warehouse nobody reads.
_required("DATABASE_URL")
ALLOWED_HOSTS = [h for h in os.environ.get("DJANGO_ALLOWED_HOSTS", "").split(",") if h]
SESSION_COOKIE_SECURE = True
CSRF_COOKIE_SECURE = True
# The admin is the only web surface; serve it over HTTPS (behind a proxy that sets X-Forwarded-Proto).
SECURE_SSL_REDIRECT = _flag("DJANGO_SECURE_SSL_REDIRECT", "1")
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_HSTS_SECONDS = int(os.environ.get("DJANGO_HSTS_SECONDS", "0"))  # opt in once HTTPS is certain
SECURE_HSTS_INCLUDE_SUBDOMAINS = _flag("DJANGO_HSTS_INCLUDE_SUBDOMAINS", "0")
SECURE_HSTS_PRELOAD = _flag("DJANGO_HSTS_PRELOAD", "0")
