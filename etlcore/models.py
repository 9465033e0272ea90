"""Run records: every command writes one PipelineRun and a StepRun per step it performs."""

from __future__ import annotations

from django.db import models


class RunStatus(models.TextChoices):
    RUNNING = "running", "running"
    SUCCEEDED = "succeeded", "succeeded"
    FAILED = "failed", "failed"
    # Its process ended without finishing it (kill -9, a lost machine): set by the next run that takes
    # the pipeline's lock, shown by pipeline_status and the admin as soon as the lock is free.
    ABANDONED = "abandoned", "abandoned"


class RunOrigin(models.TextChoices):
    """What started a run: set from ETL_RUN_ORIGIN, which the documented crontab line and systemd unit
    export as `cron`, the admin's background process as `admin`, a task queue worker as `queue`."""

    CRON = "cron", "cron"
    COMMAND = "command", "command"
    ADMIN = "admin", "admin"
    QUEUE = "queue", "queue"


class Backfill(models.Model):
    """Several business dates run as one command (`run_pipeline --from/--to`, or `--nightly` catching up):
    each date has its own PipelineRun pointing here; their transforms share Spark applications."""

    pipeline = models.CharField(max_length=100, db_index=True)
    first_date = models.DateField()
    last_date = models.DateField()
    command = models.CharField(max_length=50, help_text="run_pipeline --from/--to, or --nightly catching up")
    status = models.CharField(max_length=20, choices=RunStatus.choices, default=RunStatus.RUNNING)
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    parameters = models.JSONField(default=dict, blank=True, help_text="as given; never holds a secret")
    hostname = models.CharField(max_length=255, blank=True)
    pid = models.IntegerField(null=True, blank=True)
    error = models.TextField(blank=True, help_text="the dates that failed and why")

    class Meta:
        ordering = ["-started_at", "-id"]

    def __str__(self) -> str:
        return f"backfill #{self.pk} {self.pipeline} {self.first_date}..{self.last_date} {self.status}"


class PipelineRun(models.Model):
    pipeline = models.CharField(max_length=100, db_index=True)
    business_date = models.DateField(null=True, blank=True, help_text="null when the date given was invalid")
    command = models.CharField(max_length=50, help_text="extract, transform, load or run_pipeline")
    status = models.CharField(max_length=20, choices=RunStatus.choices, default=RunStatus.RUNNING)
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    parameters = models.JSONField(default=dict, blank=True, help_text="as given; never holds a secret")
    hostname = models.CharField(max_length=255, blank=True)
    pid = models.IntegerField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(
        null=True, blank=True, help_text="when its process was last seen alive (the run's 'last seen')"
    )
    error = models.TextField(blank=True)
    backfill = models.ForeignKey(
        Backfill,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="runs",
        help_text="the backfill this date's run belongs to",
    )
    resumed_from = models.ForeignKey(
        "self",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="resumed_by",
        help_text="the failed run this one resumed (--resume): its earlier steps' outputs were reused",
    )
    origin = models.CharField(
        max_length=10,
        choices=RunOrigin.choices,
        default=RunOrigin.COMMAND,
        help_text="what started it: cron, an interactive command, the admin, the task queue",
    )
    started_by = models.CharField(
        max_length=150, blank=True, help_text="the admin user for an admin action, else the OS user"
    )

    class Meta:
        ordering = ["-started_at", "-id"]
        indexes = [models.Index(fields=["pipeline", "business_date"])]
        # The ops console's actions (re-run, replay, resume) start runs: a permission of its own.
        permissions = [("operate_pipelines", "Can start runs from the admin (re-run, replay, resume)")]

    def __str__(self) -> str:
        return f"#{self.pk} {self.pipeline} {self.business_date} {self.command} {self.status}"

    @property
    def duration_seconds(self) -> float | None:
        if self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()

    @property
    def started_shown(self) -> str:
        """`admin (alice)`, `cron (etl)`: what started the run and as whom."""
        return f"{self.origin} ({self.started_by})" if self.started_by else self.origin


class StepRun(models.Model):
    run = models.ForeignKey(PipelineRun, on_delete=models.CASCADE, related_name="steps")
    step = models.CharField(max_length=50, help_text="extract, transform or load")
    status = models.CharField(max_length=20, choices=RunStatus.choices, default=RunStatus.RUNNING)
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    rows_in = models.BigIntegerField(null=True, blank=True)
    rows_out = models.BigIntegerField(null=True, blank=True)
    rows_rejected = models.BigIntegerField(null=True, blank=True)
    details = models.JSONField(
        default=dict,
        blank=True,
        help_text="per-dataset counts, partition paths, spark-submit command and log, attempts",
    )
    error = models.TextField(blank=True)
    attempts = models.PositiveIntegerField(default=1, help_text="tries of the step ([run.retries])")
    traceback = models.TextField(blank=True, help_text="where the last attempt failed")

    class Meta:
        ordering = ["started_at", "id"]

    def __str__(self) -> str:
        return f"{self.step} {self.status}"

    @property
    def duration_seconds(self) -> float | None:
        if self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()


