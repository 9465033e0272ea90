"""`--dry-run` (etlcore/services/plan.py): the plan of a run, printed, and nothing touched: no file, no
directory, no row, no lock, no request to a source; no secret in what it prints. On SQLite and PostgreSQL."""

from __future__ import annotations

import os
from datetime import date
from io import StringIO
from pathlib import Path

import pytest
from django.apps import apps
from django.core.management import CommandError, call_command

from etlcore.config import pipeline_load
from etlcore.locks import lock_held, lock_try
from etlcore.services.pipeline import STEPS
from etlcore.services.plan import pipeline_plan, plan_lines
from tests.connectors.test_rest import api  # noqa: F401 - the loopback server fixture
from tests.etlcore.test_extract_state import order, orders, serve
from tests.pipelines import pipeline_write

pytestmark = pytest.mark.django_db(databases="__all__")

CANARY_CONF = "canary-spark-secret-5f1e"
CANARY_TOKEN = "canary-api-token-9b2c"
SECRET_CONF_KEY = "spark.hadoop.fs.s3a.secret.key"


@pytest.fixture
def shop(pipeline_dir, tmp_path, db_alias, api, settings, monkeypatch):  # noqa: F811 - imported fixture
    """An incremental REST dataset behind a bearer token, a secret Spark setting, and every place a run
    could write (staging, lock files, the temporary directory) under `tmp_path/var`."""
    var = tmp_path / "var"
    (var / "tmp").mkdir(parents=True)
    settings.ETL_LOCK_DIR = var / "locks"  # the in-memory SQLite test database's lock files
    monkeypatch.setattr("tempfile.tempdir", str(var / "tmp"))
    monkeypatch.setenv("SHOP_API_TOKEN", CANARY_TOKEN)
    source = orders("orders", api.url)
    source["source"]["auth"] = {"type": "bearer", "token_env": "SHOP_API_TOKEN"}
    staging = var / "staging"
    pipeline_write(
        pipeline_dir,
        datasets={"orders": source},
        database=db_alias,
        staging=staging,
        spark_conf={SECRET_CONF_KEY: CANARY_CONF},
    )
    return {"alias": db_alias, "staging": staging, "api": api, "root": tmp_path}


