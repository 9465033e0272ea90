"""The Spark job in the test's own Spark session instead of a spark-submit child: for tests whose subject is
the pipeline around the job (loads, backfills, erasure, replays), not the submit.

    jobs_in_session(monkeypatch, spark)

From then on, in this test, every submit (`etlcore.spark.jobs_submit`: one date or several) runs as it
always does (specs written, the command built and masked, the log file opened, the exit code read, a
failure raised), except that the process it starts is the job's own `main()` with the command's `--spec`
arguments, called here, in the shared session, its output going to the job's log. What a JVM's start costs
(~20 s a date) is saved; what only a real child can show (the command line Spark parses, the child's
environment and umask, the kill of its process group) is left to the tests that keep a real submit
(tests/test_end_to_end.py, test_backfill.py, test_spark_cluster.py, test_personal_data_canaries.py...).
"""

from __future__ import annotations

import importlib
import io
import os
import subprocess
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from types import SimpleNamespace
from typing import Any, BinaryIO

import etlcore.spark


class JobInSession:
    """Stands in for the spark-submit child `etlcore.spark` starts (`Popen([python, -I, guard, pid, "--",
    *command], stdout=log, ...)`): runs the job module's `main(--spec ...)` to its end on construction."""

    session: Any = None  # the test's SparkSession, set by jobs_in_session

    def __init__(self, args: list[str], *, stdout: BinaryIO, **_: Any) -> None:
        command = list(args[args.index("--") + 1 :])
        first_spec = command.index("--spec")
        script = Path(command[first_spec - 1])  # <package>/<job>.py, as etlcore.spark.job_script gives it
        job = importlib.import_module(f"{script.parent.name}.{script.stem}")
        session = self.session
        log = io.TextIOWrapper(stdout, encoding="utf-8", write_through=True)
        # main() ends its application with spark.stop(): here the session is the suite's, so it stays up.
        session.stop = lambda: None
        try:
            with redirect_stdout(log), redirect_stderr(log):
                self.returncode = job.main(command[first_spec:])
        finally:
            del session.stop
            log.detach()  # the log file stays open for etlcore.spark, which closes it
        self.pid = os.getpid()

    def wait(self, timeout: float | None = None) -> int:
        return self.returncode

    def poll(self) -> int:
        return self.returncode

    def terminate(self) -> None:  # already finished: nothing to stop
        pass

    kill = terminate


def jobs_in_session(monkeypatch, spark) -> None:
    """Every spark-submit of the rest of the test runs the job in `spark` (the session fixture)."""
    monkeypatch.setattr(JobInSession, "session", spark)
    in_session = SimpleNamespace(**{**vars(subprocess), "Popen": JobInSession})
    monkeypatch.setattr(etlcore.spark, "subprocess", in_session)