class StagedPartition(models.Model):
    """A published raw partition and the connector state around it: the watermark the extract started
    from (`state_in`) and the one to start the next date from (`state_out`).

    Written in one transaction after the partition's manifest is durable, so a saved watermark never
    describes data that is not staged. Re-extracting a date starts again from its `state_in`.
    """

    pipeline = models.CharField(max_length=100)
    dataset = models.CharField(max_length=100)
    business_date = models.DateField()
    run = models.ForeignKey(
        PipelineRun, on_delete=models.SET_NULL, null=True, blank=True, related_name="staged_partitions"
    )
    row_count = models.BigIntegerField()
    checksum = models.CharField(max_length=100)
    manifest = models.CharField(max_length=1000, help_text="path of the partition's _manifest.json")
    source = models.CharField(max_length=1000, blank=True, help_text="the connector's describe(); no secret")
    state_in = models.JSONField(null=True, blank=True, help_text="connector state the extract started from")
    state_out = models.JSONField(null=True, blank=True, help_text="connector state after the last batch")
    source_fields = models.JSONField(
        default=dict, blank=True, help_text="fields the source delivered and their types (drift reference)"
    )
    drift = models.JSONField(default=dict, blank=True, help_text="added / missing / changed fields")
    published_at = models.DateTimeField()

    class Meta:
        ordering = ["pipeline", "dataset", "-business_date"]
        constraints = [
            models.UniqueConstraint(
                fields=["pipeline", "dataset", "business_date"], name="staged_partition_unique_date"
            )
        ]

    def __str__(self) -> str:
        return f"{self.pipeline} {self.dataset} {self.business_date} ({self.row_count} rows)"


class ErasedCustomer(models.Model):
    """The erasure list: a customer erased from a pipeline stays erased. Held as a keyed token of the clear
    value under the erasure key (`connectors.records.erasure_token`), or, for a customer named by pseudonym
    alone, of the pseudonym (`suppression_token`): never the e-mail and never the warehouse's customer_key,
    so the list alone links to no row; extraction stages a listed customer's rows with their identity
    columns null (docs/architecture.md, "Erasure")."""

    class Scheme(models.TextChoices):
        VALUE = "value", "clear value, erasure key"
        PSEUDONYM = "pseudonym", "pseudonym, pseudonym key"

    pipeline = models.CharField(max_length=100)
    token = models.CharField(max_length=64, help_text="keyed HMAC: of the clear value, or of the pseudonym")
    scheme = models.CharField(
        max_length=10,
        choices=Scheme.choices,
        default=Scheme.VALUE,
        help_text="what the token is made of, and with which key; a pseudonym's dies with the pseudonym key",
    )

    class Meta:
        ordering = ["pipeline", "id"]
        constraints = [models.UniqueConstraint(fields=["pipeline", "token"], name="uniq_erased_customer")]

    def __str__(self) -> str:
        return f"{self.pipeline} #{self.pk}"


class Erasure(models.Model):
    """That an erasure happened, by whom and what it changed where, and not whom it erased: no e-mail,
    pseudonym or token is kept here."""

    pipeline = models.CharField(max_length=100, db_index=True)
    erased_at = models.DateTimeField()
    command = models.CharField(max_length=50, help_text="forget_customer")
    operator = models.CharField(max_length=150, blank=True, help_text="the OS user that ran the command")
    hostname = models.CharField(max_length=255, blank=True)
    counts = models.JSONField(default=dict, blank=True, help_text="rows changed per place")
    newly_listed = models.BooleanField(help_text="false when the customer was on the erasure list already")

    class Meta:
        ordering = ["-erased_at", "-id"]

    def __str__(self) -> str:
        return f"erasure #{self.pk} {self.pipeline} {self.erased_at:%Y-%m-%d %H:%M}"


class SensorOutcome(models.TextChoices):
    ENQUEUED = "enqueued", "enqueued"
    UNCHANGED = "unchanged", "unchanged"  # nothing newer, or the same data already enqueued a run
    BUSY = "busy", "busy"  # newer data, but the pipeline runs or the sensor's last run still waits
    ERROR = "error", "error"  # a source's probe failed: no run
    DISABLED = "disabled", "disabled"  # [trigger] enabled = false


class SensorCheck(models.Model):
    """One look of the sensor (etlcore/services/trigger.py) at a pipeline's sources for a business date.

    Bounded: the latest SENSOR_CHECKS_KEPT of a pipeline are kept, and its latest `enqueued` one however
    old, which is what a later check compares with so that the same data never enqueues twice."""

    pipeline = models.CharField(max_length=100)
    business_date = models.DateField()
    checked_at = models.DateTimeField()
    outcome = models.CharField(max_length=20, choices=SensorOutcome.choices)
    fingerprint = models.CharField(
        max_length=40, blank=True, help_text="digest of the sources' fingerprints: the data as seen"
    )
    sources = models.JSONField(
        default=dict, blank=True, help_text="per source: its fingerprint, newer (true, false, null: unknown)"
    )
    task_id = models.CharField(max_length=255, blank=True, help_text="the run task enqueued")
    reason = models.TextField(blank=True, help_text="why this outcome (the busy run, the enqueue it repeats)")
    error = models.TextField(blank=True, help_text="the sources whose probe failed, and why")

    class Meta:
        ordering = ["-checked_at", "-id"]
        indexes = [models.Index(fields=["pipeline", "-checked_at"])]

    def __str__(self) -> str:
        return f"{self.pipeline} {self.business_date} {self.outcome} at {self.checked_at:%Y-%m-%d %H:%M:%S}"
