from django.apps import AppConfig


class EtlcoreConfig(AppConfig):
    name = "etlcore"
    verbose_name = "ETL runs"
    default_auto_field = "django.db.models.BigAutoField"
