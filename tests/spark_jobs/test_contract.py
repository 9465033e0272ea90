"""The job's declared outputs (spark_jobs/contract.py) are what the loader reads (warehouse/loading/specs.py),
column for column and type for type, the types read from the warehouse models."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.db import models

from spark_jobs import contract
from spark_jobs.sales_daily import OUTPUT_SCHEMAS
from warehouse.loading.specs import DIMENSIONS, FACTS, QUARANTINE_OUTPUT, staged_fields

# The Spark type of the job's column that fills a model field (the Parquet value the loader copies).
SPARK_TYPES = {
    "CharField": "string",
    "TextField": "string",
    "IntegerField": "int",
    "BigIntegerField": "bigint",
    "BooleanField": "boolean",
    "DateField": "date",
    "DateTimeField": "timestamp",
}


def spark_type_of(field: models.Field) -> str:
    if isinstance(field, models.DecimalField):
        return f"decimal({field.max_digits},{field.decimal_places})"
    return SPARK_TYPES[field.get_internal_type()]


def test_the_sales_job_writes_every_output_the_loader_reads_and_no_other():
    loaded = {d.output for d in DIMENSIONS} | {f.output for f in FACTS} | {QUARANTINE_OUTPUT}

    assert set(contract.SALES_DAILY.names) == loaded == set(staged_fields())


@pytest.mark.parametrize("output", contract.SALES_DAILY.outputs, ids=lambda o: o.name)
def test_each_output_has_the_columns_and_types_of_the_warehouse_models(output):
    expected = {column: spark_type_of(field) for column, field in staged_fields()[output.name].items()}

    assert dict(output.columns) == expected
    # The job writes the declaration: its Spark schema and the Parquet (Arrow) schema the loader opens.
    assert [(f.name, f.dataType.simpleString()) for f in OUTPUT_SCHEMAS[output.name]] == list(output.columns)
    assert contract.arrow_schema(output).names == list(output.column_names)


def test_the_manifest_counts_the_primary_output_and_outputs_count_the_rows_of_real_inputs():
    sales = contract.SALES_DAILY

    assert sales.primary == "sales_lines"
    assert {o.name: o.rows_of for o in sales.outputs if o.rows_of} == {
        "sales_lines": "order_lines",
        "products": "products",
        "stores": "stores",
    }
    assert contract.job_contract("spark_jobs.sales_daily") is sales
    with pytest.raises(KeyError, match="no output contract"):
        contract.job_contract("spark_jobs.nope")


def test_an_undeclared_type_or_primary_is_refused():
    with pytest.raises(ValueError, match="unsupported output type"):
        contract.spark_type("varchar(3)")
    with pytest.raises(ValueError, match="primary output"):
        contract.JobContract("j", (contract.QUARANTINE,), primary="lines")


@pytest.mark.parametrize("output", contract.SALES_DAILY.outputs, ids=lambda o: o.name)
def test_docs_architecture_lists_every_declared_column_with_its_type(output):
    docs = (Path(__file__).resolve().parents[2] / "docs" / "architecture.md").read_text(encoding="utf-8")
    row = next((line for line in docs.splitlines() if line.startswith(f"| `{output.name}` |")), "")

    missing = [f"{name} {kind}" for name, kind in output.columns if f"{name} {kind}" not in row]
    assert not missing, f"docs/architecture.md does not list {output.name}: {missing}"


@pytest.mark.parametrize("job", sorted(contract.CONTRACTS))
def test_every_option_an_input_depends_on_is_a_declared_option_of_the_right_shape(job):
    """The inputs' option references name the job's declared options, so the preflight and the job read
    the same [spark.options] the pipeline file is checked against."""
    declared = contract.CONTRACTS[job]
    options = {o.name: o for o in declared.options}
    for spec in declared.inputs:
        for column, (option, _value) in spec.optional_when.items():
            assert column in spec.columns and options[option].shape == "text"
        for option, _default in spec.column_options:
            assert options[option].shape == "text"
        if spec.derived_by:
            assert "derive_from" in options[spec.derived_by].keys
    for extra in declared.dataset_options:
        assert extra.key in options[extra.option].keys and options[extra.option].shape == "table"
