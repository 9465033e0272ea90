from django.apps import AppConfig
from django.db.backends.signals import connection_created


class EtlcoreConfig(AppConfig):
    name = "etlcore"
    verbose_name = "ETL runs"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from .database import sqlite_files_private
        from .logs import structlog_configure

        structlog_configure()

        connection_created.connect(sqlite_files_private, dispatch_uid="etlcore.sqlite_files_private")
