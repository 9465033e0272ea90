# Retail semantics (docs/retail-semantics.md): non-product lines, returns linked to their order, amounts in
# the reporting currency. Existing lines are products in the reporting currency: their new columns are
# filled from what they already hold, then made NOT NULL.

from django.db import migrations, models
import django.db.models.deletion


class Migration(migrations.Migration):
    dependencies = [
        ("warehouse", "0001_initial"),
    ]

    operations = [
        migrations.AlterField(
            model_name="factsalesline",
            name="product",
            field=models.ForeignKey(
                blank=True,
                help_text="NULL for a line that is not a product (postage, fee, discount...): see line_type",
                null=True,
                on_delete=django.db.models.deletion.PROTECT,
                to="warehouse.dimproduct",
            ),
        ),
        migrations.AlterField(
            model_name="factsalesline",
            name="amount",
            field=models.DecimalField(
                decimal_places=2,
                help_text="quantity x unit price in the line's currency, rounded half-up to the cent",
                max_digits=18,
            ),
        ),
        migrations.AddField(
            model_name="factsalesline",
            name="stock_code",
            field=models.CharField(
                help_text="the item code as the source gave it (sku, POST...)", max_length=64, null=True
            ),
        ),
        migrations.AddField(
            model_name="factsalesline",
            name="line_type",
            field=models.CharField(
                default="product",
                help_text="product, or the configured class of a non-product line",
                max_length=30,
            ),
        ),
        migrations.AddField(
            model_name="factsalesline",
            name="amount_reporting",
            field=models.DecimalField(
                decimal_places=2,
                help_text="amount in the reporting currency (rate of the date), rounded half-up to the cent",
                max_digits=18,
                null=True,
            ),
        ),
        migrations.AddField(
            model_name="factsalesline",
            name="original_order_id",
            field=models.CharField(
                blank=True,
                help_text="for a return: the order it returns, when the job could find it "
                "(docs/retail-semantics.md)",
                max_length=64,
                null=True,
            ),
        ),
        migrations.RunSQL(
            sql=[
                "UPDATE warehouse_factsalesline SET amount_reporting = amount",
                "UPDATE warehouse_factsalesline SET stock_code = "
                "(SELECT p.sku FROM warehouse_dimproduct p WHERE p.id = warehouse_factsalesline.product_id)",
            ],
            reverse_sql=migrations.RunSQL.noop,
        ),
        migrations.AlterField(
            model_name="factsalesline",
            name="stock_code",
            field=models.CharField(help_text="the item code as the source gave it (sku, POST...)", max_length=64),
        ),
        migrations.AlterField(
            model_name="factsalesline",
            name="amount_reporting",
            field=models.DecimalField(
                decimal_places=2,
                help_text="amount in the reporting currency (rate of the date), rounded half-up to the cent",
                max_digits=18,
            ),
        ),
    ]
