"""Run records, quarantined rows and an operator for the browser tests of the ops console, written into
the server's own database by `manage.py shell` (tests/etlcore/test_console_browser.py)."""

from __future__ import annotations

import json
from datetime import date, timedelta

from django.contrib.auth.models import Permission, User
from django.utils import timezone

from etlcore.models import PipelineRun, StepRun
from warehouse.models import QuarantinedRow

OPERATOR, PASSWORD = "night-operator", "console-test-password"
FAILED_ERROR = "transform failed: spark-submit exited 1 (see the log)"
DETAILS = {
    "datasets": {
        "order_lines": {
            "rows_in": 959,
            "rows_out": 462,
            "rejected": 6,
            "duplicates": 11,
            "filtered": {"cancelled": 480},
            "rule_failures": {"unknown_product": 6},
            "warnings": {},
        }
    },
    "log_tail": "Py4JJavaError: An error occurred while calling o42.parquet",
}


def seed() -> None:
    user = User.objects.create_user(OPERATOR, password=PASSWORD, is_staff=True)
    codenames = [
        "view_pipelinerun",
        "view_steprun",
        "view_stagedpartition",
        "view_quarantinedrow",
        "view_raw_record",
        "operate_pipelines",
    ]
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    now = timezone.now()
    for day in range(1, 4):
        started = now - timedelta(days=4 - day)
        run = PipelineRun.objects.create(
            pipeline="shop",
            business_date=date(2026, 11, day),
            command="run_pipeline",
            started_at=started,
            finished_at=started + timedelta(seconds=30 + day),
            status="failed" if day == 3 else "succeeded",
            error=FAILED_ERROR if day == 3 else "",
            origin="cron",
            started_by="etl",
        )
        StepRun.objects.create(
            run=run, step="extract", status="succeeded", started_at=started, finished_at=started, rows_out=959
        )
        StepRun.objects.create(
            run=run,
            step="transform",
            status=run.status,
            started_at=started,
            finished_at=run.finished_at,
            rows_in=959,
            rows_out=462,
            rows_rejected=6,
            details=DETAILS,
            error="spark-submit exited 1" if day == 3 else "",
        )
    for n, code in enumerate(["unknown_product", "unknown_product", "bad_quantity"]):
        record = {"order_id": f"O{n}", "sku": f"X{n}", "customer_email": "hmac-PSEUDONYM-OF-ALICE"}
        QuarantinedRow.objects.create(
            pipeline="shop",
            business_date=date(2026, 11, 3),
            dataset="order_lines",
            reason_code=code,
            message=f"{code}: sku='X{n}'",
            raw_record=json.dumps(record),
            record_fingerprint=f"{n}" * 64,
        )
