"""Run one command so that it never outlives the process that started it:
`python -I child_guard.py <parent pid> -- <command...>`. Standard library only, imported by nothing.

A parent-death signal (`prctl(PR_SET_PDEATHSIG)`) reaches only the direct child of the dying process, and
spark-submit's Python driver is a grandchild (spark-submit's shell script execs the JVM, which starts the
driver). So the guard is the direct child: the kernel sends it SIGTERM when its parent dies (even by
`kill -9`), and it runs the command in a process group of its own, which it ends as a whole: SIGTERM, a
grace period for the JVM's shutdown hooks, then SIGKILL. It does the same when the parent sends it
SIGTERM or SIGINT, and after the command exits, for anything the command left behind in its group.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
GRACE_SECONDS = 5.0


def parent_death_signal_set(signum: int) -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signum)
    except (OSError, AttributeError):  # not Linux: the parent's own signal handling still stops the job
        pass


def group_end(pgid: int, child: subprocess.Popen, grace: float) -> None:
    """SIGTERM to the whole group, then SIGKILL to whatever is left after `grace` seconds."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    child.wait()


def main(argv: list[str]) -> int:
    parent, separator, command = int(argv[1]), argv[2], argv[3:]
    if separator != "--" or not command:
        print("usage: child_guard.py <parent pid> -- <command...>", file=sys.stderr)
        return 2
    stop: list[int] = []
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, lambda received, frame: stop.append(received))
    parent_death_signal_set(signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before prctl took effect
        stop.append(signal.SIGTERM)
    if stop:
        return 128 + stop[0]
    # The command's own parent-death signal covers a guard that is itself killed with SIGKILL: it reaches
    # the JVM, which spark-submit's scripts exec in place of the process started here.
    child = subprocess.Popen(
        command, process_group=0, preexec_fn=lambda: parent_death_signal_set(signal.SIGKILL)
    )
    while not stop:
        try:
            child.wait(timeout=0.1)
            break
        except subprocess.TimeoutExpired:
            continue
    if stop:
        print(f"child_guard: {signal.Signals(stop[0]).name}: stopping the job's processes", flush=True)
        group_end(child.pid, child, GRACE_SECONDS)
        return 128 + stop[0]
    try:  # the command is done; a process it started and left running in its group is not
        os.killpg(child.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return child.returncode if child.returncode >= 0 else 128 - child.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv))
