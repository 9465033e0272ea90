"""One logging configuration for every command: structlog over the standard library.

Our own events are structlog calls (`log = structlog.get_logger(__name__)`, `log.info("step_finished",
rows_in=...)`); the standard library's loggers (connectors, warehouse, django) go through the same
`ProcessorFormatter`, so everything reads alike: human-readable lines on a terminal (`ETL_LOG_FORMAT=console`,
the default) or one JSON object a line (`ETL_LOG_FORMAT=json`). The context bound with
`structlog.contextvars` where it becomes known (run id, pipeline, date, step, dataset) is on every event,
the stdlib ones included.

Every event passes `secrets_masked` last before rendering: the values of secret environment variables, of
the variables the pipelines name, URL credentials and secret-looking query values become `***`.

Progress bars (tqdm, stderr) are here too: shown only when stderr is a terminal and the command was not
given `--no-progress`.
"""

from __future__ import annotations

import contextvars
import logging
import os
import re
import sys
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import structlog

from connectors.secrets import secret_get

FORMATS = ("console", "json")
# Loggers that write through our handler; others propagate to them or stay at Python's defaults. urllib3:
# its warnings (a retry after a broken connection) and, at DEBUG, each request line name URLs with their
# query, so they must pass the masking too.
LOGGERS = ("etlcore", "connectors", "warehouse", "spark_jobs", "urllib3")
# Variables whose values are secrets whatever the pipelines say (each may also come from its _FILE).
SECRET_VARIABLES = (
    "DATABASE_URL",
    "DJANGO_SECRET_KEY",
    "ETL_PSEUDONYM_KEY",
    "ETL_PSEUDONYM_KEY_PREVIOUS",
    "ETL_PII_KEYS",
    "ETL_ERASURE_KEY",
    "ETL_DEMO_API_TOKEN",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
)
# Any other variable named like a secret is masked too: a source's token variable need not be declared.
# (Not "pwd": $PWD is the working directory, in every path.)
_SECRET_NAME = re.compile(r"(?i)(token|secret|passw|_key$|_keys$|credential|api_?key|dsn)")
_URL_CREDENTIALS = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^/\s:@'\"]+(?::[^/\s@'\"]*)?@")
_DSN_PASSWORD = re.compile(r"(?i)\b(password\s*=\s*)('[^']*'|\S+)")
MASK = "***"
MIN_SECRET_LENGTH = 4  # masking every "a" would garble the line, not protect it
# A variable only named like a secret may hold "true" or a port: its value is masked from this length on.
MIN_GUESSED_LENGTH = 8

_names_lock = threading.Lock()
_declared_names: set[str] = set()
_declared_values: set[str] = set()
_cache: tuple[tuple[Any, ...], list[str]] | None = None


def secret_names_register(names: Iterable[str]) -> None:
    """Variables a pipeline names as secrets (`*_env` options, the keys' variables): masked from now on."""
    with _names_lock:
        _declared_names.update(n for n in names if n)


def secret_values_register(values: Iterable[str]) -> None:
    """Secret values that live in no variable (a pipeline file's `[spark.conf]` secrets)."""
    with _names_lock:
        _declared_values.update(v for v in values if v and len(v) >= MIN_SECRET_LENGTH)


def secret_values() -> list[str]:
    """Every secret value known now, longest first (so a secret containing another is masked whole)."""
    global _cache
    environ = os.environ
    names = set(SECRET_VARIABLES) | _declared_names
    guessed = {n.removesuffix("_FILE") for n in environ if _SECRET_NAME.search(n.removesuffix("_FILE"))}
    guessed -= names
    names |= guessed
    key = tuple(sorted((n, environ.get(n), environ.get(n + "_FILE")) for n in names))
    key += tuple(sorted(_declared_values))
    cached = _cache
    if cached is not None and cached[0] == key:
        return cached[1]
    values: set[str] = set(_declared_values)
    for name in names:
        try:
            value = secret_get(name)
        except Exception:  # an unreadable _FILE is reported by whoever needs it, not by a log line
            value = environ.get(name, "")
        if not value or (name in guessed and len(value) < MIN_GUESSED_LENGTH):
            continue
        values.add(value)
        values.update(_secret_parts(name, value))
    found = sorted((v for v in values if len(v) >= MIN_SECRET_LENGTH), key=len, reverse=True)
    _cache = (key, found)
    return found


def _secret_parts(name: str, value: str) -> list[str]:
    """The pieces of a secret that may be shown alone: a URL's password, each key of a list of keys."""
    parts = []
    if "://" in value:
        try:
            password = urlsplit(value).password
        except ValueError:
            password = None
        if password:
            parts.append(password)
    if "," in value:
        parts += [p.strip() for p in value.split(",")]
    return parts


