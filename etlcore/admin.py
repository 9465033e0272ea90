"""The Django admin as the ops console: runs with their status, timings, rows and errors; a run's steps,
reconciliation and log tail; the quarantine with personal fields masked; charts; and, for users with the
`etlcore.operate_pipelines` permission, actions that start commands in the background (docs/operations.md,
"The ops console")."""

from __future__ import annotations

from collections import Counter
from datetime import date, timedelta

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import Count, QuerySet, Sum
from django.http import HttpRequest, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.urls import path, reverse
from django.utils import timezone
from django.utils.decorators import method_decorator
from django.utils.html import format_html
from django.utils.http import urlencode
from django.utils.safestring import mark_safe
from django.views.decorators.http import require_POST

import warehouse.admin  # registers the warehouse's pages first: the quarantine's is replaced below
from warehouse.models import QuarantinedRow

from . import admin_queue, charts, console  # noqa: F401 (admin_queue: the task results page)
from .errors import ETL_ERRORS
from .models import Backfill, Erasure, PipelineRun, RunStatus, StagedPartition, StepRun
from .runs import error_text
from .selectors import run_status_shown
from .services.background import console_action_start

OPERATE_PERMISSION = "etlcore.operate_pipelines"
# The actions change state: POST only (the admin's views check CSRF).
method_decorator_post = method_decorator(require_POST)
CHART_DAYS = 28  # "the last weeks"
CHART_RUNS = 30


def status_badge(status: str, note: str = "") -> str:
    return format_html('<span class="etl-badge etl-{}" title="{}">{}</span>', status, note or status, status)


def run_rows(run: PipelineRun) -> tuple[int | None, int | None]:
    """(rows loaded, rows quarantined) of a run: the load's fact rows, the transform's rejected rows."""
    steps = {s.step: s for s in run.steps.all()}
    loaded = steps["load"].rows_out if "load" in steps else None
    quarantined = steps["transform"].rows_rejected if "transform" in steps else None
    if loaded is None and steps:
        loaded = list(steps.values())[-1].rows_out
    return loaded, quarantined


def _personal_columns(pipeline: str, dataset: str) -> frozenset[str]:
    """The pii and encrypted columns of a dataset; every column when the pipeline file cannot be read
    (safer to mask a whole record than to guess)."""
    from .config import pipeline_load

    try:
        config = pipeline_load(pipeline)
        spec = config.datasets[dataset]
    except (*ETL_ERRORS, KeyError):
        return frozenset({console.EVERY})
    return frozenset(spec.pii | spec.encrypted)


class BusinessDateRangeFilter(admin.FieldListFilter):
    """Business date from / to: two date inputs (a real range, not "past 7 days")."""

    template = "admin/etlcore/date_range_filter.html"

    def __init__(self, field, request, params, model, model_admin, field_path):
        self.lookup_gte, self.lookup_lte = f"{field_path}__gte", f"{field_path}__lte"
        super().__init__(field, request, params, model, model_admin, field_path)
        self.title = "business date"

    def expected_parameters(self) -> list[str]:
        return [self.lookup_gte, self.lookup_lte]

    def _value(self, name: str) -> str:
        value = self.used_parameters.get(name)
        return (value[-1] if isinstance(value, list) else value) or ""

    def queryset(self, request, queryset):
        bounds = {}
        for name in (self.lookup_gte, self.lookup_lte):
            text = self._value(name)
            if text:
                try:
                    bounds[name] = date.fromisoformat(text)
                except ValueError:
                    raise admin.options.IncorrectLookupParameters(
                        f"{text!r} is not a YYYY-MM-DD date"
                    ) from None
        return queryset.filter(**bounds)

    def has_output(self) -> bool:
        return True

    def choices(self, changelist):
        keep = changelist.get_filters_params()
        hidden = [(k, v) for k, values in keep.items() if k not in self.expected_parameters() for v in values]
        yield {
            "gte_name": self.lookup_gte,
            "lte_name": self.lookup_lte,
            "gte": self._value(self.lookup_gte),
            "lte": self._value(self.lookup_lte),
            "hidden": hidden,
            "reset": changelist.get_query_string(remove=self.expected_parameters()),
            "selected": bool(self._value(self.lookup_gte) or self._value(self.lookup_lte)),
        }


class ReadOnlyInline(admin.TabularInline):
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


class ConsoleAdmin(warehouse.admin.ReadOnlyAdmin):
    """Run records are written by the commands; the console looks and starts commands, never edits."""


