"""Find a PostgreSQL server for the test suite, or start a throwaway one.

Order: DATABASE_URL if it names PostgreSQL; else the server on 127.0.0.1:5432 if it answers (trust auth,
user postgres); else a private server started with initdb/pg_ctl in a temporary directory, stopped at exit.
"""

from __future__ import annotations

import atexit
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

LOCAL_URL = "postgres://postgres@127.0.0.1:5432/postgres"


def postgres_url() -> tuple[str | None, str]:
    """(url or None, how it was found or why there is none)."""
    url = os.environ.get("DATABASE_URL", "")
    if url.startswith(("postgres://", "postgresql://")):
        return url, "DATABASE_URL"
    if _answers(LOCAL_URL):
        return LOCAL_URL, "server on 127.0.0.1:5432"
    try:
        return _start_throwaway(), "throwaway server started by the test suite"
    except (OSError, subprocess.CalledProcessError, RuntimeError) as exc:
        return None, f"no PostgreSQL reachable and none could be started: {exc}"


def _answers(url: str) -> bool:
    import psycopg2

    try:
        psycopg2.connect(url, connect_timeout=3).close()
        return True
    except psycopg2.OperationalError:
        return False


def _pg_bin(name: str) -> str:
    found = shutil.which(name) or next(
        iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None
    )
    if not found:
        raise RuntimeError(f"{name} not found (install the PostgreSQL server package)")
    return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_throwaway() -> str:
    data_dir = Path(tempfile.mkdtemp(prefix="dse-pg-"))
    port = _free_port()
    # initdb refuses to run as root; run the server as the postgres system user then.
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(data_dir, user="postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    subprocess.run(
        [
            *as_user,
            _pg_bin("initdb"),
            "-D",
            str(data_dir / "data"),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
        ],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            *as_user,
            _pg_bin("pg_ctl"),
            "-D",
            str(data_dir / "data"),
            "-l",
            str(data_dir / "log"),
            "-w",
            "-o",
            f"-p {port} -k {data_dir} -c listen_addresses=127.0.0.1 -c fsync=off",
            "start",
        ],
        check=True,
        capture_output=True,
    )

    def stop() -> None:
        subprocess.run(
            [*as_user, _pg_bin("pg_ctl"), "-D", str(data_dir / "data"), "-m", "immediate", "stop"],
            capture_output=True,
        )
        shutil.rmtree(data_dir, ignore_errors=True)

    atexit.register(stop)
    url = f"postgres://postgres@127.0.0.1:{port}/postgres"
    for _ in range(50):
        if _answers(url):
            return url
        time.sleep(0.1)
    raise RuntimeError(f"throwaway PostgreSQL on port {port} did not answer")


def drop_stale_test_databases(url: str) -> None:
    """Drop `test_dse_<pid>` databases left by killed test runs on this machine (their pid is gone)."""
    import psycopg2
    from psycopg2 import sql

    if not any(host in url for host in ("@127.0.0.1", "@localhost", "@[::1]")):
        return  # another machine's pids mean nothing here
    conn = psycopg2.connect(url, connect_timeout=3)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT datname FROM pg_database WHERE datname ~ '^test_dse_[0-9]+$'")
            for (name,) in cur.fetchall():
                if not os.path.exists(f"/proc/{name.rsplit('_', 1)[1]}"):
                    cur.execute(
                        sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                    )
    finally:
        conn.close()


def postgres_alias_configure(settings, connections) -> None:
    """Give the test settings their `postgres` alias, at pytest's session start (tests/conftest.py).

    Finds or starts a server (`postgres_url`), drops this machine's stale `test_dse_<pid>` databases, and
    adds the alias with one test database per run, so two suites on one server never collide. Without a
    server the alias is absent and `settings.POSTGRES_FOUND` says why (the tests skip, or fail under CI)."""
    import dj_database_url

    url, found = postgres_url()
    settings.POSTGRES_URL, settings.POSTGRES_FOUND = url, found
    if not url:
        return
    drop_stale_test_databases(url)
    database = dj_database_url.parse(url, conn_max_age=0)
    database["TEST"] = {"NAME": f"test_dse_{os.getpid()}"}
    settings.DATABASES["postgres"] = database
    # Django caches the database settings (with their defaults filled in) on first use: read them again.
    connections.__dict__.pop("settings", None)
