"""The retail star schema. These models are the single definition of the warehouse's tables."""

from __future__ import annotations

from django.db import models

MONEY = {"max_digits": 18, "decimal_places": 2}
PRICE = {"max_digits": 18, "decimal_places": 4}


class EncryptedTextField(models.TextField):
    """A Fernet token of a personal value (`pii = "encrypt"`, read back by etlcore.pii): every encryption
    gives another token, so two equal tokens are not expected. The loader keeps the first it stores
    (warehouse.loading.specs, `kept`), and table checksums compare its presence, not its text."""


class DimDate(models.Model):
    date_key = models.IntegerField(primary_key=True, help_text="YYYYMMDD")
    date = models.DateField(unique=True)
    year = models.SmallIntegerField()
    quarter = models.SmallIntegerField()
    month = models.SmallIntegerField()
    day = models.SmallIntegerField()
    day_of_week = models.SmallIntegerField(help_text="ISO: 1 = Monday")
    is_weekend = models.BooleanField()

    class Meta:
        ordering = ["date_key"]

    def __str__(self) -> str:
        return self.date.isoformat()


class PipelineOwned(models.Model):
    """A row that belongs to the pipeline that loaded it: another pipeline's loads never change it, so two
    pipelines whose masters disagree about a member keep one history each."""

    pipeline = models.CharField(max_length=100, help_text="the pipeline that loaded it; only it changes it")

    class Meta:
        abstract = True


class Versioned(PipelineOwned):
    """A version of a slowly changing dimension member (type 2): its attributes held over [valid_from,
    valid_to). The versions of one member are contiguous; the last is open-ended and the current one.
    The loaders maintain them (docs/loading.md#dimension-history)."""

    valid_from = models.DateField(help_text="first business date of this version")
    valid_to = models.DateField(
        null=True, blank=True, help_text="first business date after this version; empty while current"
    )
    is_current = models.BooleanField(help_text="the open-ended version, as of the latest loaded date")

    class Meta(PipelineOwned.Meta):
        abstract = True


def history_constraints(name: str, natural_key: str) -> list[models.BaseConstraint]:
    """One version per member of a pipeline and start date (its index serves the loaders' range joins), at
    most one current version per member, and no empty range."""
    return [
        models.UniqueConstraint(fields=["pipeline", natural_key, "valid_from"], name=f"uniq_{name}_version"),
        models.UniqueConstraint(
            fields=["pipeline", natural_key],
            condition=models.Q(is_current=True),
            name=f"uniq_{name}_current",
        ),
        models.CheckConstraint(
            condition=models.Q(valid_to__isnull=True) | models.Q(valid_to__gt=models.F("valid_from")),
            name=f"{name}_valid_range",
        ),
    ]


class DimStore(Versioned):
    store_code = models.CharField(max_length=50, help_text="natural key from the store master")
    name = models.CharField(max_length=200)
    city = models.CharField(max_length=100, blank=True, null=True)
    region = models.CharField(max_length=100, blank=True, null=True)
    country = models.CharField(max_length=100, blank=True, null=True)

    class Meta:
        ordering = ["pipeline", "store_code", "valid_from"]
        constraints = history_constraints("dimstore", "store_code")

    def __str__(self) -> str:
        return f"{self.store_code} {self.name} (from {self.valid_from})"


class DimProduct(Versioned):
    sku = models.CharField(max_length=64, help_text="natural key from the product catalogue")
    name = models.CharField(max_length=300)
    category = models.CharField(max_length=100, blank=True, null=True)
    list_price = models.DecimalField(**MONEY, null=True, blank=True)

    class Meta:
        ordering = ["pipeline", "sku", "valid_from"]
        constraints = history_constraints("dimproduct", "sku")

    def __str__(self) -> str:
        return f"{self.sku} {self.name} (from {self.valid_from})"


class DimCustomer(PipelineOwned):
    customer_key = models.CharField(
        max_length=64, help_text="HMAC-SHA256 pseudonym of the e-mail; no e-mail or name is stored in clear"
    )
    country = models.CharField(max_length=100, blank=True, null=True)
    country_seen_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="time of the latest order giving the country: a load keeps the latest, whatever the "
        "order partitions load in",
    )
    email_encrypted = EncryptedTextField(
        null=True,
        blank=True,
        help_text="the e-mail as a Fernet token (etlcore.pii.customer_emails reads it back with the keys); "
        "the first token stored is kept",
    )

    class Meta:
        ordering = ["pipeline", "customer_key"]
        constraints = [
            models.UniqueConstraint(fields=["pipeline", "customer_key"], name="uniq_dimcustomer_member")
        ]

    def __str__(self) -> str:
        return self.customer_key[:12]


class LoadedPartition(PipelineOwned):
    """A partition date a pipeline has loaded: its dimension snapshots bound the versions a backfill may
    change (the next loaded date, docs/loading.md#dimension-history)."""

    date = models.DateField()

    class Meta:
        ordering = ["pipeline", "date"]
        constraints = [models.UniqueConstraint(fields=["pipeline", "date"], name="uniq_loaded_partition")]

    def __str__(self) -> str:
        return f"{self.pipeline} {self.date}"