def command(name: str, *args: str) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command(name, *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def extracted(shop, day: str, *rows: dict) -> None:
    """A real extract of `day` serving `rows`: it saves the watermark the plan then shows."""
    serve(shop["api"], {"orders": list(rows)})
    command("extract", "--pipeline", "shop", "--date", day)


def files_snapshot(root: Path) -> dict[str, tuple[int, int, int]]:
    """Every file and directory under `root` (itself included) with its size, mtime and mode."""
    found = {}
    for folder, dirs, names in os.walk(root):
        for path in [Path(folder)] + [Path(folder) / n for n in dirs + names]:
            st = path.lstat()
            found[str(path)] = (st.st_size, st.st_mtime_ns, st.st_mode)
    return found


def rows_snapshot(alias: str) -> dict[str, list[dict]]:
    """Every row of every run-tracking and warehouse table, in full."""
    models = [*apps.get_app_config("etlcore").get_models(), *apps.get_app_config("warehouse").get_models()]
    return {m._meta.db_table: list(m.objects.using(alias).order_by("pk").values()) for m in models}


def lock_never_taken(monkeypatch) -> None:
    """From here on, trying the pipeline's lock (a release leaves no trace to compare) fails the test."""

    def refuse(**kwargs):
        raise AssertionError(f"the dry run tried to take the pipeline lock: {kwargs}")

    monkeypatch.setattr("etlcore.locks.lock_try", refuse)


def everything(shop) -> tuple:
    default = rows_snapshot("default") if shop["alias"] != "default" else {}
    return files_snapshot(shop["root"]), rows_snapshot(shop["alias"]), default, len(shop["api"].seen)


def test_dry_run_prints_the_plan_from_the_saved_watermark_and_changes_no_file_row_or_lock(shop, monkeypatch):
    extracted(shop, "2026-11-01", order(1, "2026-11-01T08:00:00Z"), order(2, "2026-11-01T09:30:00Z"))
    before = everything(shop)
    lock_never_taken(monkeypatch)

    out, err = command("run_pipeline", "--pipeline", "shop", "--date", "2026-11-02", "--dry-run")

    assert everything(shop) == before
    assert not lock_held(pipeline="shop", using=shop["alias"])
    lines = out.splitlines()
    assert lines[0].startswith("dry run of extract, transform, load for pipeline shop (")
    assert "free now (not taken by this dry run)" in lines[2]
    assert f"  extract orders: rest source rest:GET {shop['api'].url}/orders" in lines
    assert "    window 2026-11-02T00:00:00+00:00 to 2026-11-03T00:00:00+00:00" in lines
    starts = next(line for line in lines if "starts from" in line)
    assert "the saved state_out of 2026-11-01: {" in starts
    assert '"watermark": "2026-11-01T09:30:00+00:00"' in starts
    raw = shop["staging"] / "shop/raw/orders/date=2026-11-02"
    transformed = shop["staging"] / "shop/transformed/date=2026-11-02"
    assert f"    publishes {raw}" in lines
    assert f"    reads {raw} (not published yet)" in lines
    assert f"  load: reads {transformed} (not published yet) into database {shop['alias']!r}" in lines
    submit = lines[lines.index(next(line for line in lines if line.startswith("spark-submit"))) + 1]
    assert " --properties-file $TMPDIR/etl-spark-<random>/secret.properties " in submit
    assert submit.endswith(f" --spec {transformed}/attempt-<token>/_spec.json")
    assert f" --py-files {shop['staging']}/_build/spark_jobs.zip " in submit
    assert SECRET_CONF_KEY not in submit  # the secret setting goes in the properties file only
    assert "warehouse_factsalesline" in lines[-1] and "warehouse_dimproduct" in lines[-1]
    for text in (out, err):
        assert CANARY_CONF not in text and CANARY_TOKEN not in text


def test_dry_run_while_another_process_holds_the_lock_says_so_and_exits_0_taking_nothing(shop):
    extracted(shop, "2026-11-01", order(1, "2026-11-01T09:30:00Z"))
    holder = lock_try(pipeline="shop", using=shop["alias"])  # its own connection or file descriptor
    assert holder is not None
    try:
        before = everything(shop)
        out, _ = command("run_pipeline", "--pipeline", "shop", "--date", "2026-11-02", "--dry-run")
        assert everything(shop) == before
        assert "HELD now by another process: a real run would exit 75" in out.splitlines()[2]
    finally:
        holder.release()
    assert not lock_held(pipeline="shop", using=shop["alias"])


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("--pipeline", "nope", "--date", "2026-11-02"), r"^unknown pipeline 'nope' \(known: shop\)$"),
        (("--pipeline", "shop", "--date", "2026-13-01"), r"^invalid --date '2026-13-01'"),
    ],
    ids=["pipeline", "date"],
)
def test_dry_run_with_a_bad_pipeline_or_date_is_one_line_exit_1_and_writes_nothing(
    shop, args, says, monkeypatch
):
    before = everything(shop)
    lock_never_taken(monkeypatch)
    with pytest.raises(CommandError, match=says) as failure:
        command("run_pipeline", *args, "--dry-run")
    assert failure.value.returncode == 1 and "\n" not in str(failure.value)
    assert everything(shop) == before  # not even the failed run record a real run leaves


@pytest.mark.parametrize("step", ["extract", "transform", "load"])
def test_each_step_command_dry_runs_only_its_own_step(shop, step, monkeypatch):
    before = everything(shop)
    lock_never_taken(monkeypatch)
    out, _ = command(step, "--pipeline", "shop", "--date", "2026-11-02", "--dry-run")
    assert everything(shop) == before
    assert out.startswith(f"dry run of {step} for pipeline shop")
    assert ("extract orders:" in out, "spark-submit" in out, "load: reads" in out) == (
        step == "extract",
        step == "transform",
        step == "load",
    )


def test_plan_of_several_dates_is_one_spark_application_and_later_dates_start_where_the_earlier_leaves(
    shop,
):
    extracted(shop, "2026-11-01", order(1, "2026-11-01T09:30:00Z"))
    extracted(shop, "2026-11-02", order(3, "2026-11-02T07:00:00Z"))
    config = pipeline_load("shop")

    plan = pipeline_plan(config=config, dates=[date(2026, 11, 3), date(2026, 11, 2)], steps=STEPS)

    assert plan.dates == (date(2026, 11, 2), date(2026, 11, 3))
    rerun, later = plan.extracts
    # 11-02 was extracted: a re-run starts from its own state_in, the 11-01 watermark.
    assert rerun.starts_from.startswith("its own saved state_in (a re-run of 2026-11-02): {")
    assert '"watermark": "2026-11-01T09:30:00+00:00"' in rerun.starts_from
    # 11-03 starts from what the re-run of 11-02 will leave, which only that run knows.
    assert later.starts_from == "the state the extract of 2026-11-02 leaves (known once it has run)"
    specs = [plan.spark_submit[i + 1] for i, arg in enumerate(plan.spark_submit) if arg == "--spec"]
    assert [Path(spec).parent.parent.name for spec in specs] == ["date=2026-11-02", "date=2026-11-03"]
    assert plan.spark_submit.count("--properties-file") == 1
    text = "\n".join(plan_lines(plan))
    assert "spark-submit, one application for 2 date(s)" in text
    assert CANARY_CONF not in text and CANARY_TOKEN not in text


