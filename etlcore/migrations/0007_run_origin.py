from django.db import migrations, models


class Migration(migrations.Migration):
    """What started a run and as whom (runs recorded before say `command`, no one), and the permission of
    the admin's actions that start runs."""

    dependencies = [
        ('etlcore', '0006_erasure_key'),
    ]

    operations = [
        migrations.AlterModelOptions(
            name='pipelinerun',
            options={'ordering': ['-started_at', '-id'], 'permissions': [('operate_pipelines', 'Can start runs from the admin (re-run, replay, resume)')]},
        ),
        migrations.AddField(
            model_name='pipelinerun',
            name='origin',
            field=models.CharField(choices=[('cron', 'cron'), ('command', 'command'), ('admin', 'admin'), ('queue', 'queue')], default='command', help_text='what started it: cron, an interactive command, the admin, the task queue', max_length=10),
        ),
        migrations.AddField(
            model_name='pipelinerun',
            name='started_by',
            field=models.CharField(blank=True, help_text='the admin user for an admin action, else the OS user', max_length=150),
        ),
    ]
