"""Start a management command outside the request that asked for it (the ops console's actions).

The command runs as its own detached process, the same `manage.py <command>` an operator would type, so
it goes through the same services, holds the pipeline's lock, and writes its own run record, marked with
origin `admin` and the user. With settings.ETL_CONSOLE_ACTIONS = "queue" it is the matching task on the
Celery workers instead (etlcore/tasks.py), its runs marked origin `queue`, started by `admin <user>`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.utils import timezone

# The commands the console may start: nothing else reaches a process from a web request.
BACKGROUND_COMMANDS = frozenset({"run_pipeline", "replay_quarantine"})


@dataclass(frozen=True)
class BackgroundStart:
    pid: int
    log: Path
    argv: tuple[str, ...]

    def where(self) -> str:
        return f"in the background (pid {self.pid})"


@dataclass(frozen=True)
class QueuedStart:
    task_id: str

    def where(self) -> str:
        return f"on the task queue (task {self.task_id})"


def console_action_start(
    *, command: str, options: Mapping[str, str], started_by: str
) -> BackgroundStart | QueuedStart:
    """What the console's buttons start: `manage.py <command> --<option>=<value>...` in the background, or
    its task on the queue when settings.ETL_CONSOLE_ACTIONS is "queue". `options`: `pipeline` and one of
    `date` (run_pipeline: a re-run; replay_quarantine, with `rule`, `dataset`), `resume` (a run id)."""
    if settings.ETL_CONSOLE_ACTIONS == "queue":
        return _action_enqueue(command=command, options=options, started_by=f"admin {started_by}")
    # `--flag=value`: a value from a form is never read as an option of its own.
    arguments = [f"--{name}={value}" for name, value in options.items() if value]
    return command_start_background(command=command, arguments=arguments, started_by=started_by)


def _action_enqueue(*, command: str, options: Mapping[str, str], started_by: str) -> QueuedStart:
    from ..broker import broker_url_required
    from ..tasks import pipeline_resume, quarantine_replay_task, run_enqueue

    broker_url_required()
    pipeline = options["pipeline"]
    if command == "run_pipeline" and options.get("resume"):
        sent = pipeline_resume.delay(pipeline=pipeline, run_id=int(options["resume"]), started_by=started_by)
    elif command == "run_pipeline":
        sent = run_enqueue(pipeline=pipeline, business_date=options["date"], started_by=started_by)
    elif command == "replay_quarantine":
        chosen = {k: options.get(k) or None for k in ("dataset", "rule")}
        sent = quarantine_replay_task.delay(
            pipeline=pipeline, business_date=options.get("date") or None, started_by=started_by, **chosen
        )
    else:
        raise ValueError(f"not a command the console starts: {command!r}")
    return QueuedStart(task_id=sent.id)


def command_start_background(
    *,
    command: str,
    arguments: Sequence[str],
    origin: str = "admin",
    started_by: str,
    environment: Mapping[str, str] | None = None,
) -> BackgroundStart:
    """`manage.py <command> <arguments>` in a new session (a web server's restart does not stop it), its
    output in a private log under `$ETL_VAR_DIR/console/`, its runs recording `origin` and `started_by`.

    `environment` adds to the server's own (settings.ETL_BACKGROUND_ENV by default): what the command
    needs that the server's process does not say, e.g. the settings module. Arguments go as a list, never
    through a shell."""
    if command not in BACKGROUND_COMMANDS:
        raise ValueError(f"not a command the console starts: {command!r}")
    if any("\n" in a or "\x00" in a for a in arguments):
        raise ValueError("arguments must be single-line strings")
    folder = Path(settings.VAR_DIR) / "console"
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    stamp = timezone.now().strftime("%Y%m%dT%H%M%S%f")
    log = folder / f"{stamp}-{command}-{os.getpid()}.log"
    env = {**os.environ, **(settings.ETL_BACKGROUND_ENV if environment is None else environment)}
    env |= {"ETL_RUN_ORIGIN": origin, "ETL_RUN_STARTED_BY": started_by, "PYTHONUNBUFFERED": "1"}
    env.setdefault("DJANGO_SETTINGS_MODULE", os.environ.get("DJANGO_SETTINGS_MODULE", "conf.settings.local"))
    argv = (sys.executable, str(Path(settings.BASE_DIR) / "manage.py"), command, *arguments)
    # Private: the output may name paths and pipelines that are not every user's business.
    descriptor = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as output:
        process = subprocess.Popen(
            argv,
            cwd=settings.BASE_DIR,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
    return BackgroundStart(pid=process.pid, log=log, argv=argv)
