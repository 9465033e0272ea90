"""The extract step: every dataset's window from its source into a published raw partition."""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import structlog
from cryptography.fernet import MultiFernet
from django.conf import settings
from django.db import connections, transaction
from django.utils import timezone

from connectors import build_connector
from connectors.base import ExtractWindow
from connectors.errors import SchemaDriftError
from connectors.records import (
    Encrypter,
    Erasure,
    FieldObserver,
    SchemaDrift,
    schema_drift,
    staging_schema,
    to_staging_batch,
)
from connectors.secrets import secret_get

from .. import staging
from ..config import DatasetConfig, PipelineConfig
from ..erasure import dataset_erasures
from ..errors import ETL_ERRORS, ConfigurationError, PartitionNotFound, SourceError
from ..logs import progress_bar
from ..models import PipelineRun, RunStatus, StagedPartition
from ..pii import pii_cipher
from ..runs import StepOutcome, error_text
from ..selectors import ExtractState, extract_state_lookup

logger = logging.getLogger(__name__)
log = structlog.get_logger(__name__)


# How the extract step hands its sources out, and gets each back as it finishes: (dataset, what it
# extracted or why it failed). `sources_local` runs them on threads of this process; the task queue runs
# each as a task on any worker (etlcore/tasks.py). `facts` receives what each source reports about itself.
SourceFanOut = Callable[..., Iterator[tuple[str, "SourceExtracted | Exception"]]]


def sources_extract(
    *,
    config: PipelineConfig,
    business_date: date,
    outcome: StepOutcome,
    fan_out: SourceFanOut | None = None,
) -> None:
    """Pull every dataset's window from its source into a published raw partition.

    Sources are independent: they run concurrently (`extract_workers` at a time, or one task each with a
    task queue's `fan_out`), each from its own saved state, and one failing does not stop the others.
    Each partition is recorded with its connector's next state once published, in this process; the step
    then fails naming every source that failed.
    """
    plans = {
        name: extract_state_lookup(config=config, dataset=name, business_date=business_date)
        for name in config.datasets
    }
    failures: dict[str, BaseException] = {}
    # What each source's worker reports about itself, succeeded or failed (its HTTP counters, batches).
    sources: dict[str, dict[str, Any]] = {name: {} for name in config.datasets}
    outcome.details["sources"] = sources
    fan_out = fan_out or sources_local
    finished = fan_out(
        config=config, business_date=business_date, run_id=outcome.run_id, plans=plans, facts=sources
    )
    with closing(finished):
        for name, extracted in finished:
            if isinstance(extracted, BaseException):
                failures[name] = extracted
                outcome.details[name] = {"error": error_text(extracted)}
                if isinstance(extracted, SchemaDriftError):
                    outcome.details[name]["drift"] = extracted.drift.as_dict()
                continue
            _partition_record(
                extracted, run_id=outcome.run_id, state_in=plans[name].state, using=config.database
            )
            outcome.rows_in += extracted.manifest.row_count
            outcome.rows_out += extracted.manifest.row_count
            outcome.details[name] = {
                "rows": extracted.manifest.row_count,
                "partition": str(extracted.ref.dir),
                "checksum": extracted.manifest.checksum,
                "seconds": extracted.seconds,
            }
            if extracted.drift:
                outcome.details[name]["drift"] = extracted.drift.as_dict()
    if failures:
        raise _extract_failure(failures, total=len(config.datasets))


