"""Real load processes killed with SIGKILL at named points, and loads of two dates running side by side.

The loader pauses at a fault point only when ETL_FAULT_POINT names it (warehouse.loading.specs.fault_point);
the child writes its pid to a marker file and waits with its transaction open, so the test can kill it
exactly there, or let it carry on by deleting the marker.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connections
from psycopg2.errors import LockNotAvailable

from tests.conftest import _postgres_or_skip
from warehouse.checks import warehouse_checksums
from warehouse.loaders import partition_load
from warehouse.models import DimProduct, FactDailySales, FactSalesLine

from .partitions import DAY, default_outputs, history_outputs, sale, write_outputs

pytestmark = pytest.mark.django_db(databases="__all__", transaction=True)

DAY2, DAY3 = date(2026, 11, 2), date(2026, 11, 3)
CHILD_TIMEOUT = 30


def first_load() -> dict:
    return default_outputs([sale("O1", 1), sale("O2", 1, sku="P2"), sale("O3", 1, customer=None)])


def second_load() -> dict:
    """The same date again: a changed line, a removed line, a changed dimension member, no rejects."""
    outputs = default_outputs([sale("O1", 1, qty=7), sale("O4", 1, sku="P2")])
    outputs["products"][0]["name"] = "Mug (large)"
    outputs["quarantine"] = []
    return outputs


def postgres_url() -> str:
    db = connections["postgres"].settings_dict
    auth = db["USER"] + (f":{db['PASSWORD']}" if db.get("PASSWORD") else "")
    return f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


def start_child(tmp_path: Path, job: dict, database_url: str, fault: str | None = None) -> subprocess.Popen:
    job_file = tmp_path / f"job-{time.monotonic_ns()}.json"
    job_file.write_text(json.dumps(job), encoding="utf-8")
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "conf.settings.local",
        "DATABASE_URL": database_url,
        "ETL_VAR_DIR": str(tmp_path / "var"),
    }
    env.pop("ETL_FAULT_POINT", None)
    if fault:
        env |= {"ETL_FAULT_POINT": fault, "ETL_FAULT_MARKER": str(tmp_path / "paused")}
    return subprocess.Popen(
        [sys.executable, "-m", "tests.warehouse.load_child", str(job_file)],
        cwd=settings.BASE_DIR,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def load_job(folder: Path, day: date, outputs: dict, strategy: str = "auto") -> dict:
    paths = write_outputs(folder, outputs)
    return {
        "business_date": day.isoformat(),
        "strategy": strategy,
        "outputs": {name: [str(p) for p in files] for name, files in paths.items()},
    }


def wait_paused(proc: subprocess.Popen, marker: Path) -> None:
    deadline = time.monotonic() + CHILD_TIMEOUT
    while not marker.exists():
        if proc.poll() is not None:
            raise AssertionError(f"load ended before its fault point: {proc.stderr.read().decode()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("load never reached its fault point")
        time.sleep(0.01)


def kill_at(tmp_path: Path, job: dict, database_url: str, fault: str) -> None:
    proc = start_child(tmp_path, job, database_url, fault)
    wait_paused(proc, tmp_path / "paused")
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(CHILD_TIMEOUT) == -signal.SIGKILL
    (tmp_path / "paused").unlink()


def run_child(tmp_path: Path, job: dict, database_url: str) -> str:
    proc = start_child(tmp_path, job, database_url)
    out, err = proc.communicate(timeout=CHILD_TIMEOUT)
    assert proc.returncode == 0, err.decode()
    return out.decode()


def load_here(alias: str, folder: Path, day: date, outputs: dict, strategy: str = "auto") -> None:
    partition_load(
        outputs=write_outputs(folder, outputs),
        pipeline="shop",
        business_date=day,
        run_id=None,
        using=alias,
        strategy=strategy,
    )


@pytest.mark.postgres
@pytest.mark.parametrize(
    "fault",
    ["after_dimensions", "during_copy:sales_lines", "after_copy", "after_merge", "before_commit"],
)
def test_a_copy_load_killed_at_any_point_leaves_the_warehouse_as_before_and_reruns_completely(
    tmp_path, fault
):
    _postgres_or_skip()
    load_here("postgres", tmp_path / "first", DAY, first_load())
    before = warehouse_checksums(using="postgres")

    kill_at(tmp_path, load_job(tmp_path / "second", DAY, second_load()), postgres_url(), fault)
    assert warehouse_checksums(using="postgres") == before

    # The next run loads the date completely: the same facts as a load that was never interrupted.
    load_here("postgres", tmp_path / "rerun", DAY, second_load())
    load_here("default", tmp_path / "clean-1", DAY, first_load())
    load_here("default", tmp_path / "clean-2", DAY, second_load())
    assert warehouse_checksums(using="postgres", mode="natural") == warehouse_checksums(
        using="default", mode="natural"
    )


def test_a_portable_load_on_a_sqlite_file_killed_mid_merge_leaves_the_warehouse_as_before(tmp_path):
    url = f"sqlite:///{tmp_path / 'warehouse.sqlite3'}"
    run_child(tmp_path, {"action": "migrate"}, url)
    run_child(tmp_path, load_job(tmp_path / "first", DAY, first_load()), url)
    before = json.loads(run_child(tmp_path, {"action": "checksums"}, url))

    kill_at(tmp_path, load_job(tmp_path / "second", DAY, second_load()), url, "after_merge")
    assert json.loads(run_child(tmp_path, {"action": "checksums"}, url)) == before

    run_child(tmp_path, load_job(tmp_path / "rerun", DAY, second_load()), url)
    after = json.loads(run_child(tmp_path, {"action": "checksums"}, url))
    assert after["warehouse_factsalesline"][0] == 2 and after != before


@pytest.mark.postgres
def test_loads_of_two_dates_do_not_wait_for_each_other_beyond_the_merge(tmp_path):
    """One load holds its transaction open after its merge; a load of another date of the same tables,
    sharing every dimension member, still commits at once."""
    _postgres_or_skip()
    load_here("postgres", tmp_path / "day1", DAY, first_load())

    day2 = default_outputs([sale("O21", 1, day=DAY2), sale("O22", 1, sku="P2", day=DAY2)])
    held = start_child(tmp_path, load_job(tmp_path / "day2", DAY2, day2), postgres_url(), "before_commit")
    wait_paused(held, tmp_path / "paused")
    try:
        with connections["postgres"].cursor() as cursor:
            cursor.execute("SET lock_timeout = '3s'")
        started = time.monotonic()
        load_here("postgres", tmp_path / "day3", DAY3, default_outputs([sale("O31", 1, day=DAY3)]))
        assert time.monotonic() - started < 3
    finally:
        with connections["postgres"].cursor() as cursor:
            cursor.execute("RESET lock_timeout")
        (tmp_path / "paused").unlink()  # let the held load commit
    assert held.wait(CHILD_TIMEOUT) == 0, held.stderr.read().decode()
    dates = set(FactSalesLine.objects.using("postgres").values_list("date_id", flat=True))
    assert dates == {20261101, 20261102, 20261103}


@pytest.mark.postgres
@pytest.mark.parametrize("strategy", ["copy", "portable"])
def test_a_backfill_killed_while_rewriting_history_leaves_the_warehouse_as_before(tmp_path, strategy):
    """Killed after the versions were split and the later date's facts re-pointed (this backfill leaves
    no row to delete)."""
    _postgres_or_skip()
    for day in (DAY, DAY3):
        load_here("postgres", tmp_path / f"{day}", day, history_outputs(day), strategy)
    before = warehouse_checksums(using="postgres")

    backfill = history_outputs(DAY2, price="12.00")
    kill_at(
        tmp_path,
        load_job(tmp_path / "backfill", DAY2, backfill, strategy),
        postgres_url(),
        "history:products",
    )
    assert warehouse_checksums(using="postgres") == before

    load_here("postgres", tmp_path / "rerun", DAY2, backfill, strategy)
    for day in (DAY, DAY2, DAY3):
        load_here(
            "default", tmp_path / f"clean-{day}", day, backfill if day == DAY2 else history_outputs(day)
        )
    assert warehouse_checksums(using="postgres", mode="natural") == warehouse_checksums(
        using="default", mode="natural"
    )


def _assert_waits_for_a_held_load(tmp_path, held_job: dict, day: date, outputs: dict) -> None:
    """Hold `held_job` open just before commit, check that loading `day` waits for it (a 1 s lock timeout
    fires), then let the held load commit."""
    held = start_child(tmp_path, held_job, postgres_url(), "before_commit")
    wait_paused(held, tmp_path / "paused")
    try:
        with connections["postgres"].cursor() as cursor:
            cursor.execute("SET lock_timeout = '1s'")
        with pytest.raises(LockNotAvailable):
            load_here("postgres", tmp_path / f"{day}-waits", day, outputs)
    finally:
        with connections["postgres"].cursor() as cursor:
            cursor.execute("RESET lock_timeout")
        (tmp_path / "paused").unlink()
    assert held.wait(CHILD_TIMEOUT) == 0, held.stderr.read().decode()


def _assert_day3_waits_for_a_held_day2_price_change(tmp_path, day3_outputs) -> None:
    """A load of D2 that changes P1's price, held open just before commit, makes loading D3 wait."""
    price_change = load_job(tmp_path / "day2", DAY2, history_outputs(DAY2, price="12.00"))
    _assert_waits_for_a_held_load(tmp_path, price_change, DAY3, day3_outputs)


