from django.contrib import admin

from . import models


class ReadOnlyAdmin(admin.ModelAdmin):
    """The warehouse is written by the loaders only; the admin is for looking."""

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@admin.register(models.DimDate)
class DimDateAdmin(ReadOnlyAdmin):
    list_display = ("date_key", "date", "year", "month", "day_of_week", "is_weekend")


@admin.register(models.DimStore)
class DimStoreAdmin(ReadOnlyAdmin):
    list_display = (
        "pipeline",
        "store_code",
        "name",
        "city",
        "region",
        "country",
        "valid_from",
        "valid_to",
        "is_current",
    )
    list_filter = ("pipeline", "is_current")
    search_fields = ("store_code", "name")


@admin.register(models.DimProduct)
class DimProductAdmin(ReadOnlyAdmin):
    list_display = (
        "pipeline",
        "sku",
        "name",
        "category",
        "list_price",
        "valid_from",
        "valid_to",
        "is_current",
    )
    list_filter = ("pipeline", "is_current")
    search_fields = ("sku", "name")


@admin.register(models.DimCustomer)
class DimCustomerAdmin(ReadOnlyAdmin):
    list_display = ("pipeline", "customer_key", "country")
    list_filter = ("pipeline",)


@admin.register(models.FactSalesLine)
class FactSalesLineAdmin(ReadOnlyAdmin):
    list_display = (
        "pipeline",
        "order_id",
        "line_number",
        "date",
        "store",
        "stock_code",
        "line_type",
        "quantity",
        "amount",
        "currency",
        "amount_reporting",
        "is_return",
        "original_order_id",
        "source_date",
        "source_version",
    )
    list_filter = ("pipeline", "date", "source_date", "line_type", "is_return", "currency")
    search_fields = ("order_id", "stock_code", "original_order_id")
    list_select_related = ("date", "store", "product")


@admin.register(models.FactDailySales)
class FactDailySalesAdmin(ReadOnlyAdmin):
    list_display = (
        "pipeline",
        "date",
        "store",
        "product",
        "quantity",
        "revenue",
        "line_count",
        "order_count",
    )
    list_filter = ("pipeline", "date")
    list_select_related = ("date", "store", "product")


@admin.register(models.LoadedPartition)
class LoadedPartitionAdmin(ReadOnlyAdmin):
    list_display = ("pipeline", "date")
    list_filter = ("pipeline",)


RAW_RECORD_PERMISSION = "warehouse.view_raw_record"
_RAW_FIELDS = ("raw_record", "record_fingerprint")


@admin.register(models.QuarantinedRow)
class QuarantinedRowAdmin(ReadOnlyAdmin):
    list_display = ("pipeline", "business_date", "dataset", "reason_code", "occurrences", "first_run")
    list_filter = ("pipeline", "dataset", "reason_code", "business_date")
    search_fields = ("message", "raw_record")

    def get_fields(self, request, obj=None):
        fields = super().get_fields(request, obj)
        if request.user.has_perm(RAW_RECORD_PERMISSION):
            return fields
        return [f for f in fields if f not in _RAW_FIELDS]

    def get_search_fields(self, request):
        if request.user.has_perm(RAW_RECORD_PERMISSION):
            return self.search_fields
        return tuple(f for f in self.search_fields if f not in _RAW_FIELDS)
