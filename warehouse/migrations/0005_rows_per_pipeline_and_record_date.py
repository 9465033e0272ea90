# Every warehouse row belongs to the pipeline that loaded it (facts, dimension members and their versions,
# the partitions it loaded), and a sales line keeps which partition supplied its version and that version,
# so that a line seen again in another partition ends as one row holding the newest version
# (docs/loading.md#exactly-once-across-partitions).
#
# Existing rows were loaded one partition per date: a line's partition is its date and its version that
# date (what the loader uses when a dataset has no version column). A fact's pipeline is the one whose load
# of its date succeeded (the first in code-point order if run records disagree); a dimension row's, that
# of the facts pointing at it. Where nothing says, the warehouse's only pipeline when it has one, else
# "unknown".

from datetime import UTC, datetime, time

from django.db import migrations, models

HELP_PIPELINE = "the pipeline that loaded it; only it changes it"


def fill(apps, schema_editor):
    """Pipeline, source date and version of the rows loaded before this migration."""
    alias = schema_editor.connection.alias
    model = lambda name: apps.get_model("warehouse", name)  # noqa: E731
    PipelineRun = apps.get_model("etlcore", "PipelineRun")
    loaded: dict = {}
    for pipeline, day in (
        PipelineRun.objects.using(alias)
        .filter(steps__step="load", steps__status="succeeded", business_date__isnull=False)
        .values_list("pipeline", "business_date")
        .order_by("pipeline")
    ):
        loaded.setdefault(day, pipeline)
    pipelines = set(loaded.values())
    fallback = next(iter(pipelines)) if len(pipelines) == 1 else "unknown"

    dates = dict(model("DimDate").objects.using(alias).values_list("date_key", "date"))
    for key, day in dates.items():
        pipeline = loaded.get(day, fallback)
        midnight = datetime.combine(day, time.min, tzinfo=UTC)
        model("FactSalesLine").objects.using(alias).filter(date_id=key).update(
            pipeline=pipeline, source_date=day, source_version=int(midnight.timestamp()) * 1_000_000
        )
        model("FactDailySales").objects.using(alias).filter(date_id=key).update(pipeline=pipeline)

    lines = model("FactSalesLine").objects.using(alias)
    for name, field in (("DimStore", "store"), ("DimProduct", "product"), ("DimCustomer", "customer")):
        rows = model(name).objects.using(alias)
        for pipeline in sorted(set(lines.values_list("pipeline", flat=True)), reverse=True):
            ids = lines.filter(pipeline=pipeline).values(f"{field}_id")
            rows.filter(pk__in=ids).update(pipeline=pipeline)
        rows.filter(pipeline="").update(pipeline=fallback)

    partitions = set(lines.values_list("pipeline", "source_date").distinct())
    partitions |= {(pipeline, day) for day, pipeline in loaded.items()}
    model("LoadedPartition").objects.using(alias).bulk_create(
        [
            model("LoadedPartition")(pipeline=pipeline, date=day)
            for pipeline, day in sorted(partitions)
        ]
    )


def _pipeline_field(**kwargs):
    return models.CharField(max_length=100, help_text=HELP_PIPELINE, **kwargs)


class Migration(migrations.Migration):

    dependencies = [
        ('etlcore', '0002_staged_partition'),
        ('warehouse', '0004_return_links_follow_purchases'),
    ]

    operations = [
        migrations.RemoveConstraint(model_name='factsalesline', name='uniq_sales_line_natural_key'),
        migrations.RemoveConstraint(model_name='factdailysales', name='uniq_daily_sales_grain'),
        migrations.RemoveConstraint(model_name='dimstore', name='uniq_dimstore_version'),
        migrations.RemoveConstraint(model_name='dimstore', name='uniq_dimstore_current'),
        migrations.RemoveConstraint(model_name='dimproduct', name='uniq_dimproduct_version'),
        migrations.RemoveConstraint(model_name='dimproduct', name='uniq_dimproduct_current'),
        migrations.RemoveIndex(model_name='factsalesline', name='warehouse_f_date_ke_193d73_idx'),
        migrations.AlterField(
            model_name='dimcustomer',
            name='customer_key',
            field=models.CharField(help_text='HMAC-SHA256 pseudonym of the e-mail; no e-mail or name is stored', max_length=64),
        ),
        *(
            migrations.AddField(model_name=name, name='pipeline', field=_pipeline_field(default=''), preserve_default=False)
            for name in ('factsalesline', 'factdailysales', 'dimstore', 'dimproduct', 'dimcustomer')
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
        migrations.AddField(
            model_name='dimcustomer',
            name='country_seen_at',
            field=models.DateTimeField(blank=True, help_text='time of the latest order giving the country: a load keeps the latest, whatever the order partitions load in', null=True),
        ),
        migrations.CreateModel(
            name='LoadedPartition',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('pipeline', _pipeline_field()),
                ('date', models.DateField()),
            ],
            options={
                'ordering': ['pipeline', 'date'],
                'abstract': False,
                'constraints': [models.UniqueConstraint(fields=('pipeline', 'date'), name='uniq_loaded_partition')],
            },
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
        migrations.AlterModelOptions(name='dimstore', options={'ordering': ['pipeline', 'store_code', 'valid_from']}),
        migrations.AlterModelOptions(name='dimproduct', options={'ordering': ['pipeline', 'sku', 'valid_from']}),
        migrations.AlterModelOptions(name='dimcustomer', options={'ordering': ['pipeline', 'customer_key']}),
        migrations.AddConstraint(
            model_name='factsalesline',
            constraint=models.UniqueConstraint(fields=('pipeline', 'order_id', 'line_number'), name='uniq_sales_line_natural_key'),
        ),
        migrations.AddConstraint(
            model_name='factdailysales',
            constraint=models.UniqueConstraint(fields=('pipeline', 'date', 'store', 'product'), name='uniq_daily_sales_grain'),
        ),
        migrations.AddConstraint(
            model_name='dimstore',
            constraint=models.UniqueConstraint(fields=('pipeline', 'store_code', 'valid_from'), name='uniq_dimstore_version'),
        ),
        migrations.AddConstraint(
            model_name='dimstore',
            constraint=models.UniqueConstraint(condition=models.Q(('is_current', True)), fields=('pipeline', 'store_code'), name='uniq_dimstore_current'),
        ),
        migrations.AddConstraint(
            model_name='dimproduct',
            constraint=models.UniqueConstraint(fields=('pipeline', 'sku', 'valid_from'), name='uniq_dimproduct_version'),
        ),
        migrations.AddConstraint(
            model_name='dimproduct',
            constraint=models.UniqueConstraint(condition=models.Q(('is_current', True)), fields=('pipeline', 'sku'), name='uniq_dimproduct_current'),
        ),
        migrations.AddConstraint(
            model_name='dimcustomer',
            constraint=models.UniqueConstraint(fields=('pipeline', 'customer_key'), name='uniq_dimcustomer_member'),
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