@admin.register(PipelineRun)
class PipelineRunAdmin(ConsoleAdmin):
    list_display = (
        "id",
        "pipeline",
        "business_date",
        "status_shown",
        "started_at",
        "duration",
        "rows",
        "error_line",
        "started",
        "command",
    )
    list_display_links = ("id", "pipeline")
    list_filter = (
        "pipeline",
        "status",
        ("business_date", BusinessDateRangeFilter),
        "origin",
        "command",
    )
    search_fields = ("pipeline", "error")
    list_per_page = 50
    fields = (
        "pipeline",
        "business_date",
        "command",
        "status_shown",
        "started",
        "started_at",
        "finished_at",
        "duration",
        "heartbeat_at",
        "hostname",
        "pid",
        "backfill",
        "resumed_from",
        "parameters",
        "error",
    )
    readonly_fields = fields
    change_form_template = "admin/etlcore/pipelinerun/change_form.html"
    change_list_template = "admin/etlcore/pipelinerun/change_list.html"

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("backfill").prefetch_related("steps")

    @admin.display(description="status", ordering="status")
    def status_shown(self, run: PipelineRun) -> str:
        """`abandoned` for a `running` run whose pipeline lock is free: its process is gone."""
        status = run_status_shown(run, held=getattr(self, "_held", None))
        if status != run.status:
            seen = run.heartbeat_at or run.started_at
            return status_badge(status, f"{status} (last seen {seen:%Y-%m-%d %H:%M:%S %Z})")
        return status_badge(status)

    @admin.display(description="duration")
    def duration(self, run: PipelineRun) -> str:
        if run.finished_at is None:
            return f"{console.duration_human((timezone.now() - run.started_at).total_seconds())} so far"
        return console.duration_human(run.duration_seconds)

    @admin.display(description="rows loaded")
    def rows(self, run: PipelineRun) -> str:
        loaded, quarantined = run_rows(run)
        if loaded is None:
            return "-"
        return f"{loaded:,}" + (f" (+{quarantined:,} quarantined)" if quarantined else "")

    @admin.display(description="error")
    def error_line(self, run: PipelineRun) -> str:
        line = console.error_first_line(run.error, width=90)
        return format_html('<span title="{}">{}</span>', run.error, line) if line else "-"

    @admin.display(description="started by", ordering="origin")
    def started(self, run: PipelineRun) -> str:
        return run.started_shown

    # --- the runs page: charts over the last weeks -------------------------------------------------

    def changelist_view(self, request, extra_context=None):
        self._held = {}  # one lock probe per pipeline for the whole page
        pipeline = request.GET.get("pipeline")
        charts_shown = runs_charts(pipeline=pipeline)
        extra_context = {"title": "Pipeline runs", **(extra_context or {}), "charts": charts_shown}
        return super().changelist_view(request, extra_context=extra_context)

    # --- a run's page --------------------------------------------------------------------------------

    def change_view(self, request, object_id, form_url="", extra_context=None):
        self._held = {}
        run = self.get_object(request, object_id)
        extra = {"title": f"Pipeline run #{object_id}"}
        if run is not None:
            extra |= run_page_context(run, can_operate=request.user.has_perm(OPERATE_PERMISSION))
        return super().change_view(
            request, object_id, form_url, extra_context={**(extra_context or {}), **extra}
        )

    def get_urls(self):
        view = self.admin_site.admin_view
        return [
            path("<int:run_id>/rerun/", view(self.rerun_view), name="etlcore_pipelinerun_rerun"),
            path("<int:run_id>/resume/", view(self.resume_view), name="etlcore_pipelinerun_resume"),
            path("<int:run_id>/replay/", view(self.replay_view), name="etlcore_pipelinerun_replay"),
            *super().get_urls(),
        ]

    def _action(
        self, request: HttpRequest, run: PipelineRun, command: str, options: dict[str, str], what: str
    ):
        if not request.user.has_perm(OPERATE_PERMISSION):
            raise PermissionDenied
        try:
            started = console_action_start(
                command=command, options=options, started_by=request.user.get_username()
            )
        except ETL_ERRORS as exc:
            messages.error(request, f"{what} not started: {error_text(exc)}")
            return HttpResponseRedirect(reverse("admin:etlcore_pipelinerun_change", args=[run.pk]))
        messages.success(
            request,
            f"{what} started {started.where()}; its run appears in the list below "
            "as soon as it has taken the pipeline's lock.",
        )
        changelist = reverse("admin:etlcore_pipelinerun_changelist")
        return HttpResponseRedirect(f"{changelist}?{urlencode({'pipeline': run.pipeline})}")

    @method_decorator_post
    def rerun_view(self, request, run_id: int):
        run = get_object_or_404(PipelineRun, pk=run_id)
        if run.business_date is None:
            messages.error(request, "this run has no business date to run again")
            return HttpResponseRedirect(reverse("admin:etlcore_pipelinerun_change", args=[run.pk]))
        options = {"pipeline": run.pipeline, "date": run.business_date.isoformat()}
        return self._action(
            request, run, "run_pipeline", options, f"Re-run of {run.pipeline} {run.business_date}"
        )

    @method_decorator_post
    def resume_view(self, request, run_id: int):
        run = get_object_or_404(PipelineRun, pk=run_id)
        options = {"pipeline": run.pipeline, "resume": str(run.pk)}
        return self._action(request, run, "run_pipeline", options, f"Resume of run #{run.pk}")

    @method_decorator_post
    def replay_view(self, request, run_id: int):
        """Replay the quarantined rows of the run's date, or of one rule (`rule` in the form)."""
        run = get_object_or_404(PipelineRun, pk=run_id)
        if run.business_date is None:
            messages.error(request, "this run has no business date whose quarantine to replay")
            return HttpResponseRedirect(reverse("admin:etlcore_pipelinerun_change", args=[run.pk]))
        rule = (request.POST.get("rule") or "").strip()
        options = {"pipeline": run.pipeline, "date": run.business_date.isoformat(), "rule": rule}
        what = f"Replay of {run.pipeline} {run.business_date}'s quarantine" + (
            f" (rule {rule})" if rule else ""
        )
        return self._action(request, run, "replay_quarantine", options, what)


