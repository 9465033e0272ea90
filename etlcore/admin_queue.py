"""The task queue's pages in the admin: django-celery-results' task results with a column that says why a
task did not run or failed (a run refused because its pipeline was running, REFUSED in etlcore/tasks.py),
so the list answers "why did last night's schedule not run" without opening each result. The periodic
tasks (schedules: pipeline_schedule) are django-celery-beat's own pages, unchanged."""

from __future__ import annotations

import json

from django.contrib import admin
from django_celery_results.admin import TaskResultAdmin
from django_celery_results.models import TaskResult

from .tasks import REFUSED

REASON_CHARS = 200


def task_outcome(result: TaskResult) -> str:
    """A refused task's reason, a failed one's exception; "" otherwise."""
    try:
        meta = json.loads(result.result or "null")
    except (TypeError, ValueError):
        return ""
    if not isinstance(meta, dict):
        return ""
    if result.status == REFUSED:
        text = f"refused: {meta.get('reason', '')}"
    elif meta.get("exc_type"):
        message = meta.get("exc_message")
        message = " ".join(map(str, message)) if isinstance(message, list | tuple) else str(message or "")
        text = f"{meta['exc_type']}: {message}"
    else:
        return ""
    return text if len(text) <= REASON_CHARS else text[: REASON_CHARS - 1] + "…"


class QueueTaskResultAdmin(TaskResultAdmin):
    list_display = (*TaskResultAdmin.list_display, "outcome")

    @admin.display(description="why not run / failed")
    def outcome(self, result: TaskResult) -> str:
        return task_outcome(result)


if admin.site.is_registered(TaskResult):
    admin.site.unregister(TaskResult)
admin.site.register(TaskResult, QueueTaskResultAdmin)
