"""The warehouse's limits on each transform output, as the Spark job receives them: read from the models."""

from __future__ import annotations

import pytest
from django.db import models

from warehouse.loading.specs import (
    DIMENSIONS,
    FACTS,
    INTEGER_RANGES,
    QUARANTINE_COLUMNS,
    QUARANTINE_OUTPUT,
    output_constraints,
)
from warehouse.models import DimProduct, FactSalesLine, QuarantinedRow


def staged_fields() -> dict[str, dict[str, models.Field]]:
    """Output -> staged column -> the model field the loaders put it in (a fact's dimension reference is
    the dimension's natural key), as the loaders resolve them."""
    fields: dict[str, dict[str, models.Field]] = {}
    for dim in DIMENSIONS:
        fields[dim.output] = {c: dim.model._meta.get_field(c) for c in dim.columns}
    for fact in FACTS:
        fields[fact.output] = {a: fact.model._meta.get_field(a) for a in fact.attributes} | {
            r.column: r.dimension(fact.model)._meta.get_field(r.column) for r in fact.references
        }
    fields[QUARANTINE_OUTPUT] = {c: QuarantinedRow._meta.get_field(c) for c in QUARANTINE_COLUMNS}
    return fields


def test_every_column_an_output_fills_gets_the_limit_of_its_field_type():
    constraints = output_constraints()
    fields = staged_fields()

    assert {o: set(c) for o, c in constraints.items()} == {o: set(f) for o, f in fields.items()}
    for output, columns in fields.items():
        for name, field in columns.items():
            limit = constraints[output][name]
            where = f"{output}.{name}"
            assert limit["column"] == f"{field.model._meta.model_name}.{field.column}", where
            if isinstance(field, models.DecimalField):
                assert (limit["max_digits"], limit["decimal_places"]) == (
                    field.max_digits,
                    field.decimal_places,
                ), where
            elif isinstance(field, models.CharField):
                assert limit["max_length"] == field.max_length, where
            elif field.get_internal_type() in INTEGER_RANGES:
                assert (limit["min"], limit["max"]) == INTEGER_RANGES[field.get_internal_type()], where
            else:
                # Dates, times, booleans and unbounded text: nothing but NULL to refuse.
                assert isinstance(field, models.DateField | models.BooleanField | models.TextField), (
                    f"{where}: {type(field).__name__} has no limit in output_constraints"
                )
                assert set(limit) == {"column", "nullable"}, where


def test_nullability_follows_the_field_and_a_reference_follows_its_foreign_key():
    constraints = output_constraints()

    assert constraints["products"]["name"]["nullable"] is DimProduct._meta.get_field("name").null is False
    assert constraints["products"]["category"]["nullable"] is True
    # The sku of a sales line is null for postage: the foreign key allows it, not DimProduct.sku.
    assert constraints["sales_lines"]["sku"]["nullable"] is FactSalesLine._meta.get_field("product").null
    assert constraints["sales_lines"]["sku"]["max_length"] == DimProduct._meta.get_field("sku").max_length
    assert constraints["sales_lines"]["store_code"]["nullable"] is False


@pytest.mark.parametrize(
    ("model", "name", "attr", "value", "output", "key"),
    [
        (DimProduct, "name", "max_length", 12, "products", "max_length"),
        (FactSalesLine, "unit_price", "max_digits", 9, "sales_lines", "max_digits"),
        (FactSalesLine, "order_id", "null", True, "sales_lines", "nullable"),
    ],
)
def test_a_changed_model_field_changes_its_constraint(monkeypatch, model, name, attr, value, output, key):
    field = model._meta.get_field(name)
    assert getattr(field, attr) != value
    monkeypatch.setattr(field, attr, value)

    assert output_constraints()[output][name][key] == value


def test_an_integer_fields_range_follows_its_class(monkeypatch):
    field = FactSalesLine._meta.get_field("quantity")
    monkeypatch.setattr(field, "get_internal_type", lambda: "SmallIntegerField")

    limit = output_constraints()["sales_lines"]["quantity"]

    assert (limit["min"], limit["max"]) == (-32768, 32767)
