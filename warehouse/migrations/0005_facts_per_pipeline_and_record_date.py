# Facts belong to the pipeline that loaded them, and a sales line keeps which partition supplied its version
# and that version, so that a line seen again in another partition ends as one row holding the newest
# version (docs/loading.md#exactly-once-across-partitions).
#
# Existing rows were loaded one partition per date: their partition is their date, their version that
# date (what the loader uses when a dataset has no version column), and their pipeline the one whose load
# of that date last succeeded (the first pipeline name in code-point order if run records disagree, and
# "unknown" where no run record names one).

from django.db import migrations, models

def fill(apps, schema_editor):
    """Pipeline, source date and version of the rows loaded before this migration."""
    connection = schema_editor.connection
    DimDate = apps.get_model("warehouse", "DimDate")
    dates = dict(DimDate.objects.using(connection.alias).values_list("date_key", "date"))
    if not dates:
        return
    PipelineRun = apps.get_model("etlcore", "PipelineRun")
    loaded: dict = {}
    for pipeline, day in (
        PipelineRun.objects.using(connection.alias)
        .filter(steps__step="load", steps__status="succeeded", business_date__isnull=False)
        .values_list("pipeline", "business_date")
        .order_by("pipeline")
    ):
        loaded.setdefault(day, pipeline)
    from datetime import UTC, datetime, time

    for name in ("FactSalesLine", "FactDailySales"):
        model = apps.get_model("warehouse", name)
        for key, day in dates.items():
            rows = model.objects.using(connection.alias).filter(date_id=key)
            values = {"pipeline": loaded.get(day, "unknown")}
            if name == "FactSalesLine":
                midnight = datetime.combine(day, time.min, tzinfo=UTC)
                values |= {"source_date": day, "source_version": int(midnight.timestamp()) * 1_000_000}
            rows.update(**values)


class Migration(migrations.Migration):

    dependencies = [
        ('etlcore', '0002_staged_partition'),
        ('warehouse', '0004_return_links_follow_purchases'),
    ]

    operations = [
        migrations.RemoveConstraint(model_name='factsalesline', name='uniq_sales_line_natural_key'),
        migrations.RemoveConstraint(model_name='factdailysales', name='uniq_daily_sales_grain'),
        migrations.RemoveIndex(model_name='factsalesline', name='warehouse_f_date_ke_193d73_idx'),
        migrations.AddField(
            model_name='factsalesline',
            name='pipeline',
            field=models.CharField(default='unknown', help_text='the pipeline that loaded the line; only it changes it', max_length=100),
            preserve_default=False,
        ),
        migrations.AddField(
            model_name='factdailysales',
            name='pipeline',
            field=models.CharField(default='unknown', max_length=100),
            preserve_default=False,
        ),
        migrations.AddField(
            model_name='factsalesline',
            name='source_date',
            field=models.DateField(null=True, help_text='the extraction partition whose version of the line this is'),
        ),
        migrations.AddField(
            model_name='factsalesline',
            name='source_version',
            field=models.BigIntegerField(null=True, help_text="the record's version (version_column as microseconds or an integer; without one, the partition date): the greatest wins, and on a tie the earliest partition"),
        ),
        migrations.RunPython(fill, migrations.RunPython.noop),
        migrations.AlterField(
            model_name='factsalesline',
            name='source_date',
            field=models.DateField(help_text='the extraction partition whose version of the line this is'),
        ),
        migrations.AlterField(
            model_name='factsalesline',
            name='source_version',
            field=models.BigIntegerField(help_text="the record's version (version_column as microseconds or an integer; without one, the partition date): the greatest wins, and on a tie the earliest partition"),
        ),
        migrations.AddConstraint(
            model_name='factsalesline',
            constraint=models.UniqueConstraint(fields=('pipeline', 'order_id', 'line_number'), name='uniq_sales_line_natural_key'),
        ),
        migrations.AddConstraint(
            model_name='factdailysales',
            constraint=models.UniqueConstraint(fields=('pipeline', 'date', 'store', 'product'), name='uniq_daily_sales_grain'),
        ),
        migrations.AddIndex(
            model_name='factsalesline',
            index=models.Index(fields=['pipeline', 'date'], name='sales_line_pipeline_date'),
        ),
        migrations.AddIndex(
            model_name='factsalesline',
            index=models.Index(fields=['pipeline', 'source_date'], name='sales_line_pipeline_source'),
        ),
    ]
