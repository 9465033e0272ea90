"""The load step: a date's transformed partition into the warehouse, in one transaction."""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import asdict
from datetime import date

from django.db import connections

from warehouse.loaders import partition_load
from warehouse.loading.postgres import copy_rows_observed

from .. import staging
from ..config import PipelineConfig
from ..logs import progress_bar
from ..runs import StepOutcome


def warehouse_load(*, config: PipelineConfig, business_date: date, outcome: StepOutcome) -> None:
    """Load the date's transformed partition into the warehouse in one transaction."""
    ref = staging.PartitionRef.transformed(config.staging_root, config.name, business_date)
    with staging.partitions_reading([ref]):  # a transform re-publishing the date keeps these files
        manifest = staging.manifest_read(ref)
        outputs = {name: [ref.dir / f for f in out["files"]] for name, out in manifest.outputs.items()}
        outcome.rows_in = sum(out["rows"] for out in manifest.outputs.values())
        outcome.details |= {"partition": str(ref.dir), "checksum": manifest.checksum}
        with ExitStack() as stack:
            if connections[config.database].vendor == "postgresql":  # the COPY path; bulk_create has none
                bar = stack.enter_context(progress_bar(desc="load COPY", unit="row", total=outcome.rows_in))
                stack.enter_context(copy_rows_observed(bar.update))
            result = partition_load(
                outputs=outputs,
                pipeline=config.name,
                business_date=business_date,
                run_id=outcome.run_id,
                using=config.database,
                key_fingerprint=manifest.key_fingerprint,
            )
    outcome.rows_out = result.fact_rows
    outcome.rows_rejected = result.rows_loaded.get("quarantine", 0)
    outcome.details |= {
        "loaded": result.rows_loaded,
        "deleted_stale": result.rows_deleted,
        # Reconciliation across partitions: which staged lines were new, which replaced a version another
        # partition supplied (per business date), which the warehouse holds newer; dates recomputed.
        "lines": {output: asdict(load) for output, load in result.facts.items()},
    }
