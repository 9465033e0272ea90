"""Settings shared by every environment. The environment is read here and nowhere else."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from connectors.errors import ConfigurationError
from connectors.secrets import secret_get
from etlcore.logs import FORMATS as LOG_FORMATS
from etlcore.logs import logging_config

BASE_DIR = Path(__file__).resolve().parents[2]
VAR_DIR = Path(os.environ.get("ETL_VAR_DIR") or BASE_DIR / "var")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_celery_results",
    "django_celery_beat",
    "etlcore",
    "warehouse",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "conf.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]
WSGI_APPLICATION = "conf.wsgi.application"

# SQLite is the embedded default; DATABASE_URL (postgres://user@host:port/db), or the file that
# DATABASE_URL_FILE names, switches the warehouse.
# Lower-case: not a setting, so that `diffsettings` and error pages never show the password.
try:
    _database_url = secret_get("DATABASE_URL")
except ConfigurationError as exc:
    raise ImproperlyConfigured(str(exc)) from None
if not _database_url:
    VAR_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)  # holds the database: private when made here
_database_url = _database_url or f"sqlite:///{VAR_DIR / 'db.sqlite3'}"
try:
    DATABASES = {"default": dj_database_url.parse(_database_url, conn_max_age=0)}
except ValueError as exc:  # the message quotes no part of the URL, so no password reaches a log
    raise ImproperlyConfigured(f"DATABASE_URL is not a database URL Django can use: {exc}") from None
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # A server that does not answer fails the command in seconds, not after the kernel's TCP timeout.
    DATABASES["default"].setdefault("OPTIONS", {}).setdefault("connect_timeout", 10)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

USE_TZ = True
TIME_ZONE = "UTC"
LANGUAGE_CODE = "en-us"
STATIC_URL = "static/"

# --- django-spark-etl -------------------------------------------------------------------------
# Pipeline definitions: every *.toml in these directories (or files) is one pipeline.
ETL_PIPELINE_PATHS = [BASE_DIR / "conf" / "pipelines"] + [
    Path(p) for p in os.environ.get("ETL_PIPELINE_PATH", "").split(os.pathsep) if p
]
ETL_DEFAULT_PIPELINE = os.environ.get("ETL_DEFAULT_PIPELINE", "retail_demo")
# Defaults a pipeline file may override.
ETL_STAGING_ROOT = Path(os.environ.get("ETL_STAGING_ROOT", VAR_DIR / "staging"))
ETL_SPARK_MASTER = os.environ.get("ETL_SPARK_MASTER", "local[*]")
ETL_SPARK_SUBMIT = os.environ.get("ETL_SPARK_SUBMIT", "")  # empty: the one shipped with pyspark
# The demo's generated sources (`manage.py demo`, `serve_demo_api`); retail_demo.toml reads its exports here.
ETL_DEMO_DIR = Path(os.environ.get("ETL_DEMO_DIR") or VAR_DIR / "demo")
# Where the demo orders API listens (serve_demo_api's default port) and where retail_demo.toml asks.
ETL_DEMO_API_URL = os.environ.get("ETL_DEMO_API_URL") or "http://127.0.0.1:8765"
ETL_EXTRACT_WORKERS = int(os.environ.get("ETL_EXTRACT_WORKERS", "4"))  # sources extracted at once
# Run control (docs/operations.md): pipeline lock files for databases that are not a SQLite file or
# PostgreSQL, and how often a run on PostgreSQL writes its heartbeat.
ETL_LOCK_DIR = Path(os.environ.get("ETL_LOCK_DIR", VAR_DIR / "locks"))
ETL_HEARTBEAT_SECONDS = float(os.environ.get("ETL_HEARTBEAT_SECONDS", "30"))
# Metrics of every finished run (etlcore/metrics.py, docs/operations.md "Metrics and alerts"): a file per
# pipeline for node-exporter's textfile collector, and/or a push to a Pushgateway; off when neither is set.
ETL_METRICS_TEXTFILE_DIR = Path(_dir) if (_dir := os.environ.get("ETL_METRICS_TEXTFILE_DIR")) else None
# 0600 like every file the project writes; 0640 lets node-exporter read it through the folder's group.
ETL_METRICS_TEXTFILE_MODE = int(os.environ.get("ETL_METRICS_TEXTFILE_MODE", "0600"), 8)
if ETL_METRICS_TEXTFILE_MODE & ~0o640:
    raise ImproperlyConfigured("ETL_METRICS_TEXTFILE_MODE must be 0600 or 0640 (octal)")
# The URL may carry credentials (https://user:password@host), or come from ETL_PUSHGATEWAY_URL_FILE: they
# are split off here into a setting whose name Django masks, so the URL setting holds none.
try:
    _pushgateway = urlsplit(secret_get("ETL_PUSHGATEWAY_URL"))
except ConfigurationError as exc:
    raise ImproperlyConfigured(str(exc)) from None
if _pushgateway.geturl() and _pushgateway.scheme not in ("http", "https"):
    # Without a scheme, user:password@host would not be split off, and would be shown.
    raise ImproperlyConfigured("ETL_PUSHGATEWAY_URL must start with http:// or https://")
ETL_PUSHGATEWAY_AUTH = (unquote(_pushgateway.username or ""), unquote(_pushgateway.password or ""))
if not any(ETL_PUSHGATEWAY_AUTH):
    ETL_PUSHGATEWAY_AUTH = None
ETL_PUSHGATEWAY_URL = urlunsplit(_pushgateway._replace(netloc=_pushgateway.netloc.rpartition("@")[2]))
ETL_PUSHGATEWAY_TIMEOUT = float(os.environ.get("ETL_PUSHGATEWAY_TIMEOUT", "10"))
# What started this process's runs (recorded on each run): the crontab line and systemd unit set `cron`,
# the admin's background process `admin` with the user in ETL_RUN_STARTED_BY; by hand it is `command`.
ETL_RUN_ORIGIN = os.environ.get("ETL_RUN_ORIGIN") or "command"
if ETL_RUN_ORIGIN not in ("cron", "command", "admin", "queue"):
    raise ImproperlyConfigured(f"ETL_RUN_ORIGIN={ETL_RUN_ORIGIN!r}: expected cron, command, admin or queue")
ETL_RUN_STARTED_BY = os.environ.get("ETL_RUN_STARTED_BY", "")
# Added to the environment of the commands the admin starts in the background (etlcore/services/
# background.py), over the server's own; the tests point them at their database with it.
ETL_BACKGROUND_ENV: dict[str, str] = {}
# Where the ops console's actions run: `process` (a detached `manage.py` process on the web server's
# machine) or `queue` (tasks on the Celery workers, docs/celery.md).
ETL_CONSOLE_ACTIONS = os.environ.get("ETL_CONSOLE_ACTIONS", "process").strip().lower() or "process"
if ETL_CONSOLE_ACTIONS not in ("process", "queue"):
    raise ImproperlyConfigured(f"ETL_CONSOLE_ACTIONS={ETL_CONSOLE_ACTIONS!r}: expected process or queue")

# Logs (docs/operations.md, "Logs"): console lines on stderr, or JSON lines with ETL_LOG_FORMAT=json; the
# level of our loggers (etlcore, connectors, warehouse): INFO by default, so that a nightly run's steps show.
ETL_LOG_FORMAT = os.environ.get("ETL_LOG_FORMAT", "console").strip().lower() or "console"
ETL_LOG_LEVEL = os.environ.get("ETL_LOG_LEVEL", "").strip().upper()
if ETL_LOG_FORMAT not in LOG_FORMATS:
    raise ImproperlyConfigured(
        f"ETL_LOG_FORMAT must be one of {', '.join(LOG_FORMATS)}, got {ETL_LOG_FORMAT!r}"
    )
if ETL_LOG_LEVEL and ETL_LOG_LEVEL not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
    raise ImproperlyConfigured(
        f"ETL_LOG_LEVEL must be DEBUG, INFO, WARNING, ERROR or CRITICAL, got {ETL_LOG_LEVEL!r}"
    )
LOGGING = logging_config(log_format=ETL_LOG_FORMAT, level=ETL_LOG_LEVEL or "INFO")

# Celery (docs/celery.md): an option beside cron; nothing here starts or needs a broker until a worker, beat
# or an enqueue asks. The broker URL holds a password, so it is not a setting: conf/celery.py reads
# CELERY_BROKER_URL (or the file CELERY_BROKER_URL_FILE names) from the environment, falling back to
# ETL_CELERY_BROKER_DEFAULT, which only local settings give.
ETL_CELERY_BROKER_DEFAULT: str | None = None
# The queue of run tasks; extract tasks go to "<queue>.extract" (a worker must consume both, see the docs).
ETL_CELERY_QUEUE = os.environ.get("ETL_CELERY_QUEUE", "etl")
CELERY_TASK_DEFAULT_QUEUE = ETL_CELERY_QUEUE
CELERY_TASK_ROUTES = {"etl.extract_source": {"queue": f"{ETL_CELERY_QUEUE}.extract"}}
# At least once: a task is acknowledged when it ends, and put back when its worker dies under it; every
# step is idempotent and a run holds the pipeline's lock, so a second delivery ends as one run would.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1  # a worker holds only the task it runs: the others stay free to take
CELERY_TASK_TRACK_STARTED = True
CELERY_TASK_SERIALIZER = CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_RESULT_BACKEND = "django-db"  # django-celery-results: the admin shows task states beside the runs
CELERY_RESULT_EXTENDED = True  # the task's name, arguments and worker on its result
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
# Beat writes a schedule's last run (and a one-off's run count) after each task it sends, not every 3
# minutes: a beat restarted meanwhile would otherwise send a nightly or one-off run a second time.
CELERY_BEAT_SYNC_EVERY = 1
CELERY_TIMEZONE = TIME_ZONE  # a pipeline's schedule carries its own time zone (pipeline_schedule)
CELERY_WORKER_HIJACK_ROOT_LOGGER = False  # our logging configuration (etlcore/logs.py), not Celery's
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
