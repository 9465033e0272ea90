from django.db import migrations, models


class Migration(migrations.Migration):
    """The erasure list's tokens made of the clear value under the erasure key. The entries listed before
    were made of the pseudonym under the pseudonym key: they keep that scheme (and keep matching)."""

    dependencies = [("etlcore", "0005_erasure_list")]

    operations = [
        migrations.AddField(
            model_name="erasedcustomer",
            name="scheme",
            field=models.CharField(
                choices=[("value", "clear value, erasure key"), ("pseudonym", "pseudonym, pseudonym key")],
                default="pseudonym",
                help_text="what the token is made of, and with which key; a pseudonym's dies with the pseudonym key",
                max_length=10,
            ),
        ),
        migrations.AlterField(
            model_name="erasedcustomer",
            name="scheme",
            field=models.CharField(
                choices=[("value", "clear value, erasure key"), ("pseudonym", "pseudonym, pseudonym key")],
                default="value",
                help_text="what the token is made of, and with which key; a pseudonym's dies with the pseudonym key",
                max_length=10,
            ),
        ),
        migrations.AlterField(
            model_name="erasedcustomer",
            name="token",
            field=models.CharField(
                help_text="keyed HMAC: of the clear value, or of the pseudonym", max_length=64
            ),
        ),
    ]
