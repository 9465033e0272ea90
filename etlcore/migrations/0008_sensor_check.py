from django.db import migrations, models


class Migration(migrations.Migration):
    """The sensor's checks (etlcore/services/trigger.py): what it saw of a pipeline's sources, what it did."""

    dependencies = [
        ('etlcore', '0007_run_origin'),
    ]

    operations = [
        migrations.CreateModel(
            name='SensorCheck',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('pipeline', models.CharField(max_length=100)),
                ('business_date', models.DateField()),
                ('checked_at', models.DateTimeField()),
                ('outcome', models.CharField(choices=[('enqueued', 'enqueued'), ('unchanged', 'unchanged'), ('busy', 'busy'), ('error', 'error'), ('disabled', 'disabled')], max_length=20)),
                ('fingerprint', models.CharField(blank=True, help_text="digest of the sources' fingerprints: the data as seen", max_length=40)),
                ('sources', models.JSONField(blank=True, default=dict, help_text='per source: its fingerprint, newer (true, false, null: unknown)')),
                ('task_id', models.CharField(blank=True, help_text='the run task enqueued', max_length=255)),
                ('reason', models.TextField(blank=True, help_text='why this outcome (the busy run, the enqueue it repeats)')),
                ('error', models.TextField(blank=True, help_text='the sources whose probe failed, and why')),
            ],
            options={
                'ordering': ['-checked_at', '-id'],
                'indexes': [models.Index(fields=['pipeline', '-checked_at'], name='etlcore_sen_pipelin_67da98_idx')],
            },
        ),
    ]
