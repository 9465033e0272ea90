"""One run per pipeline at a time: a lock the operating system or the database frees when its process dies.

On PostgreSQL a session-level advisory lock (`pg_try_advisory_lock`) on a dedicated connection held for
the run's life; elsewhere an OS file lock (`flock`) on `<database file>.locks/<pipeline>.lock` beside the
SQLite file (or in `ETL_LOCK_DIR` for an in-memory or non-file database). A killed process's connection
or file descriptor is closed by the kernel, so a `kill -9` never leaves a stale lock: the lock, not the
run record, is the truth about whether a run is alive.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import connections
from django.utils import timezone

from .errors import PipelineBusy
from .files import private_dirs, private_open
from .models import PipelineRun, RunStatus

logger = logging.getLogger(__name__)

# A probe of a file lock (pipeline_status, the admin) holds it for microseconds: a start that meets it
# tries again for this long before it calls the pipeline busy. Still far under the one-second promise.
FILE_LOCK_GRACE_SECONDS = 0.3


def lock_key(pipeline: str) -> int:
    """The pipeline's advisory lock key: a signed 64-bit number no other application is likely to use."""
    digest = hashlib.sha256(f"django-spark-etl pipeline lock v1:{pipeline}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def lock_file(*, pipeline: str, using: str) -> Path:
    """The pipeline's lock file: beside the SQLite file it guards, so every process using that database
    finds the same file whatever its working directory or settings."""
    wrapper = connections[using]
    name = str(wrapper.settings_dict.get("NAME") or "")
    if wrapper.vendor == "sqlite" and name and not wrapper.is_in_memory_db():
        path = Path(name).resolve()
        return path.parent / f"{path.name}.locks" / f"{pipeline}.lock"
    return Path(settings.ETL_LOCK_DIR) / f"{using}-{pipeline}.lock"


class HeldLock:
    """The pipeline's lock, held until `release()`; `heartbeat(run)` keeps the run's `heartbeat_at`."""

    def __init__(self, *, pipeline: str, using: str, handle: Any, kind: str) -> None:
        self.pipeline, self.using, self.kind = pipeline, using, kind
        self._handle = handle  # a psycopg2 connection (advisory) or a file descriptor (flock)
        self._guard = threading.Lock()  # the connection is shared by the heartbeat thread and release()

    def release(self) -> None:
        with self._guard:
            if self.kind == "advisory":
                try:
                    with self._handle.cursor() as cursor:
                        cursor.execute("SELECT pg_advisory_unlock(%s)", [lock_key(self.pipeline)])
                finally:
                    self._handle.close()  # closing alone frees it too: the unlock only says so sooner
            else:
                os.close(self._handle)  # closing the descriptor drops the flock

    @contextmanager
    def heartbeat(self, run: PipelineRun, *, seconds: float | None = None) -> Iterator[None]:
        """Write the run's `heartbeat_at` every `seconds` from a thread, on PostgreSQL.

        The thread writes through the lock's own connection (autocommit, the pipeline's running rows, which no
        load locks), so it never waits on the run's transactions. On SQLite it writes nothing: SQLite has
        one writer at a time, and a second connection committing while a load's transaction upgrades from
        reading to writing makes that load fail with "database is locked". There the heartbeat is written
        at each step's start by the run itself (`runs.run_heartbeat`), and the lock is the truth."""
        if self.kind != "advisory":
            yield
            return
        interval = settings.ETL_HEARTBEAT_SECONDS if seconds is None else seconds
        stop = threading.Event()
        table = PipelineRun._meta.db_table

        def beat() -> None:
            while not stop.wait(interval):
                try:
                    with self._guard, self._handle.cursor() as cursor:
                        # Every running run of the pipeline is this holder's (a backfill has one a date).
                        cursor.execute(
                            f'UPDATE "{table}" SET heartbeat_at = %s WHERE pipeline = %s AND status = %s',
                            [timezone.now(), run.pipeline, RunStatus.RUNNING],
                        )
                except Exception as exc:  # a lost connection also lost the lock: say so, keep running
                    logger.warning("run #%s: heartbeat not written: %s", run.pk, exc)

        thread = threading.Thread(target=beat, name=f"heartbeat-run{run.pk}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()


def lock_try(*, pipeline: str, using: str) -> HeldLock | None:
    """Take the pipeline's lock without waiting; None when another process holds it."""
    wrapper = connections[using]
    if wrapper.vendor == "postgresql":
        import psycopg2

        params = wrapper.get_connection_params()
        params.pop("cursor_factory", None)
        params.setdefault("application_name", f"django-spark-etl lock {pipeline}"[:63])
        conn = psycopg2.connect(**params)
        conn.autocommit = True
        try:
            with conn.cursor() as cursor:
                cursor.execute("SELECT pg_try_advisory_lock(%s)", [lock_key(pipeline)])
                taken = cursor.fetchone()[0]
        except BaseException:
            conn.close()
            raise
        if not taken:
            conn.close()
            return None
        return HeldLock(pipeline=pipeline, using=using, handle=conn, kind="advisory")
    path = lock_file(pipeline=pipeline, using=using)
    # `<db>.locks/` is the project's own folder (0700, tightened); ETL_LOCK_DIR may be shared: only made.
    shared = path.parent == Path(settings.ETL_LOCK_DIR)
    private_dirs(path.parent, owned_from=None if shared else path.parent)
    fd = private_open(path, os.O_RDWR | os.O_CREAT)  # 0600, no symlink, not inherited by children
    deadline = time.monotonic() + FILE_LOCK_GRACE_SECONDS
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                return None
            time.sleep(0.02)
        except BaseException:
            os.close(fd)
            raise
    # For a person looking at the file; the run record says the same.
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {_when(timezone.now())}\n".encode(), 0)
    return HeldLock(pipeline=pipeline, using=using, handle=fd, kind="flock")


def lock_held(*, pipeline: str, using: str) -> bool:
    """Whether some process holds the pipeline's lock now (for pipeline_status and the admin)."""
    wrapper = connections[using]
    if wrapper.vendor == "postgresql":
        key = lock_key(pipeline)
        with wrapper.cursor() as cursor:  # pg_locks: looking takes nothing a start could trip on
            cursor.execute(
                "SELECT EXISTS (SELECT 1 FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
                "WHERE l.locktype = 'advisory' AND l.granted AND d.datname = current_database() "
                "AND l.classid = %s::bigint::oid AND l.objid = %s::bigint::oid AND l.objsubid = 1)",
                [(key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF],
            )
            return cursor.fetchone()[0]
    path = lock_file(pipeline=pipeline, using=using)
    try:
        fd = private_open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


@contextmanager
def pipeline_lock(*, pipeline: str, using: str) -> Iterator[HeldLock]:
    """Hold the pipeline's lock for the block, or raise `PipelineBusy` (exit 75) naming the holder."""
    held = lock_try(pipeline=pipeline, using=using)
    if held is None:
        raise PipelineBusy(busy_message(pipeline=pipeline, using=using))
    try:
        yield held
    finally:
        held.release()


def busy_message(*, pipeline: str, using: str) -> str:
    holder = (
        PipelineRun.objects.using(using)
        .filter(pipeline=pipeline, status=RunStatus.RUNNING)
        .order_by("-started_at", "-id")
        .first()
    )
    if holder is None:  # it took the lock an instant ago and has not written its run yet
        return f"pipeline {pipeline!r} is already running (its run record is being written); try again later"
    return (
        f"pipeline {pipeline!r} is already running: run #{holder.pk} ({holder.command} "
        f"{holder.business_date}) pid {holder.pid} on {holder.hostname} since {_when(holder.started_at)}, "
        f"last seen {_when(holder.heartbeat_at or holder.started_at)}"
    )


def _when(moment: datetime) -> str:
    return f"{moment:%Y-%m-%d %H:%M:%S %Z}"