def sources_local(
    *,
    config: PipelineConfig,
    business_date: date,
    run_id: int,
    plans: Mapping[str, ExtractState],
    facts: Mapping[str, dict[str, Any]],
) -> Iterator[tuple[str, SourceExtracted | Exception]]:
    """Every source on a thread of this process, `extract_workers` at a time; the fan-out without a queue."""
    window = config.window(business_date)
    key = pseudonym_key_read(config)
    # Read here: the workers touch no database. Erased customers' rows are staged without their identity.
    erasures = dataset_erasures(config)
    encrypter = pii_encrypter_read(config)
    workers = max(1, min(config.extract_workers, len(config.datasets)))
    stopped = threading.Event()
    # `_stop_on_exit` exits first: on SIGTERM or SIGINT the workers stop at their next batch, before
    # publishing, instead of the pool waiting for every source to finish while the run is recorded failed.
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="extract")
    with pool, _stop_on_exit(stopped):
        # Each worker runs in a copy of this context: its events carry the run, the step and its dataset.
        futures = {
            pool.submit(
                contextvars.copy_context().run,
                _dataset_extract,
                config=config,
                dataset=dataset,
                window=window,
                run_id=run_id,
                pseudonym_key=key,
                encrypter=encrypter,
                erasure=erasures.get(name),
                state=plans[name].state,
                previous_fields=plans[name].previous_fields,
                stopped=stopped,
                facts=facts[name],
            ): name
            for name, dataset in config.datasets.items()
        }
        for future in as_completed(futures):
            try:
                yield futures[future], future.result()
            except Exception as exc:
                yield futures[future], exc


def source_extract_alone(
    *, config: PipelineConfig, dataset: str, business_date: date, run_id: int, facts: dict[str, Any]
) -> dict[str, Any]:
    """One source of run `run_id`, in a process of its own (a task queue's worker, which may be on another
    machine sharing the staging root): read its saved state and keys here, publish its raw partition, and
    return what the run's process records (`source_account_read` reads it back). The run's process holds
    the pipeline's lock meanwhile; when it is gone (its run no longer running, or silent), the source stops
    before publishing."""
    plan = extract_state_lookup(config=config, dataset=dataset, business_date=business_date)
    extracted = _dataset_extract(
        config=config,
        dataset=config.datasets[dataset],
        window=config.window(business_date),
        run_id=run_id,
        pseudonym_key=pseudonym_key_read(config),
        encrypter=pii_encrypter_read(config),
        erasure=dataset_erasures(config).get(dataset),
        state=plan.state,
        previous_fields=plan.previous_fields,
        stopped=_RunGone(run_id=run_id, using=config.database),
        facts=facts,
    )
    return {
        "dataset": dataset,
        "source": extracted.source,
        "state_out": extracted.state_out,
        "fields": extracted.fields,
        "drift": extracted.drift.as_dict(),
        "seconds": extracted.seconds,
        "checksum": extracted.manifest.checksum,
        "facts": facts,
    }


def source_account_read(
    *, config: PipelineConfig, business_date: date, account: Mapping[str, Any]
) -> SourceExtracted:
    """What `source_extract_alone` returned, with its manifest read from the shared staging root; a
    partition that is not there, or not the one the source published, fails naming the staging root."""
    ref = staging.PartitionRef.raw(config.staging_root, config.name, account["dataset"], business_date)
    try:
        manifest = staging.manifest_read(ref)
    except PartitionNotFound as exc:
        raise ConfigurationError(
            f"source {account['dataset']!r}: {exc}; a worker on another machine published it: the staging "
            f"root ({config.staging_root}) must be a filesystem every worker shares (docs/celery.md)"
        ) from None
    if manifest.checksum != account["checksum"]:
        raise SourceError(
            f"source {account['dataset']!r}: the published partition ({manifest.checksum[:12]}) is not "
            f"the one its extract task wrote ({account['checksum'][:12]}): was it extracted twice at once?"
        )
    return SourceExtracted(
        dataset=account["dataset"],
        ref=ref,
        manifest=manifest,
        source=account["source"],
        state_out=account["state_out"],
        fields=account["fields"],
        drift=SchemaDrift(**{k: tuple(v) for k, v in account["drift"].items()}),
        seconds=account["seconds"],
    )


class _RunGone:
    """An extract task's stop signal (an `Event`'s `is_set`): its run is no longer running, or has been
    silent for three heartbeats (its process died). Asks the database at most every few seconds."""

    EVERY_SECONDS = 5.0

    def __init__(self, *, run_id: int, using: str) -> None:
        self.run_id, self.using = run_id, using
        self._asked, self._gone = 0.0, False

    def is_set(self) -> bool:
        now = time.monotonic()
        if self._gone or now - self._asked < self.EVERY_SECONDS:
            return self._gone
        self._asked = now
        run = PipelineRun.objects.using(self.using).filter(pk=self.run_id).first()
        silent = timezone.now() - timedelta(seconds=3 * settings.ETL_HEARTBEAT_SECONDS)
        self._gone = (
            run is None
            or run.status != RunStatus.RUNNING
            or (run.heartbeat_at is not None and run.heartbeat_at < silent)
        )
        return self._gone