def test_plan_of_a_first_date_without_saved_state_says_the_source_s_configured_start(shop):
    plan = pipeline_plan(config=pipeline_load("shop"), dates=[date(2026, 11, 1)], steps=("extract",))
    assert [e.starts_from for e in plan.extracts] == ["no saved state: the source's configured start"]
    assert (plan.transforms, plan.spark_submit, plan.loads, plan.tables) == ((), (), (), ())


def test_dry_run_of_a_backfill_plans_every_date_in_one_application_and_changes_nothing(shop, monkeypatch):
    extracted(shop, "2026-11-01", order(1, "2026-11-01T09:30:00Z"))
    before = everything(shop)
    lock_never_taken(monkeypatch)

    out, _ = command(
        "run_pipeline", "--pipeline", "shop", "--from", "2026-11-02", "--to", "2026-11-04", "--dry-run"
    )

    assert everything(shop) == before
    lines = out.splitlines()
    for day in ("2026-11-02", "2026-11-03", "2026-11-04"):
        assert f"    window {day}T00:00:00+00:00 to " in "\n".join(lines)
    submits = [line for line in lines if line.startswith("spark-submit")]
    assert len(submits) == 1
    assert lines[lines.index(submits[0]) + 1].count(" --spec ") == 3


def test_plan_shows_each_date_s_engine_and_the_dask_job_s_command_for_the_dates_on_dask(shop, pipeline_dir):
    extracted(shop, "2026-11-01", order(1, "2026-11-01T08:00:00Z"))
    extracted(shop, "2026-11-02", order(2, "2026-11-02T08:00:00Z"), order(3, "2026-11-02T09:00:00Z"))
    source = orders("orders", shop["api"].url)
    days = [date(2026, 11, 1), date(2026, 11, 2)]
    small, large = (
        shop["staging"] / f"shop/transformed/date={day}/attempt-<token>/_spec.json" for day in days
    )

    def plan(engine: str, steps=("transform",)):
        pipeline_write(
            pipeline_dir,
            datasets={"orders": source},
            database=shop["alias"],
            staging=shop["staging"],
            top=f'engine = "{engine}"',
            tables="[dask]\nmax_rows = 1\n",
        )
        return pipeline_plan(config=pipeline_load("shop"), dates=days, steps=steps)

    # auto over staged dates: one row is at max_rows (Dask), two are above it (Spark); one process each.
    auto = plan("auto")
    assert [(t.engine, t.engine_reason) for t in auto.transforms] == [
        ("dask", "auto: 1 staged rows <= dask max_rows 1"),
        ("spark", "auto: 2 staged rows > dask max_rows 1"),
    ]
    assert auto.dask_command[1:4] == ("-P", "-m", "spark_jobs.sales_daily_dask")
    assert [a for a in auto.dask_command if a.endswith("_spec.json")] == [str(small)]
    assert [a for a in auto.spark_submit if a.endswith("_spec.json")] == [str(large)]
    text = "\n".join(plan_lines(auto))
    assert "    engine dask: auto: 1 staged rows <= dask max_rows 1" in text
    assert "spark-submit, one application for 1 date(s)" in text
    assert "Dask job, one process for 1 date(s), as the run records it:" in text
    # A run that extracts first chooses after the extract: either engine may get either date.
    before_extract = plan("auto", steps=STEPS)
    assert {t.engine for t in before_extract.transforms} == {None}
    assert before_extract.dask_command.count("--spec") == before_extract.spark_submit.count("--spec") == 2
    # On Dask: no spark-submit at all.
    on_dask = plan("dask")
    assert (on_dask.spark_submit, on_dask.dask_command.count("--spec")) == ((), 2)
    assert "spark-submit" not in "\n".join(plan_lines(on_dask))