def run_page_context(run: PipelineRun, *, can_operate: bool) -> dict:
    """What a run's page shows besides its fields: steps, reconciliation, load counts, log tails,
    links, and the actions the user may start."""
    steps = []
    for step in run.steps.all():
        details = step.details or {}
        where, tail = console.log_tail(details)
        steps.append(
            {
                "record": step,
                "status": status_badge(step.status),
                "duration": console.duration_human(step.duration_seconds),
                "attempts": details.get("attempts") or [],
                "engine": details.get("engine") or "",
                "engine_reason": details.get("engine_reason") or "",
                "reconciliation": console.reconciliation(details),
                "loaded": details.get("loaded") or {},
                "log_path": where,
                "log_tail": tail,
                "error": step.error,
            }
        )
    reconciliations = [r for s in steps for r in s["reconciliation"]]
    rules = sorted({code for r in reconciliations for code in (*r.filtered, *r.rule_failures)})
    quarantine = reverse("admin:warehouse_quarantinedrow_changelist")
    staged = reverse("admin:etlcore_stagedpartition_changelist")
    by_date = {"pipeline": run.pipeline, "business_date": str(run.business_date)}
    return {
        "run": run,
        "steps": steps,
        "error_line": console.error_first_line(run.error, width=300),
        "staged_url": f"{staged}?{urlencode({'run__id__exact': run.pk})}",
        "staged_count": run.staged_partitions.count(),
        "quarantine_url": f"{quarantine}?{urlencode(by_date)}" if run.business_date else "",
        "quarantine_count": (
            QuarantinedRow.objects.filter(pipeline=run.pipeline, business_date=run.business_date).count()
            if run.business_date
            else 0
        ),
        "quarantine_first_url": f"{quarantine}?{urlencode({'first_run__id__exact': run.pk})}",
        "rules": rules,
        "can_operate": can_operate,
        "can_resume": run.status == RunStatus.FAILED,
    }