def pseudonym_key_read(config: PipelineConfig) -> bytes | None:
    """The key personal columns are staged under; a pipeline with any fails here, before a source is read,
    when it is not set. None when no dataset declares a personal column."""
    personal = {name: sorted(ds.pii) for name, ds in config.datasets.items() if ds.pii}
    if not personal:
        return None
    env = config.spark.pseudonym_key_env
    key = secret_get(env)
    if not key:
        listed = "; ".join(f"{name}: {', '.join(columns)}" for name, columns in personal.items())
        raise ConfigurationError(
            f"pipeline {config.name!r}: environment variable {env} (or {env}_FILE) is not set; personal "
            f"columns ({listed}) are staged as pseudonyms made with it"
        )
    return key.encode("utf-8")


def pii_encrypter_read(config: PipelineConfig) -> MultiFernet | None:
    """The cipher encrypted columns (`pii = "encrypt"`) are staged with; a pipeline with any fails here,
    before a source is read, when its keys' variable is not set or not Fernet keys. None without any."""
    encrypted = {name: sorted(ds.encrypted) for name, ds in config.datasets.items() if ds.encrypted}
    if not encrypted:
        return None
    try:
        return pii_cipher(env=config.spark.pii_keys_env)
    except ConfigurationError as exc:
        listed = "; ".join(f"{name}: {', '.join(columns)}" for name, columns in encrypted.items())
        raise ConfigurationError(
            f"pipeline {config.name!r}: {exc}; encrypted columns ({listed}) are staged with it"
        ) from None


@contextmanager
def _stop_on_exit(stopped: threading.Event) -> Iterator[None]:
    try:
        yield
    finally:
        stopped.set()  # after a normal end every worker is done already


@dataclass
class SourceExtracted:
    dataset: str
    ref: staging.PartitionRef
    manifest: staging.Manifest
    source: str
    state_out: dict[str, Any] | None
    fields: dict[str, str]
    drift: SchemaDrift
    seconds: float


def _dataset_extract(*, dataset: DatasetConfig, **arguments: Any) -> SourceExtracted:
    """One source into its partition; runs in a worker thread and touches no database. `facts` receives
    what the source did (batches, records, HTTP counters) however it ends. Its events name the dataset."""
    with structlog.contextvars.bound_contextvars(dataset=dataset.name):
        return _dataset_extract_bound(dataset=dataset, **arguments)