def secrets_mask(text: str) -> str:
    """`text` with every known secret, URL credential, DSN password and secret query value as ***."""
    for secret in secret_values():
        if secret in text:
            text = text.replace(secret, MASK)
    text = _URL_CREDENTIALS.sub(rf"\1{MASK}@", text)
    text = _DSN_PASSWORD.sub(rf"\1{MASK}", text)
    # Imported here: the settings import this module, and the REST package would load the connectors.
    from connectors.rest.http import Masker

    return Masker().scrub(text)


def _masked(value: Any) -> Any:
    if isinstance(value, str):
        return secrets_mask(value)
    if isinstance(value, Mapping):
        return {k: _masked(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_masked(v) for v in value]
    if isinstance(value, int | float | bool) or value is None:
        return value
    return secrets_mask(str(value))


def secrets_masked(logger: Any, method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: every value of the event masked (after the exception is formatted)."""
    return {key: _masked(value) for key, value in event_dict.items()}


_LEADING = ("timestamp", "level", "logger", "event")


def _leading_keys(logger: Any, method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """When, how bad, who and what first: a JSON line reads in that order."""
    return {**{k: event_dict[k] for k in _LEADING if k in event_dict}, **event_dict}


def _shared_processors() -> list[Any]:
    """What both our events and the standard library's records get before rendering."""
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.ExtraAdder(),
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]


def log_formatter(*, log_format: str) -> logging.Formatter:
    """The formatter of every record, ours (structlog's) and the standard library's: context added,
    exception formatted, every value masked, then rendered as a console line or a JSON object."""
    if log_format not in FORMATS:
        raise ValueError(f"ETL_LOG_FORMAT must be one of {', '.join(FORMATS)}, got {log_format!r}")
    if log_format == "json":
        renderer: Any = structlog.processors.JSONRenderer(default=str)
    else:
        renderer = structlog.dev.ConsoleRenderer(
            colors=False, exception_formatter=structlog.dev.plain_traceback
        )
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_shared_processors(),
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,  # a string, masked like the rest (no frame locals)
            secrets_masked,
            _leading_keys,
            renderer,
        ],
    )


def logging_config(*, log_format: str, level: str) -> dict[str, Any]:
    """The `LOGGING` setting: one stderr handler whose formatter renders console lines or JSON lines."""
    log_formatter(log_format=log_format)  # a wrong format fails here, when the settings are read
    logger = {"handlers": ["etl"], "level": level.upper(), "propagate": True}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"etl": {"()": log_formatter, "log_format": log_format}},
        "handlers": {
            "etl": {"class": "logging.StreamHandler", "formatter": "etl", "stream": "ext://sys.stderr"}
        },
        "loggers": {
            **{name: dict(logger) for name in LOGGERS},
            # Django's own warnings and errors (a 500 in the admin) in the same format.
            "django": {"handlers": ["etl"], "level": "WARNING", "propagate": False},
            # A Celery worker's and beat's own events (ready, task received, succeeded), likewise.
            "celery": {"handlers": ["etl"], "level": "INFO", "propagate": False},
            # Beat's database scheduler: when it reloads the schedules, a database error, a task it disables.
            "django_celery_beat": {"handlers": ["etl"], "level": "INFO", "propagate": False},
        },
    }


def structlog_configure() -> None:
    """structlog's events go to the standard library, whose handler (from `LOGGING`) renders them."""
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *_shared_processors(),
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


# --- progress bars ---------------------------------------------------------------------------------------

_progress_allowed: contextvars.ContextVar[bool] = contextvars.ContextVar("etl_progress", default=True)


@contextmanager
def progress_allowed(allowed: bool) -> Iterator[None]:
    """`--no-progress`: no bar in the block, in its threads (contexts copied) included."""
    token = _progress_allowed.set(allowed)
    try:
        yield
    finally:
        _progress_allowed.reset(token)


@contextmanager
def progress_logs() -> Iterator[None]:
    """While bars may be drawn, log lines go above them (tqdm.write) instead of through them."""
    if not progress_shown():
        yield
        return
    from tqdm.contrib.logging import logging_redirect_tqdm

    with logging_redirect_tqdm(loggers=[logging.getLogger(name) for name in LOGGERS]):
        yield


def progress_shown() -> bool:
    """Bars only for a person watching: stderr a terminal (never under cron) and not `--no-progress`."""
    if not _progress_allowed.get():
        return False
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def progress_bar(*, desc: str, unit: str, total: int | None = None) -> Any:
    """A tqdm bar on stderr, or one that draws nothing (same interface) when bars are not shown."""
    from tqdm import tqdm

    return tqdm(desc=desc, unit=unit, total=total, file=sys.stderr, disable=not progress_shown(), leave=False)
