"""The erasure list as the pipeline applies it: which staged columns identify a customer, and the tokens of
the customers erased from a pipeline (`etlcore.models.ErasedCustomer`). Extraction and forget_customer
share them, so what forget_customer removes from staging is what extraction keeps out of it."""

from __future__ import annotations

from connectors.records import Erasure
from connectors.secrets import secret_get
from spark_jobs.contract import job_contract

from .config import PipelineConfig
from .errors import ConfigurationError
from .models import ErasedCustomer


def customer_key_columns(config: PipelineConfig) -> dict[str, tuple[str, ...]]:
    """Per dataset, the declared columns the job derives the customer key from (the job contract's column
    options, e.g. customer_key_from), personal or staged in clear (online_retail.toml stages the customer
    id in clear and the job pseudonymises it)."""
    try:
        inputs = job_contract(config.spark.job).inputs
    except KeyError:
        return {}
    found: dict[str, tuple[str, ...]] = {}
    for spec in inputs:
        dataset = config.datasets.get(spec.name)
        if dataset is None:
            continue
        declared = {c.name for c in dataset.columns}
        for option, default in spec.column_options:
            column = str(config.spark.options.get(option, default))
            if column in declared and column not in found.get(spec.name, ()):
                found[spec.name] = (*found.get(spec.name, ()), column)
    return found


def identity_columns(config: PipelineConfig) -> dict[str, tuple[str, ...]]:
    """Per dataset, the staged columns that identify a customer: its personal columns (`pii`, pseudonymised
    or encrypted: a token matches no pseudonym, but is nulled with the rest) and those the customer key is
    derived from (`customer_key_columns`)."""
    columns = {name: sorted(ds.pii | ds.encrypted) for name, ds in config.datasets.items()}
    for name, keyed in customer_key_columns(config).items():
        columns[name] += [c for c in keyed if c not in columns[name]]
    return {name: tuple(cols) for name, cols in columns.items() if cols}


def pseudonym_key_required(config: PipelineConfig) -> bytes:
    """The pipeline's pseudonym key: pseudonyms and erasure-list tokens are made with it."""
    env = config.spark.pseudonym_key_env
    key = secret_get(env)
    if not key:
        raise ConfigurationError(
            f"pipeline {config.name!r}: environment variable {env} (or {env}_FILE) is not set; customer "
            "pseudonyms and the erasure list are made with it"
        )
    return key.encode("utf-8")


def erasure_tokens(config: PipelineConfig) -> frozenset[str]:
    return frozenset(
        ErasedCustomer.objects.using(config.database)
        .filter(pipeline=config.name)
        .values_list("token", flat=True)
    )


def dataset_erasures(config: PipelineConfig) -> dict[str, Erasure]:
    """What extraction applies per dataset; empty while nobody is on the pipeline's list."""
    tokens = erasure_tokens(config)
    if not tokens:
        return {}
    return {name: Erasure(tokens, columns) for name, columns in identity_columns(config).items()}
