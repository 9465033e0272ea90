"""A step reports through one channel, its StepOutcome, which lands on the step record however it ends."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from etlcore.models import RunStatus, StepRun
from etlcore.runs import run_start, step_tracked

pytestmark = pytest.mark.django_db

SERVICES = Path(__file__).resolve().parents[2] / "etlcore" / "services"


def _run():
    return run_start(pipeline="p", command="test", business_date=None, parameters={}, using="default")


def test_a_failing_step_keeps_what_it_reported_before_the_failure():
    run = _run()
    with pytest.raises(RuntimeError), step_tracked(run, "transform") as outcome:
        outcome.rows_in = 7
        outcome.details["log"] = "/var/log/attempt.log"
        raise RuntimeError("job died")
    record = StepRun.objects.get(run=run)
    assert (record.status, record.rows_in, record.details) == (
        RunStatus.FAILED,
        7,
        {"log": "/var/log/attempt.log"},
    )
    assert record.error == "RuntimeError: job died"


def test_a_succeeding_step_writes_its_counts_and_details():
    run = _run()
    with step_tracked(run, "load") as outcome:
        outcome.rows_in, outcome.rows_out, outcome.rows_rejected = 10, 8, 2
        outcome.details["loaded"] = {"facts": 8}
    record = StepRun.objects.get(run=run)
    assert (record.status, record.rows_in, record.rows_out, record.rows_rejected) == (
        RunStatus.SUCCEEDED,
        10,
        8,
        2,
    )
    assert record.details == {"loaded": {"facts": 8}}


def test_step_functions_never_touch_the_step_record_directly():
    # One outcome channel: services write StepOutcome, only etlcore/runs.py writes StepRun.
    offenders = [
        f"{path.name}:{node.lineno}"
        for path in sorted(SERVICES.glob("*.py"))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Name) and node.id == "StepRun"
    ]
    assert offenders == []
