"""The erasure list as the pipeline applies it: which staged columns identify a customer, the tokens of the
customers erased from a pipeline (`etlcore.models.ErasedCustomer`) and the keys they are made with.
Extraction and forget_customer share them, so what forget_customer removes from staging is what extraction
keeps out of it."""

from __future__ import annotations

import hashlib
import hmac

from connectors.records import Erasure, pseudonym
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
    or encrypted) and those the customer key is derived from (`customer_key_columns`)."""
    columns = {name: sorted(ds.pii | ds.encrypted) for name, ds in config.datasets.items()}
    for name, keyed in customer_key_columns(config).items():
        columns[name] += [c for c in keyed if c not in columns[name]]
    return {name: tuple(cols) for name, cols in columns.items() if cols}


def customer_keys(key: bytes, text: str | None, *, job_form: bool = False) -> list[str]:
    """The customer keys a clear value becomes under `key`: extraction's `pseudonym` and, with `job_form`
    (a column staged in clear, that the job pseudonymises itself), the job's (lower(trim), spaces only)."""
    found = [hexed] if (hexed := pseudonym(key, text)) is not None else []
    if job_form and text is not None and text.strip(" "):
        found.append(hmac.digest(key, text.strip(" ").lower().encode("utf-8"), hashlib.sha256).hex())
    return found


def pseudonym_key_required(config: PipelineConfig) -> bytes:
    """The pipeline's pseudonym key: customer pseudonyms, and the erasure list's older tokens, are made with
    it."""
    return _key_required(config.spark.pseudonym_key_env, config, "customer pseudonyms are made with it")


def erasure_key_required(config: PipelineConfig) -> bytes:
    """The pipeline's erasure key: the erasure list's tokens are made with it (`erasure_token`)."""
    return _key_required(config.spark.erasure_key_env, config, "the erasure list's tokens are made with it")


def _key_required(env: str, config: PipelineConfig, use: str) -> bytes:
    key = secret_get(env)
    if not key:
        raise ConfigurationError(
            f"pipeline {config.name!r}: environment variable {env} (or {env}_FILE) is not set; {use}"
        )
    return key.encode("utf-8")


def dataset_erasures(config: PipelineConfig) -> dict[str, Erasure]:
    """What extraction applies per dataset, with the keys its tokens need (a missing one fails here, before
    a source is read); empty while nobody is on the pipeline's list."""
    listed = ErasedCustomer.objects.using(config.database).filter(pipeline=config.name)
    tokens = {scheme: set() for scheme in ErasedCustomer.Scheme.values}
    for scheme, token in listed.values_list("scheme", "token"):
        tokens[scheme].add(token)
    value_tokens = frozenset(tokens[ErasedCustomer.Scheme.VALUE])
    pseudonym_tokens = frozenset(tokens[ErasedCustomer.Scheme.PSEUDONYM])
    if not value_tokens and not pseudonym_tokens:
        return {}
    keys = {
        "tokens": value_tokens,
        "key": erasure_key_required(config) if value_tokens else None,
        "pseudonym_tokens": pseudonym_tokens,
        "pseudonym_key": pseudonym_key_required(config) if pseudonym_tokens else None,
    }
    return {name: Erasure(columns, **keys) for name, columns in identity_columns(config).items()}
