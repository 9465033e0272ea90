from django.apps import AppConfig


class WarehouseConfig(AppConfig):
    name = "warehouse"
    verbose_name = "Sales warehouse"
    default_auto_field = "django.db.models.BigAutoField"