@pytest.mark.postgres
def test_a_load_changing_history_waits_for_another_load_changing_the_same_dimension(tmp_path):
    """Two loads that change a product's versions are serialised by the history lock: the second waits
    for the first's commit, then builds on it, as if they had run one after the other."""
    _postgres_or_skip()
    load_here("postgres", tmp_path / "day1", DAY, history_outputs(DAY))

    _assert_day3_waits_for_a_held_day2_price_change(tmp_path, history_outputs(DAY3, price="15.00"))

    load_here("postgres", tmp_path / "day3", DAY3, history_outputs(DAY3, price="15.00"))
    versions = DimProduct.objects.using("postgres").filter(sku="P1").values_list("valid_from", "list_price")
    assert [(day, str(price)) for day, price in versions] == [
        (DAY, "9.99"),
        (DAY2, "12.00"),
        (DAY3, "15.00"),
    ]


@pytest.mark.postgres
def test_a_load_reading_history_waits_for_a_load_changing_it_then_sees_the_change(tmp_path):
    """D3 arrives while a load of D2 that changes P1's price is still open. Without the wait, D3 would find
    nothing to change, point its facts at the version D2's load is closing, and lose its own price."""
    _postgres_or_skip()
    load_here("postgres", tmp_path / "day1", DAY, history_outputs(DAY))

    _assert_day3_waits_for_a_held_day2_price_change(tmp_path, history_outputs(DAY3))

    load_here("postgres", tmp_path / "day3", DAY3, history_outputs(DAY3))
    for day in (DAY, DAY2, DAY3):
        outputs = history_outputs(day, price="12.00" if day == DAY2 else "9.99")
        load_here("default", tmp_path / f"sequential-{day}", day, outputs)
    assert warehouse_checksums(using="postgres", mode="natural") == warehouse_checksums(
        using="default", mode="natural"
    )