def runs_charts(*, pipeline: str | None, days: int = CHART_DAYS) -> list[dict]:
    """Per pipeline (the one filtered on, or each with runs): rows and duration of its latest runs over
    the last `days`, and the quarantine rate per business date."""
    since = timezone.now() - timedelta(days=days)
    runs = PipelineRun.objects.filter(started_at__gte=since)
    if pipeline:
        runs = runs.filter(pipeline=pipeline)
    names = sorted(set(runs.values_list("pipeline", flat=True)))
    shown = []
    for name in names[:6]:
        latest = list(
            runs.filter(pipeline=name).prefetch_related("steps").order_by("-started_at", "-id")[:CHART_RUNS]
        )[::-1]
        rows, durations = [], []
        for run in latest:
            loaded, _ = run_rows(run)
            failed = "failed" if run.status in (RunStatus.FAILED, RunStatus.ABANDONED) else ""
            label = f"#{run.pk}"
            when = f"run #{run.pk} {run.business_date} {run.status}"
            rows.append(charts.Point(label, loaded or 0, f"{when}: {loaded or 0:,} rows", failed))
            seconds = run.duration_seconds or 0
            durations.append(
                charts.Point(
                    label, seconds, f"{when}: {console.duration_human(run.duration_seconds)}", failed
                )
            )
        rates = []
        transforms = (
            StepRun.objects.filter(run__in=runs.filter(pipeline=name), step="transform", status="succeeded")
            .values("run__business_date")
            .annotate(read=Sum("rows_in"), rejected=Sum("rows_rejected"), n=Count("id"))
            .order_by("run__business_date")
        )
        for t in transforms:
            read, rejected = t["read"] or 0, t["rejected"] or 0
            rate = 100.0 * rejected / read if read else 0.0
            day = t["run__business_date"]
            rates.append(
                charts.Point(f"{day:%m-%d}", rate, f"{day}: {rate:.2f} % quarantined ({rejected}/{read})")
            )
        shown.append(
            {
                "pipeline": name,
                "rows": mark_safe(charts.bar_chart_svg(title=f"{name}: rows loaded per run", points=rows)),
                "duration": mark_safe(
                    charts.bar_chart_svg(title=f"{name}: duration per run (s)", points=durations, unit=" s")
                ),
                "quarantine": mark_safe(
                    charts.line_chart_svg(
                        title=f"{name}: quarantine rate per business date (%)", points=rates, unit=" %"
                    )
                ),
            }
        )
    return shown


def last_night(*, limit: int = 20) -> list[dict]:
    """Per pipeline, its latest run: what the admin index shows first."""
    latest = []
    held: dict = {}
    names = PipelineRun.objects.values_list("pipeline", flat=True).distinct().order_by("pipeline")
    for name in list(names)[:limit]:
        run = PipelineRun.objects.filter(pipeline=name).order_by("-started_at", "-id").first()
        if run is None:
            continue
        status = run_status_shown(run, held=held)
        latest.append(
            {
                "run": run,
                "status": status_badge(status),
                "failed": status in (RunStatus.FAILED, RunStatus.ABANDONED),
                "duration": console.duration_human(run.duration_seconds),
                "error_line": console.error_first_line(run.error, width=120),
                "url": reverse("admin:etlcore_pipelinerun_change", args=[run.pk]),
                "runs_url": reverse("admin:etlcore_pipelinerun_changelist")
                + "?"
                + urlencode({"pipeline": name}),
            }
        )
    return latest


admin.site.index_template = "admin/etlcore/index.html"


class StepRunInline(ReadOnlyInline):
    model = StepRun
    fields = ("step", "status", "attempts", "started_at", "finished_at", "rows_in", "rows_out", "error")
    readonly_fields = fields
    show_change_link = True


class BackfillRunInline(ReadOnlyInline):
    """The run of each date of a backfill, in date order."""

    model = PipelineRun
    fk_name = "backfill"
    fields = ("business_date", "status", "started_at", "finished_at", "error")
    readonly_fields = fields
    ordering = ("business_date",)
    show_change_link = True


@admin.register(Backfill)
class BackfillAdmin(ConsoleAdmin):
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


@admin.register(StepRun)
class StepRunAdmin(ConsoleAdmin):
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


@admin.register(StagedPartition)
class StagedPartitionAdmin(ConsoleAdmin):
    list_display = ("pipeline", "dataset", "business_date", "row_count", "run", "published_at")
    list_filter = ("pipeline", "dataset")
    date_hierarchy = "business_date"
    readonly_fields = [f.name for f in StagedPartition._meta.fields]


@admin.register(Erasure)
class ErasureAdmin(ConsoleAdmin):
    """That erasures happened (forget_customer), by whom and what they changed; never whom they erased."""

    list_display = ("id", "pipeline", "erased_at", "operator", "hostname", "newly_listed", "counts")
    list_filter = ("pipeline",)
    readonly_fields = [f.name for f in Erasure._meta.fields]


# --- the quarantine --------------------------------------------------------------------------------------

admin.site.unregister(QuarantinedRow)


