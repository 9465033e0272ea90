# Returns linked by the loader to an earlier date's purchase are marked, so that a later load of that date
# can revisit them (docs/retail-semantics.md#returns-and-cancellations).
#
# Existing links did not record who made them. A link to a purchase on an earlier date by the same
# customer of the same item is what the loader makes (the job links within one date only), so those are
# marked; the job's stay unmarked. A source's declared link of that same shape cannot be told apart and is
# marked too: a later load of the purchase's date may then re-link it by the loader's rule.

from django.db import migrations, models

MARK_EXISTING = """
UPDATE warehouse_factsalesline SET linked_by_loader = TRUE
WHERE is_return AND original_order_id IS NOT NULL AND EXISTS (
    SELECT 1 FROM warehouse_factsalesline p
    WHERE p.order_id = warehouse_factsalesline.original_order_id
      AND NOT p.is_return
      AND p.customer_id = warehouse_factsalesline.customer_id
      AND p.stock_code = warehouse_factsalesline.stock_code
      AND p.date_key < warehouse_factsalesline.date_key
)
"""


class Migration(migrations.Migration):

    dependencies = [
        ('warehouse', '0003_dimension_history'),
    ]

    operations = [
        migrations.AddField(
            model_name='factsalesline',
            name='linked_by_loader',
            field=models.BooleanField(default=False, help_text="original_order_id was found by the loader in an earlier date's purchases; it follows later loads of those dates"),
        ),
        migrations.RunSQL(sql=MARK_EXISTING, reverse_sql=migrations.RunSQL.noop),
    ]