def return_links() -> dict[str, str | None]:
    returns = FactSalesLine.objects.using("postgres").filter(is_return=True)
    return dict(returns.values_list("order_id", "original_order_id"))


@pytest.mark.postgres
def test_a_load_with_returns_waits_for_a_load_of_an_earlier_date_then_links_to_its_purchase(tmp_path):
    """Neither load could see the other's rows: without the wait, D3's return would miss D2's purchase."""
    _postgres_or_skip()
    load_here("postgres", tmp_path / "day1", DAY, default_outputs([sale("O1", 1)]))
    purchase = load_job(tmp_path / "day2", DAY2, default_outputs([sale("O2", 1, day=DAY2)]))
    day3 = default_outputs([sale("C3", 1, qty=-1, day=DAY3)])

    _assert_waits_for_a_held_load(tmp_path, purchase, DAY3, day3)

    load_here("postgres", tmp_path / "day3", DAY3, day3)
    assert return_links() == {"C3": "O2"}


@pytest.mark.postgres
def test_a_load_waits_for_a_load_of_a_later_date_then_revisits_its_returns(tmp_path):
    _postgres_or_skip()
    load_here("postgres", tmp_path / "day1", DAY, default_outputs([sale("O1", 1)]))
    returns = load_job(tmp_path / "day3", DAY3, default_outputs([sale("C3", 1, qty=-1, day=DAY3)]))
    day2 = default_outputs([sale("O2", 1, day=DAY2)])

    _assert_waits_for_a_held_load(tmp_path, returns, DAY2, day2)

    assert return_links() == {"C3": "O1"}
    load_here("postgres", tmp_path / "day2", DAY2, day2)
    assert return_links() == {"C3": "O2"}


