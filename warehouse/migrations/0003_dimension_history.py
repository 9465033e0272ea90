# Dimension history (SCD type 2) for stores and products, and the index behind linking a return to an earlier
# date's purchase (docs/loading.md, docs/retail-semantics.md).
#
# Every existing store and product becomes one open, current version; its id stays, so facts keep pointing
# at it. It starts on the earliest date of a fact that references it: from then on the facts prove it
# existed, and a re-load of an earlier date can still add the version before it. A member no fact
# references starts on 1900-01-01, before any business date, so every date finds it as today.

from django.db import migrations, models
import django.db.models.deletion

EARLIEST = "1900-01-01"


def first_fact_date(dimension: str, column: str) -> str:
    """UPDATE setting valid_from to the first date of a fact referencing the row, else EARLIEST."""
    first_keys = " OR ".join(
        f"d.date_key = (SELECT MIN(f.date_key) FROM {fact} f WHERE f.{column} = {dimension}.id)"
        for fact in ("warehouse_factsalesline", "warehouse_factdailysales")
    )
    return (
        f"UPDATE {dimension} SET valid_from = COALESCE("
        f"(SELECT MIN(d.date) FROM warehouse_dimdate d WHERE {first_keys}), '{EARLIEST}')"
    )


def history_fields(model_name: str) -> list:
    return [
        migrations.AddField(
            model_name=model_name,
            name="is_current",
            field=models.BooleanField(
                default=True, help_text="the open-ended version, as of the latest loaded date"
            ),
            preserve_default=False,
        ),
        migrations.AddField(
            model_name=model_name,
            name="valid_from",
            field=models.DateField(help_text="first business date of this version", null=True),
        ),
        migrations.AddField(
            model_name=model_name,
            name="valid_to",
            field=models.DateField(
                blank=True,
                help_text="first business date after this version; empty while current",
                null=True,
            ),
        ),
    ]


def history_constraints(model_name: str, natural_key: str) -> list:
    return [
        migrations.AlterField(
            model_name=model_name,
            name="valid_from",
            field=models.DateField(help_text="first business date of this version"),
        ),
        migrations.AddConstraint(
            model_name=model_name,
            constraint=models.UniqueConstraint(
                fields=(natural_key, "valid_from"), name=f"uniq_{model_name}_version"
            ),
        ),
        migrations.AddConstraint(
            model_name=model_name,
            constraint=models.UniqueConstraint(
                condition=models.Q(("is_current", True)),
                fields=(natural_key,),
                name=f"uniq_{model_name}_current",
            ),
        ),
        migrations.AddConstraint(
            model_name=model_name,
            constraint=models.CheckConstraint(
                condition=models.Q(
                    ("valid_to__isnull", True),
                    ("valid_to__gt", models.F("valid_from")),
                    _connector="OR",
                ),
                name=f"{model_name}_valid_range",
            ),
        ),
    ]


class Migration(migrations.Migration):
    dependencies = [
        ("warehouse", "0002_retail_semantics"),
    ]

    operations = [
        migrations.AlterModelOptions(name="dimproduct", options={"ordering": ["sku", "valid_from"]}),
        migrations.AlterModelOptions(name="dimstore", options={"ordering": ["store_code", "valid_from"]}),
        *history_fields("dimproduct"),
        *history_fields("dimstore"),
        migrations.RunSQL(
            sql=[
                first_fact_date("warehouse_dimproduct", "product_id"),
                first_fact_date("warehouse_dimstore", "store_id"),
            ],
            reverse_sql=migrations.RunSQL.noop,
        ),
        # The natural key alone is no longer unique: one row per version.
        migrations.AlterField(
            model_name="dimproduct",
            name="sku",
            field=models.CharField(help_text="natural key from the product catalogue", max_length=64),
        ),
        migrations.AlterField(
            model_name="dimstore",
            name="store_code",
            field=models.CharField(help_text="natural key from the store master", max_length=50),
        ),
        *history_constraints("dimproduct", "sku"),
        *history_constraints("dimstore", "store_code"),
        # The (customer, stock_code) index replaces the foreign key's own index on customer alone.
        migrations.AlterField(
            model_name="factsalesline",
            name="customer",
            field=models.ForeignKey(
                blank=True,
                db_index=False,
                null=True,
                on_delete=django.db.models.deletion.PROTECT,
                to="warehouse.dimcustomer",
            ),
        ),
        migrations.AddIndex(
            model_name="factsalesline",
            index=models.Index(fields=["customer", "stock_code"], name="sales_line_customer_item"),
        ),
        migrations.AlterField(
            model_name="factsalesline",
            name="original_order_id",
            field=models.CharField(
                blank=True,
                help_text="for a return: the order it returns, when the job or the loader could find it "
                "(docs/retail-semantics.md)",
                max_length=64,
                null=True,
            ),
        ),
    ]
