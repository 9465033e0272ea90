"""Before a command writes its first run record: is its database reachable, and migrated?

Without this, a fresh clone's first command is Django's traceback (`no such table: etlcore_pipelinerun`)
and a database that is down is a psycopg one; both become one line naming the alias and what to do."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import DatabaseError, connections
from django.db.migrations.executor import MigrationExecutor

from .config import pipeline_load
from .errors import USER_ERRORS, DatabaseNotReady
from .files import file_tighten
from .models import PipelineRun


def database_check(*, using: str) -> None:
    """Raise `DatabaseNotReady` when the database `using` does not answer, has no tables yet, or lacks
    migrations this code needs."""
    if using not in settings.DATABASES:
        known = ", ".join(sorted(settings.DATABASES))
        raise DatabaseNotReady(f"database alias {using!r} is not in settings.DATABASES (known: {known})")
    label = database_label(settings.DATABASES[using])
    connection = connections[using]
    try:
        tables = set(connection.introspection.table_names())
        missing = {"django_migrations", PipelineRun._meta.db_table} - tables
        plan = [] if missing else _unapplied(connection)
    except DatabaseError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DatabaseNotReady(f"cannot use database {using!r} ({label}): {reason}") from None
    migrate = "python manage.py migrate" + ("" if using == "default" else f" --database {using}")
    if missing:
        raise DatabaseNotReady(f"database {using!r} ({label}) has no tables yet: run `{migrate}`")
    if plan:
        names = ", ".join(f"{migration.app_label}.{migration.name}" for migration, _ in plan[:3])
        more = ", ..." if len(plan) > 3 else ""
        raise DatabaseNotReady(
            f"database {using!r} ({label}) lacks {len(plan)} migration(s) ({names}{more}): run `{migrate}`"
        )


def pipeline_database(*, pipeline: str) -> str:
    """The alias a pipeline's runs are recorded in; "default" when the pipeline does not load (its failed
    run is recorded there, and the command reports why it does not load)."""
    try:
        return pipeline_load(pipeline).database
    except USER_ERRORS:
        return "default"


def database_label(config: Mapping[str, Any]) -> str:
    """A DATABASES entry without its password: `sqlite <path>`, `postgresql user@host:port/db`."""
    engine = config["ENGINE"].rsplit(".", 1)[-1]
    if engine == "sqlite3":
        return f"sqlite {config['NAME']}"
    user = f"{config['USER']}@" if config.get("USER") else ""
    port = f":{config['PORT']}" if config.get("PORT") else ""
    return f"{engine} {user}{config.get('HOST') or 'localhost'}{port}/{config.get('NAME', '')}"


# SQLite gives its journal, WAL and shared-memory files the database file's mode, so the file itself is
# what must be private.
SQLITE_COMPANIONS = ("", "-journal", "-wal", "-shm")


def sqlite_files_private(sender: Any, connection: Any, **kwargs: Any) -> None:
    """`connection_created` receiver: a SQLite database file is made 0600 as soon as it is opened, whatever
    the umask it was created under (`sqlite3.connect` creates it empty, before any row is written)."""
    if connection.vendor != "sqlite" or connection.is_in_memory_db():
        return
    name = Path(str(connection.settings_dict["NAME"]))
    for suffix in SQLITE_COMPANIONS:
        file_tighten(name.with_name(name.name + suffix))


def _unapplied(connection) -> list:
    executor = MigrationExecutor(connection)
    return executor.migration_plan(executor.loader.graph.leaf_nodes())
