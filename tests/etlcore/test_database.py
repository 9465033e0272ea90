"""A new user's first mistakes, as `manage.py` subprocesses the way cron runs them: a database without
tables, a database that does not answer, production settings without their secret. Each is one line on
stderr naming what to do, exit status 1, never a traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connections

from etlcore.database import database_check, database_label
from etlcore.errors import DatabaseNotReady

COMMANDS_DIR = Path(settings.BASE_DIR) / "etlcore" / "management" / "commands"
# Every command of the project that uses the database; serve_demo_api serves files and validate_pipeline
# reads pipeline files only: they touch none.
DATABASE_COMMANDS = sorted(
    p.stem
    for p in COMMANDS_DIR.glob("*.py")
    if p.stem not in ("__init__", "serve_demo_api", "validate_pipeline")
)


def manage(*args: str, var_dir: Path, **environ: str) -> subprocess.CompletedProcess:
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("ETL_", "DJANGO_")) and name != "DATABASE_URL"
    }
    env |= {"ETL_VAR_DIR": str(var_dir), **environ}
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=settings.BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def assert_one_line_failure(done: subprocess.CompletedProcess, *expected: str) -> str:
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nothing listens once the socket is closed


def test_every_database_command_is_covered():
    expected = {"extract", "transform", "load", "run_pipeline", "pipeline_status", "replay_quarantine"}
    expected.add("demo")
    assert expected <= set(DATABASE_COMMANDS)


# What a command needs, on its line and in its environment, before it reaches the database.
REQUIRED_ARGUMENTS = {"forget_customer": ["--email", "someone@example.com"], "pipeline_schedule": ["--list"]}
REQUIRED_ENVIRONMENT = {"forget_customer": {"ETL_PSEUDONYM_KEY": "a-key"}}


@pytest.mark.parametrize("command", DATABASE_COMMANDS)
def test_command_on_a_database_without_tables_says_to_migrate(command, tmp_path):
    done = manage(
        command,
        *REQUIRED_ARGUMENTS.get(command, []),
        var_dir=tmp_path,
        **REQUIRED_ENVIRONMENT.get(command, {}),
    )
    line = assert_one_line_failure(
        done, "database 'default'", "has no tables yet: run `python manage.py migrate`", str(tmp_path)
    )
    assert line.startswith("CommandError: ")
    assert not (tmp_path / "demo").exists(), "the demo generated its data before finding no tables"


@pytest.mark.parametrize("command", ["run_pipeline", "pipeline_status"])
def test_command_with_an_unreachable_database_fails_in_one_line(command, tmp_path):
    port = closed_port()
    url = f"postgres://etl:not-to-be-shown@127.0.0.1:{port}/warehouse"
    done = manage(command, var_dir=tmp_path, DATABASE_URL=url)
    line = assert_one_line_failure(
        done,
        "cannot use database 'default'",
        f"postgresql etl@127.0.0.1:{port}/warehouse",
        "Connection refused",
    )
    assert "not-to-be-shown" not in line


def test_unusable_database_url_fails_in_one_line_without_the_password(tmp_path):
    done = manage(
        "pipeline_status", var_dir=tmp_path, DATABASE_URL="postgres://etl:not-to-be-shown@db:port/x"
    )
    line = assert_one_line_failure(done, "DATABASE_URL is not a database URL Django can use")
    assert "not-to-be-shown" not in line


def test_production_settings_without_a_secret_key_fail_in_one_line(tmp_path):
    done = manage("run_pipeline", var_dir=tmp_path, DJANGO_SETTINGS_MODULE="conf.settings.production")
    assert_one_line_failure(
        done,
        "conf.settings.production",
        "environment variable DJANGO_SECRET_KEY (or DJANGO_SECRET_KEY_FILE) is required in production",
    )


@pytest.mark.django_db(databases="__all__")
def test_database_check_passes_on_a_migrated_database(db_alias):
    database_check(using=db_alias)


@pytest.mark.django_db(databases="__all__")
def test_database_check_names_an_unapplied_migration(db_alias):
    """A database migrated before the code's latest migration: told to migrate, not a missing column."""
    from django.db.migrations.recorder import MigrationRecorder

    recorder = MigrationRecorder(connections[db_alias])
    latest = recorder.migration_qs.filter(app="etlcore").order_by("-id").first()
    latest.delete()
    lacks = rf"lacks 1 migration\(s\) \(etlcore\.{latest.name}\): run `python manage.py migrate"
    with pytest.raises(DatabaseNotReady, match=lacks):
        database_check(using=db_alias)


def test_database_label_names_the_server_without_its_password():
    remote = {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": "warehouse",
        "USER": "etl",
        "PASSWORD": "not-to-be-shown",
        "HOST": "db.internal",
        "PORT": 6432,
    }
    assert database_label(remote) == "postgresql etl@db.internal:6432/warehouse"


def test_database_check_of_an_unknown_alias_names_the_known_ones():
    known = r"database alias 'nope' is not in settings.DATABASES \(known: "
    with pytest.raises(DatabaseNotReady, match=known):
        database_check(using="nope")
