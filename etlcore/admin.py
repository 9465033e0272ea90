from django.contrib import admin

from .models import Backfill, Erasure, PipelineRun, StagedPartition, StepRun
from .selectors import run_status_shown


class StepRunInline(admin.TabularInline):
    model = StepRun
    extra = 0
    can_delete = False
    fields = (
        "step",
        "status",
        "attempts",
        "started_at",
        "finished_at",
        "rows_in",
        "rows_out",
        "rows_rejected",
        "error",
    )
    readonly_fields = fields
    show_change_link = True


@admin.register(PipelineRun)
class PipelineRunAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "pipeline",
        "business_date",
        "command",
        "status_shown",
        "started_at",
        "heartbeat_at",
        "duration_seconds",
        "backfill",
        "resumed_from",
    )
    list_filter = ("status", "pipeline", "command")
    list_select_related = ("backfill",)
    date_hierarchy = "started_at"
    search_fields = ("pipeline", "error")
    readonly_fields = [f.name for f in PipelineRun._meta.fields]
    inlines = [StepRunInline]

    @admin.display(description="status", ordering="status")
    def status_shown(self, run: PipelineRun) -> str:
        """`abandoned` for a `running` run whose pipeline lock is free: its process is gone."""
        status = run_status_shown(run)
        if status != run.status:
            return f"{status} (last seen {run.heartbeat_at or run.started_at:%Y-%m-%d %H:%M:%S %Z})"
        return status

    def has_add_permission(self, request) -> bool:
        return False


class BackfillRunInline(admin.TabularInline):
    """The run of each date of a backfill, in date order."""

    model = PipelineRun
    fk_name = "backfill"
    extra = 0
    can_delete = False
    fields = ("business_date", "status", "started_at", "finished_at", "error")
    readonly_fields = fields
    ordering = ("business_date",)
    show_change_link = True


@admin.register(Backfill)
class BackfillAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "pipeline",
        "first_date",
        "last_date",
        "command",
        "status",
        "started_at",
        "finished_at",
    )
    list_filter = ("status", "pipeline")
    date_hierarchy = "started_at"
    readonly_fields = [f.name for f in Backfill._meta.fields]
    inlines = [BackfillRunInline]

    def has_add_permission(self, request) -> bool:
        return False


@admin.register(StepRun)
class StepRunAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "run",
        "step",
        "status",
        "attempts",
        "rows_in",
        "rows_out",
        "rows_rejected",
        "duration_seconds",
    )
    list_filter = ("status", "step")
    readonly_fields = [f.name for f in StepRun._meta.fields]

    def has_add_permission(self, request) -> bool:
        return False


@admin.register(StagedPartition)
class StagedPartitionAdmin(admin.ModelAdmin):
    list_display = ("pipeline", "dataset", "business_date", "row_count", "run", "published_at")
    list_filter = ("pipeline", "dataset")
    date_hierarchy = "business_date"
    readonly_fields = [f.name for f in StagedPartition._meta.fields]

    def has_add_permission(self, request) -> bool:
        return False


@admin.register(Erasure)
class ErasureAdmin(admin.ModelAdmin):
    """That erasures happened (forget_customer), by whom and what they changed; never whom they erased."""

    list_display = ("id", "pipeline", "erased_at", "operator", "hostname", "newly_listed", "counts")
    list_filter = ("pipeline",)
    readonly_fields = [f.name for f in Erasure._meta.fields]

    def has_add_permission(self, request) -> bool:
        return False