@admin.register(QuarantinedRow)
class QuarantineConsoleAdmin(warehouse.admin.QuarantinedRowAdmin):
    """The warehouse's quarantine page with what an operator needs: the message and offending value with
    personal columns masked, the record pretty-printed and masked, counts per rule for the filter."""

    list_display = (
        "pipeline",
        "business_date",
        "dataset",
        "reason_code",
        "offending",
        "message_shown",
        "occurrences",
        "first_run",
    )
    list_filter = ("pipeline", "dataset", "reason_code", ("business_date", BusinessDateRangeFilter))
    change_list_template = "admin/warehouse/quarantinedrow/console_change_list.html"
    _personal_cache: dict

    def get_fields(self, request, obj=None):
        fields = [
            "pipeline",
            "business_date",
            "dataset",
            "reason_code",
            "message_shown",
            "occurrences",
            "first_run",
        ]
        if request.user.has_perm(warehouse.admin.RAW_RECORD_PERMISSION):
            fields += ["record_shown", "record_fingerprint"]
        return fields

    def get_readonly_fields(self, request, obj=None):
        return self.get_fields(request, obj)

    def _personal(self, row: QuarantinedRow) -> frozenset[str]:
        cache = self.__dict__.setdefault("_personal_cache", {})
        key = (row.pipeline, row.dataset)
        if key not in cache:
            cache[key] = _personal_columns(row.pipeline, row.dataset)
        return cache[key]

    @admin.display(description="offending value")
    def offending(self, row: QuarantinedRow) -> str:
        first = console.message_reasons(row.message, self._personal(row))[:1]
        if not first or not first[0].column:
            return "-"
        return f"{first[0].column}={first[0].value}"

    @admin.display(description="message")
    def message_shown(self, row: QuarantinedRow) -> str:
        return console.message_masked(row.message, self._personal(row))

    @admin.display(description="raw record (personal fields masked)")
    def record_shown(self, row: QuarantinedRow) -> str:
        personal = self._personal(row)
        if "*" in personal:
            return console.MASK
        return format_html(
            '<pre class="etl-record">{}</pre>', console.record_masked(row.raw_record, personal)
        )

    def changelist_view(self, request, extra_context=None):
        self._personal_cache = {}
        extra_context = {"title": "Quarantined rows", **(extra_context or {})}
        response = super().changelist_view(request, extra_context=extra_context)
        changelist = getattr(response, "context_data", {}).get("cl")
        if changelist is not None:
            response.context_data |= quarantine_summary(
                changelist.queryset, can_operate=request.user.has_perm(OPERATE_PERMISSION)
            )
        return response

    def get_urls(self):
        view = self.admin_site.admin_view
        return [
            path("replay/", view(self.replay_view), name="warehouse_quarantinedrow_replay"),
            *super().get_urls(),
        ]

    @method_decorator_post
    def replay_view(self, request):
        """Replay the quarantined rows of a pipeline's date, or of a rule (the page's filter)."""
        if not request.user.has_perm(OPERATE_PERMISSION):
            raise PermissionDenied
        pipeline = (request.POST.get("pipeline") or "").strip()
        day, rule = (request.POST.get("date") or "").strip(), (request.POST.get("rule") or "").strip()
        dataset = (request.POST.get("dataset") or "").strip()
        back = reverse("admin:warehouse_quarantinedrow_changelist")
        if not pipeline or not (day or rule):
            messages.error(request, "choose a pipeline and a date or a rule to replay")
            return HttpResponseRedirect(back)
        options = {"pipeline": pipeline, "date": day, "rule": rule, "dataset": dataset}
        what = " ".join(f"--{name}={value}" for name, value in options.items() if value)
        try:
            started = console_action_start(
                command="replay_quarantine", options=options, started_by=request.user.get_username()
            )
        except ETL_ERRORS as exc:
            messages.error(request, f"Replay of quarantined rows ({what}) not started: {error_text(exc)}")
            return HttpResponseRedirect(back)
        messages.success(request, f"Replay of quarantined rows ({what}) started {started.where()}.")
        runs = reverse("admin:etlcore_pipelinerun_changelist")
        return HttpResponseRedirect(f"{runs}?{urlencode({'pipeline': pipeline})}")


def quarantine_summary(rows: QuerySet[QuarantinedRow], *, can_operate: bool) -> dict:
    """Counts per rule (records and occurrences) of the filtered quarantine, and what a replay of it
    would be given (a single pipeline, and its date or rule)."""
    per_rule = list(
        rows.order_by()
        .values("reason_code")
        .annotate(records=Count("id"), occurrences=Sum("occurrences"))
        .order_by("-records", "reason_code")
    )
    pipelines = Counter(rows.order_by().values_list("pipeline", flat=True).distinct())
    dates = sorted(set(rows.order_by().values_list("business_date", flat=True).distinct()))
    rules = [r["reason_code"] for r in per_rule]
    replay = None
    if can_operate and len(pipelines) == 1 and (len(dates) == 1 or len(rules) == 1):
        replay = {
            "pipeline": next(iter(pipelines)),
            "date": dates[0].isoformat() if len(dates) == 1 else "",
            "rule": rules[0] if len(rules) == 1 else "",
        }
    return {"per_rule": per_rule, "replay": replay}