class PseudonymKey(PipelineOwned):
    """The pseudonym key the pipeline's customer keys were made with, by its fingerprint (never the key):
    a load under another key is refused (warehouse.errors.PseudonymKeyMismatchError)."""

    fingerprint = models.CharField(max_length=64)
    recorded_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["pipeline"], name="uniq_pseudonym_key_pipeline")]

    def __str__(self) -> str:
        return f"{self.pipeline} {self.fingerprint}"


class FactSalesLine(PipelineOwned):
    """One order line, once per pipeline: the newest version any loaded partition carried, on the business
    date of the record itself (docs/loading.md#exactly-once-across-partitions)."""

    order_id = models.CharField(max_length=64)
    line_number = models.IntegerField()
    date = models.ForeignKey(DimDate, on_delete=models.PROTECT, db_column="date_key")
    store = models.ForeignKey(DimStore, on_delete=models.PROTECT)
    product = models.ForeignKey(
        DimProduct,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        help_text="NULL for a line that is not a product (postage, fee, discount...): see line_type",
    )
    # Indexed by the (customer, stock_code) index below, whose first column serves the foreign key too.
    customer = models.ForeignKey(DimCustomer, on_delete=models.PROTECT, null=True, blank=True, db_index=False)
    ordered_at = models.DateTimeField()
    quantity = models.IntegerField(help_text="negative for returns")
    unit_price = models.DecimalField(**PRICE)
    amount = models.DecimalField(
        **MONEY, help_text="quantity x unit price in the line's currency, rounded half-up to the cent"
    )
    currency = models.CharField(max_length=3)
    is_return = models.BooleanField(default=False)
    stock_code = models.CharField(
        max_length=64, help_text="the item code as the source gave it (sku, POST...)"
    )
    line_type = models.CharField(
        max_length=30, default="product", help_text="product, or the configured class of a non-product line"
    )
    amount_reporting = models.DecimalField(
        **MONEY, help_text="amount in the reporting currency (rate of the date), rounded half-up to the cent"
    )
    original_order_id = models.CharField(
        max_length=64,
        null=True,
        blank=True,
        help_text="for a return: the order it returns, when the job or the loader could find it "
        "(docs/retail-semantics.md)",
    )
    linked_by_loader = models.BooleanField(
        default=False,
        help_text="original_order_id was found by the loader in an earlier date's purchases; it follows "
        "later loads of those dates",
    )
    source_date = models.DateField(help_text="the extraction partition whose version of the line this is")
    source_version = models.BigIntegerField(
        help_text="the record's version (version_column as microseconds or an integer; without one, the "
        "partition date): the greatest wins, and on a tie the earliest partition"
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["pipeline", "order_id", "line_number"], name="uniq_sales_line_natural_key"
            )
        ]
        indexes = [
            models.Index(fields=["pipeline", "date"], name="sales_line_pipeline_date"),
            # A re-load finds the lines its partition supplied, to drop those it no longer holds.
            models.Index(fields=["pipeline", "source_date"], name="sales_line_pipeline_source"),
            # The loader's look-up of a return's purchase on an earlier date (docs/retail-semantics.md).
            models.Index(fields=["customer", "stock_code"], name="sales_line_customer_item"),
        ]

    def __str__(self) -> str:
        return f"{self.order_id}/{self.line_number}"


class FactDailySales(PipelineOwned):
    """Store x product x business date of a pipeline's product lines, recomputed from FactSalesLine for
    every date a load touches, in the same transaction."""

    date = models.ForeignKey(DimDate, on_delete=models.PROTECT, db_column="date_key")
    store = models.ForeignKey(DimStore, on_delete=models.PROTECT)
    product = models.ForeignKey(DimProduct, on_delete=models.PROTECT)
    quantity = models.BigIntegerField()
    revenue = models.DecimalField(**MONEY)
    line_count = models.BigIntegerField()
    order_count = models.BigIntegerField()

    class Meta:
        verbose_name_plural = "fact daily sales"
        constraints = [
            models.UniqueConstraint(
                fields=["pipeline", "date", "store", "product"], name="uniq_daily_sales_grain"
            )
        ]

    def __str__(self) -> str:
        return f"{self.date_id} {self.store_id} {self.product_id}"


class QuarantinedRow(models.Model):
    """A row the pipeline refused, kept as extracted with the reason, so nothing disappears silently."""

    pipeline = models.CharField(max_length=100)
    business_date = models.DateField()
    dataset = models.CharField(max_length=100)
    reason_code = models.CharField(max_length=100, db_index=True)
    message = models.TextField()
    raw_record = models.TextField(help_text="the staged record as a JSON object of its text values")
    record_fingerprint = models.CharField(max_length=64, help_text="sha256 of raw_record")
    occurrences = models.IntegerField(default=1, help_text="identical rejected records in the partition")
    first_run = models.ForeignKey(
        "etlcore.PipelineRun",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        help_text="the run that first quarantined this record; re-runs keep it",
    )

    class Meta:
        ordering = ["pipeline", "business_date", "dataset", "id"]
        # Personal fields are pseudonyms in the raw record, but the record still describes a customer's
        # purchase: only users given this permission see it; other staff see reasons and counts.
        permissions = [("view_raw_record", "Can see the (pseudonymised) raw record of a quarantined row")]
        constraints = [
            models.UniqueConstraint(
                fields=["pipeline", "business_date", "dataset", "record_fingerprint"],
                name="uniq_quarantined_record",
            )
        ]

    def __str__(self) -> str:
        return f"{self.dataset} {self.business_date} {self.reason_code}"
