"""Extract state, drift and concurrency through `manage.py extract`, on SQLite and PostgreSQL.

The watermark is saved with the published partition and only then; a failed source keeps its old
watermark and stages nothing, while the pipeline's other sources are published.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import date
from io import StringIO

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from django.core.management import CommandError, call_command

from etlcore.config import pipeline_parse
from etlcore.errors import ConfigurationError
from etlcore.models import PipelineRun, StagedPartition
from tests.connectors.test_rest import Reply, Seen, api  # noqa: F401 - the loopback server fixture
from tests.pipelines import dataset, pipeline_toml, pipeline_write

pytestmark = pytest.mark.django_db(databases="__all__")


def orders(name: str, url: str, drift: str = "warn") -> dict:
    """An incremental, paged REST dataset of orders served at `<url>/<name>`."""
    source = {
        "kind": "rest",
        "base_url": url,
        "path": f"/{name}",
        "records_path": "orders",
        "max_retries": 1,
        "backoff_factor": 0.01,
        "pagination": {"style": "page_number"},
        "incremental": {
            "param": "updated_at_min",
            "cursor_field": "updated_at",
            "lookback_seconds": 3600,
            "end_param": "updated_at_max",
            "initial": "2026-01-01T00:00:00Z",
        },
    }
    return dataset(
        source=source,
        key=[],
        options={"drift": drift},
        order_id={"from": "id", "required": True},
        updated_at={"from": "updated_at", "required": True},
        total={"from": "total"},
    )


@pytest.fixture
def shop(pipeline_dir, tmp_path, db_alias, api):  # noqa: F811 - the fixture imported above
    staging = tmp_path / "staging"

    def write(*datasets: str, drift: str = "warn", workers: int = 4) -> None:
        pipeline_write(
            pipeline_dir,
            datasets={name: orders(name, api.url, drift) for name in datasets},
            database=db_alias,
            staging=staging,
            top=f"extract_workers = {workers}",
        )

    write("orders")
    return {"alias": db_alias, "staging": staging, "api": api, "write": write}


def order(order_id: int, updated_at: str, **extra) -> dict:
    return {"id": order_id, "updated_at": updated_at, "total": "9.50", **extra}


def serve(api, pages: dict[str, list[dict]]) -> None:  # noqa: F811
    """Per endpoint, one page of orders then an empty page."""

    def handler(seen: Seen) -> Reply:
        orders = pages[seen.path.strip("/")] if seen.query["page"] == ["1"] else []
        return Reply(body={"orders": orders})

    api.handler = handler


def extract(day: str) -> str:
    out = StringIO()
    call_command("extract", "--pipeline", "shop", "--date", day, stdout=out, stderr=StringIO())
    return out.getvalue()


def partition(shop, dataset: str, day: str) -> StagedPartition | None:
    return (
        StagedPartition.objects.using(shop["alias"])
        .filter(pipeline="shop", dataset=dataset, business_date=date.fromisoformat(day))
        .first()
    )


def manifest(shop, dataset: str, day: str):
    return shop["staging"] / f"shop/raw/{dataset}/date={day}/_manifest.json"


def first_requests(api) -> list[str | None]:  # noqa: F811
    return [s.query.get("updated_at_min", [None])[0] for s in api.seen if s.query["page"] == ["1"]]


# --- state -----------------------------------------------------------------------------------------------


def test_published_partition_is_recorded_with_the_state_it_started_from_and_the_next_one(shop):
    serve(shop["api"], {"orders": [order(1, "2026-11-01T08:00:00Z"), order(2, "2026-11-01T09:30:00Z")]})

    extract("2026-11-01")

    row = partition(shop, "orders", "2026-11-01")
    assert (row.row_count, row.state_in) == (2, None)
    assert row.state_out["watermark"] == "2026-11-01T09:30:00+00:00"
    published = json.loads(manifest(shop, "orders", "2026-11-01").read_text())
    assert (row.checksum, row.run_id) == (
        published["checksum"],
        PipelineRun.objects.using(shop["alias"]).latest("id").pk,
    )
    assert first_requests(shop["api"]) == ["2026-01-01T00:00:00+00:00"]  # the configured initial


def test_next_date_starts_from_the_previous_state_out_minus_lookback(shop):
    serve(shop["api"], {"orders": [order(1, "2026-11-01T09:30:00Z")]})
    extract("2026-11-01")
    serve(shop["api"], {"orders": [order(3, "2026-11-02T07:00:00Z")]})
    shop["api"].seen.clear()

    extract("2026-11-02")

    assert first_requests(shop["api"]) == ["2026-11-01T08:30:00+00:00"]
    assert partition(shop, "orders", "2026-11-02").state_in["watermark"] == "2026-11-01T09:30:00+00:00"
    assert partition(shop, "orders", "2026-11-02").state_out["watermark"] == "2026-11-02T07:00:00+00:00"
    assert shop["api"].seen[0].query["updated_at_max"] == ["2026-11-03T00:00:00+00:00"]


def test_rerun_of_a_date_reads_the_same_range_again_from_its_saved_state_in(shop):
    serve(shop["api"], {"orders": [order(1, "2026-11-01T09:30:00Z")]})
    extract("2026-11-01")
    serve(shop["api"], {"orders": [order(3, "2026-11-02T07:00:00Z")]})
    extract("2026-11-02")
    shop["api"].seen.clear()

    extract("2026-11-02")  # again, after its state_out moved on

    assert first_requests(shop["api"]) == ["2026-11-01T08:30:00+00:00"]
    assert partition(shop, "orders", "2026-11-02").state_in["watermark"] == "2026-11-01T09:30:00+00:00"
    assert StagedPartition.objects.using(shop["alias"]).count() == 2


@pytest.mark.django_db(databases="__all__", transaction=True)
def test_source_failing_mid_stream_keeps_the_old_watermark_and_stages_nothing(shop):
    serve(shop["api"], {"orders": [order(1, "2026-11-01T09:30:00Z")]})
    extract("2026-11-01")

    def failing(seen: Seen) -> Reply:
        page = int(seen.query["page"][0])
        if page >= 3:
            return Reply(500, {"error": "database on fire"})
        return Reply(body={"orders": [order(10 + page, f"2026-11-02T0{page}:00:00Z")]})

    shop["api"].handler = failing
    with pytest.raises(CommandError) as caught:
        extract("2026-11-02")

    assert "source 'orders'" in str(caught.value) and "page=3" in str(caught.value)
    assert "HTTP 500" in str(caught.value)
    assert partition(shop, "orders", "2026-11-02") is None
    assert partition(shop, "orders", "2026-11-01").state_out["watermark"] == "2026-11-01T09:30:00+00:00"
    assert not manifest(shop, "orders", "2026-11-02").exists()
    assert not list((shop["staging"] / "shop/raw/orders/date=2026-11-02").glob("**/*.parquet"))

    shop["api"].seen.clear()
    serve(shop["api"], {"orders": [order(11, "2026-11-02T01:00:00Z")]})
    extract("2026-11-02")  # the re-run reads the failed window again (at-least-once)
    assert first_requests(shop["api"]) == ["2026-11-01T08:30:00+00:00"]


# --- drift -----------------------------------------------------------------------------------------------


def test_drift_warn_publishes_and_records_new_and_missing_fields_on_step_and_partition(shop, caplog):
    serve(shop["api"], {"orders": [{"id": 1, "updated_at": "2026-11-01T09:30:00Z", "coupon": {"code": "X"}}]})

    extract("2026-11-01")

    expected = {"added": ["coupon"], "missing": ["total"], "changed": []}
    step = PipelineRun.objects.using(shop["alias"]).latest("id").steps.get()
    assert step.details["orders"]["drift"] == expected
    assert partition(shop, "orders", "2026-11-01").drift == expected
    assert "schema drift: new field(s) coupon; declared field(s) never present total" in caplog.text


def test_drift_fail_fails_naming_the_fields_and_stages_nothing(shop):
    shop["write"]("orders", drift="fail")
    serve(shop["api"], {"orders": [{"id": 1, "updated_at": "2026-11-01T09:30:00Z", "coupon": "X"}]})

    with pytest.raises(CommandError, match=r"source 'orders': schema drift .*new field\(s\) coupon.*total"):
        extract("2026-11-01")

    step = PipelineRun.objects.using(shop["alias"]).latest("id").steps.get()
    assert step.details["orders"]["drift"]["added"] == ["coupon"]
    assert partition(shop, "orders", "2026-11-01") is None
    assert not manifest(shop, "orders", "2026-11-01").exists()


def test_type_change_of_a_typed_source_is_drift_against_the_previous_partition(shop, pipeline_dir, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    pq.write_table(pa.table({"sku": ["A"], "price": pa.array([3], pa.int64())}), data / "p_20261101.parquet")
    pq.write_table(pa.table({"sku": ["A"], "price": ["3.00"]}), data / "p_20261102.parquet")
    products = dataset(
        f"{data}/p_{{date:%Y%m%d}}.parquet",
        key=[],
        sku={"from": "sku", "required": True},
        price={"from": "price"},
    )
    pipeline_write(
        pipeline_dir,
        datasets={"products": products},
        database=shop["alias"],
        staging=shop["staging"],
        top="extract_workers = 1",
    )

    extract("2026-11-01")
    extract("2026-11-02")

    assert partition(shop, "products", "2026-11-01").drift == {}
    assert partition(shop, "products", "2026-11-02").drift == {
        "added": [],
        "missing": [],
        "changed": [{"field": "price", "was": "int64", "now": "string"}],
    }


# --- concurrency -----------------------------------------------------------------------------------------


def test_independent_sources_extract_concurrently(shop):
    """Both sources' first requests are in flight at once, as the server saw them. Each holds its answer
    until the other source has asked (or 5 s passed): run one after the other, they could never overlap."""
    shop["write"]("orders", "refunds")
    lock = threading.Lock()
    asked: set[str] = set()
    both_asked = threading.Event()
    in_flight: dict[str, tuple[float, float]] = {}  # source -> its first request's (received, answered)

    def held(seen: Seen) -> Reply:
        source, received = seen.path.strip("/"), time.monotonic()
        with lock:
            asked.add(source)
            if len(asked) == 2:
                both_asked.set()
        both_asked.wait(timeout=5)
        first = seen.query["page"] == ["1"]
        if first:
            in_flight[source] = (received, time.monotonic())
        return Reply(body={"orders": [order(1, "2026-11-01T09:30:00Z")] if first else []})

    shop["api"].handler = held
    extract("2026-11-01")

    (orders_in, orders_out), (refunds_in, refunds_out) = in_flight["orders"], in_flight["refunds"]
    assert max(orders_in, refunds_in) < min(orders_out, refunds_out)
    assert partition(shop, "orders", "2026-11-01") and partition(shop, "refunds", "2026-11-01")


@pytest.mark.django_db(databases="__all__", transaction=True)
def test_one_failing_source_still_publishes_the_others_and_the_step_names_it(shop):
    shop["write"]("orders", "refunds", "returns")

    def handler(seen: Seen) -> Reply:
        if seen.path == "/refunds":
            return Reply(503, {"error": "busy"})
        return Reply(
            body={"orders": [order(1, "2026-11-01T09:30:00Z")] if seen.query["page"] == ["1"] else []}
        )

    shop["api"].handler = handler
    with pytest.raises(CommandError, match=r"^source 'refunds': GET .*/refunds\?.* answered HTTP 503"):
        extract("2026-11-01")

    assert (
        partition(shop, "refunds", "2026-11-01") is None
        and not manifest(shop, "refunds", "2026-11-01").exists()
    )
    for published in ("orders", "returns"):
        assert partition(shop, published, "2026-11-01").state_out["watermark"] == "2026-11-01T09:30:00+00:00"
        assert manifest(shop, published, "2026-11-01").exists()
    step = PipelineRun.objects.using(shop["alias"]).latest("id").steps.get()
    assert step.status == "failed" and step.rows_out == 2
    assert "HTTP 503" in step.details["refunds"]["error"] and step.details["orders"]["rows"] == 1


def test_several_failing_sources_are_all_named(shop):
    shop["write"]("orders", "refunds")
    shop["api"].handler = lambda seen: Reply(404, {"errors": "Not Found"})

    with pytest.raises(
        CommandError, match=r"2 of 2 sources failed: source 'orders': .* \| source 'refunds': "
    ):
        extract("2026-11-01")


# --- configuration ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('drift = "ignore"', r"\[datasets.orders\]: drift 'ignore' is not one of warn, fail"),
        ("extract_workers = 0", r"extract_workers must be a positive whole number, got 0"),
    ],
)
def test_invalid_drift_policy_or_worker_count_is_a_configuration_error(tmp_path, line, message):
    path = tmp_path / "shop.toml"
    text = pipeline_toml(
        datasets={"orders": orders("orders", "http://127.0.0.1:1")},
        database="default",
        staging=tmp_path,
        top="extract_workers = 2",
    )
    if line.startswith("drift"):
        text = text.replace('drift = "warn"', line)
    else:
        text = text.replace("extract_workers = 2", line)
    path.write_text(text)

    with pytest.raises(ConfigurationError, match=message):
        pipeline_parse(path)
