"""A process that contends for a pipeline's lock when told to: tests/etlcore/test_run_control.py starts
ten of them (spawned, each with its own Django and database connections) and runs many trials of
simultaneous starts against the real lock, which full `manage.py` starts would make too slow to repeat.

Only the standard library at import time: the spawned child imports this module before Django is set up."""

from __future__ import annotations

import os
import time


def contend(env: dict[str, str], pipeline: str, orders, results) -> None:
    """Wait for orders: ("try", start_at) takes the lock at `start_at` (time.time()) and reports
    ("took" | "refused", pid, seconds the attempt took); the holder keeps it until ("release",), then
    reports ("released", pid). None ends the process."""
    os.environ.update(env)
    import django

    django.setup()
    from etlcore.locks import lock_try

    results.put(("ready", os.getpid(), 0.0))
    while (order := orders.get()) is not None:
        _, start_at = order
        time.sleep(max(0.0, start_at - time.time()))
        began = time.monotonic()
        held = lock_try(pipeline=pipeline, using="default")
        results.put(("took" if held else "refused", os.getpid(), time.monotonic() - began))
        if held is not None:
            assert orders.get() == ("release",)
            held.release()
            results.put(("released", os.getpid(), 0.0))
