"""A real load process for the fault-injection tests: `python -m tests.warehouse.load_child <job.json>`.

The job names the outputs, date and strategy; the database comes from DATABASE_URL (settings `local`), so
the process is as independent of the test as a cron-started `manage.py load`. With `"action": "migrate"`
it migrates that database; with `"action": "checksums"` it prints the strict warehouse checksums as JSON.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import date
from pathlib import Path


def main(job_path: str) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "conf.settings.local")
    import django

    django.setup()
    from django.core.management import call_command

    from warehouse.checks import warehouse_checksums
    from warehouse.loaders import partition_load

    job = json.loads(Path(job_path).read_text(encoding="utf-8"))
    action = job.get("action", "load")
    if action == "migrate":
        call_command("migrate", verbosity=0)
    elif action == "checksums":
        print(json.dumps(warehouse_checksums(using="default")))
    else:
        partition_load(
            outputs={name: [Path(p) for p in paths] for name, paths in job["outputs"].items()},
            pipeline=job.get("pipeline", "shop"),
            business_date=date.fromisoformat(job["business_date"]),
            run_id=None,
            using="default",
            strategy=job.get("strategy", "auto"),
        )


if __name__ == "__main__":
    main(sys.argv[1])