def _dataset_extract_bound(
    *,
    config: PipelineConfig,
    dataset: DatasetConfig,
    window: ExtractWindow,
    run_id: int,
    pseudonym_key: bytes | None,
    erasure: Erasure | None,
    state: Mapping[str, Any] | None,
    encrypter: Encrypter | None,
    previous_fields: Mapping[str, str] | None,
    stopped: threading.Event | _RunGone,
    facts: dict[str, Any],
) -> SourceExtracted:
    started = time.monotonic()
    connector = None
    facts.update(batches=0, records=0)  # as the source gave them, before `explode`
    bar = progress_bar(desc=f"extract {dataset.name}", unit="batch")
    try:
        connector = build_connector(name=dataset.name, options=dataset.source, state=state)
        source = connector.describe()
        label = f"source {dataset.name!r} ({source})"
        observer = FieldObserver(explode=dataset.explode)
        drift: list[SchemaDrift] = []

        def batches() -> Iterator[Any]:
            for batch in connector.iter_batches(window):
                if stopped.is_set():  # the attempt is removed, nothing is published
                    raise SourceError(f"{label}: extract stopped: the run is ending")
                observer.observe(batch)
                facts["batches"] += 1
                facts["records"] += len(batch)
                bar.update(1)
                bar.set_postfix(records=facts["records"], refresh=False)
                yield to_staging_batch(
                    batch,
                    columns=dataset.columns,
                    explode=dataset.explode,
                    source_label=label,
                    pseudonym_key=pseudonym_key,
                    encrypter=encrypter,
                    erasure=erasure,
                )
            # Raising here, after the last batch, still prevents the partition from being published.
            drift.append(_drift_check(dataset, observer, previous_fields))

        ref = staging.PartitionRef.raw(config.staging_root, config.name, dataset.name, window.business_date)
        manifest = staging.raw_partition_write(
            ref,
            schema=staging_schema(dataset.columns),
            batches=batches(),
            source=source,
            window={"start": window.start.isoformat(), "end": window.end.isoformat()},
            run_id=run_id,
        )
        seconds = round(time.monotonic() - started, 3)
        http = getattr(connector, "http_observer", None)
        log.info(
            "source_finished",
            rows=manifest.row_count,
            batches=facts["batches"],
            requests=http.requests if http is not None else None,
            duration_seconds=seconds,
        )
        return SourceExtracted(
            dataset=dataset.name,
            ref=ref,
            manifest=manifest,
            source=source,
            state_out=connector.next_state,
            fields=observer.fields(),
            drift=drift[0],
            seconds=seconds,
        )
    except BaseException as exc:
        log.error(
            "source_failed", error=error_text(exc), duration_seconds=round(time.monotonic() - started, 3)
        )
        raise
    finally:
        bar.close()
        http = getattr(connector, "http_observer", None)
        if http is not None:
            facts["http"] = http.as_dict()
        close = getattr(connector, "close", None)
        if close is not None:
            close()
        connections.close_all()  # this thread's own connections, if anything opened one


def _drift_check(
    dataset: DatasetConfig, observer: FieldObserver, previous_fields: Mapping[str, str] | None
) -> SchemaDrift:
    if not observer.rows:
        return SchemaDrift()  # nothing delivered says nothing about the fields
    drift = schema_drift(
        observed=observer.fields(),
        columns=dataset.columns,
        null_paths=observer.null_paths,
        previous=previous_fields,
        ignored=dataset.ignore_fields,
    )
    if drift and dataset.drift == "fail":
        raise SchemaDriftError(
            f'source {dataset.name!r}: schema drift (drift = "fail"): {drift.describe()}', drift=drift
        )
    if drift:
        logger.warning("source %r: schema drift: %s", dataset.name, drift.describe())
    return drift


def _partition_record(
    extracted: SourceExtracted, *, run_id: int, state_in: Mapping[str, Any] | None, using: str
) -> StagedPartition:
    """Record the published partition and the state to continue from, in one transaction."""
    manifest = extracted.manifest
    with transaction.atomic(using=using):
        row, _ = StagedPartition.objects.using(using).update_or_create(
            pipeline=manifest.pipeline,
            dataset=extracted.dataset,
            business_date=extracted.ref.business_date,
            defaults={
                "run_id": run_id,
                "row_count": manifest.row_count,
                "checksum": manifest.checksum,
                "manifest": str(extracted.ref.manifest_path),
                "source": extracted.source[:1000],
                "state_in": state_in,
                "state_out": extracted.state_out,
                "source_fields": extracted.fields,
                "drift": extracted.drift.as_dict() if extracted.drift else {},
                "published_at": timezone.now(),
            },
        )
    return row


def _extract_failure(failures: Mapping[str, BaseException], *, total: int) -> BaseException:
    """One failure as it was (it names its source); several as one SourceError naming each."""
    messages = []
    for name, exc in sorted(failures.items()):
        text = error_text(exc)
        messages.append(text if f"source {name!r}" in text else f"source {name!r}: {text}")
    if len(failures) == 1:
        ((name, exc),) = failures.items()
        if isinstance(exc, ETL_ERRORS) and messages[0] == error_text(exc):
            return exc
        error = SourceError(messages[0])
    else:
        error = SourceError(f"{len(failures)} of {total} sources failed: " + " | ".join(messages))
    error.__cause__ = next(iter(failures.values()))
    return error