@pytest.mark.postgres
@pytest.mark.parametrize("fault", ["after_merge", "before_commit"])
def test_a_late_line_held_mid_load_counts_in_its_dates_daily_fact_whatever_commits_first(tmp_path, fault):
    """Partition D1 carries a late line of business date D2. While D1's load is held mid-merge, the load of
    partition D2 (lines of the same date, store and products) starts: it must wait for D1's lock on D2, and
    D2's daily figures must then hold every line of both partitions, summed here from the lines as written."""
    _postgres_or_skip()

    # The dimensions' members and D2's date row exist already and the partitions share no other row (guest
    # lines, no quarantine): only the lock on D2 can make a load wait.
    def outputs(lines: list[dict]) -> dict:
        return default_outputs(lines) | {"customers": [], "quarantine": []}

    early = sale("E2", 1, qty=5, day=DAY2, customer=None)
    load_here("postgres", tmp_path / "d3", DAY3, outputs([sale("O3", 1, day=DAY3, customer=None), early]))
    late = sale("L1", 1, qty=3, price="4.10", day=DAY2, customer=None)
    own = [
        sale("O21", 1, qty=2, day=DAY2, customer=None),
        sale("O22", 1, qty=1, sku="P2", price="1.25", day=DAY2, customer=None),
    ]
    first = load_job(tmp_path / "d1", DAY, outputs([sale("O1", 1, customer=None), late]))
    held = start_child(tmp_path, first, postgres_url(), fault)
    wait_paused(held, tmp_path / "paused")
    other = start_child(tmp_path, load_job(tmp_path / "d2", DAY2, outputs(own)), postgres_url())
    try:
        _wait_until_blocked_or_done(other)
    finally:
        (tmp_path / "paused").unlink()
    assert held.wait(CHILD_TIMEOUT) == 0, held.stderr.read().decode()
    assert other.wait(CHILD_TIMEOUT) == 0, other.stderr.read().decode()

    expected: dict[str, tuple[int, Decimal, int]] = {}
    for line in (early, late, *own):
        qty, revenue, count = expected.get(line["sku"], (0, Decimal("0"), 0))
        expected[line["sku"]] = (qty + line["quantity"], revenue + line["amount_reporting"], count + 1)
    daily = FactDailySales.objects.using("postgres").filter(pipeline="shop", date_id=20261102)
    got = {r.product.sku: (r.quantity, r.revenue, r.line_count) for r in daily.select_related("product")}
    assert got == expected


def _wait_until_blocked_or_done(proc: subprocess.Popen) -> None:
    """Until `proc` has ended or a second session of the test database waits on a lock (the first is the
    held load, paused in Python, not waiting): the interleaving the test is about has then happened."""
    deadline = time.monotonic() + CHILD_TIMEOUT
    with connections["postgres"].cursor() as cursor:
        while proc.poll() is None and time.monotonic() < deadline:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND pid <> pg_backend_pid() AND wait_event_type = 'Lock'"
            )
            if cursor.fetchone()[0]:
                return
            time.sleep(0.05)
