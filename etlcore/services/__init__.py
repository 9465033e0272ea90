"""The pipeline's service functions. Commands, cron, tests and a task queue are thin interfaces over them.

One module per concern; each step finds its input from (pipeline, business date) alone:

  pipeline.py   pipeline_execute: a run record, then the steps in order
  control.py    pipeline_controlled, run_tracked: the pipeline's lock, its run record, signals
  extract.py    sources_extract       source -> raw/<dataset>/date=D   (one partition per dataset)
  transform.py  partition_transform   raw/*/date=D -> transformed/date=D (spark-submit)
                partitions_transform  the same for several dates in one Spark application
  load.py       warehouse_load        transformed/date=D -> warehouse tables (one transaction)
  replay.py     quarantine_replay     quarantined rows through the current rules again
  validate.py   pipeline_validate     parse + preflight + what a run would do; reads and writes nothing
  plan.py       pipeline_plan         `--dry-run`: one run's plan over some dates; reads only, locks nothing
  forget.py     customer_forget       GDPR erasure: a customer out of warehouse, quarantine and staging
  rotate.py     pii_keys_rotate       Fernet tokens under the newest key, pseudonyms re-keyed everywhere

A step function takes ``(config, business_date, outcome)`` and reports only through the `StepOutcome`
(etlcore/runs.py). Reads that several of them share live in etlcore/selectors.py.
"""
