"""What a run needs is checked before it spends time (etlcore/preflight.py), and `validate_pipeline` tells it
without reading data, starting Spark or writing anything. Through the commands; fake `java` executables are
real processes on PATH or JAVA_HOME, not mocks."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from io import StringIO
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command

from etlcore.demo.pipeline import DEMO_PII_KEYS
from etlcore.models import PipelineRun, StepRun
from tests.conftest import skip_or_fail_in_ci
from tests.pipelines import pipeline_write, sales_datasets

pytestmark = pytest.mark.django_db

DAY = "2026-11-01"
KEY_ENV = "ETL_PSEUDONYM_KEY"


@pytest.fixture
def shop(pipeline_dir, tmp_path, staging_root, monkeypatch):
    """A sales pipeline whose three sources are there for DAY: an extract of it would succeed."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "products_20261101.csv").write_text("SKU,Product Name,category,list_price\nP1,Mug,Kitchen,4.50\n")
    (data / "stores_20261101.csv").write_text("store_code,name,city,region,country\nS1,Main,Lyon,ARA,FR\n")
    (data / "lines_20261101.csv").write_text(
        "order_id,line_number,ordered_at,store_code,customer_email,sku,quantity,unit_price,currency\n"
        "O1,1,2026-11-01T10:00:00Z,S1,a@example.com,P1,2,4.50,EUR\n"
    )
    monkeypatch.setenv(KEY_ENV, "preflight-test-key")
    return {"data": data, "staging": staging_root, "dir": pipeline_dir}


def write(shop: dict, **parts) -> Path:
    return pipeline_write(shop["dir"], datasets=parts.pop("datasets", sales_datasets(shop["data"])), **parts)


def run_command(name: str, *args: str) -> str:
    out = StringIO()
    call_command(name, *args, stdout=out, stderr=StringIO())
    return out.getvalue()


def fake_java(folder: Path, banner: str) -> Path:
    """An executable `java` that answers `-version` as a JDK does: its banner on stderr."""
    folder.mkdir(parents=True, exist_ok=True)
    java = folder / "java"
    java.write_text(f"#!/bin/sh\necho '{banner}' >&2\necho 'OpenJDK Runtime Environment' >&2\n")
    java.chmod(0o755)
    return java


def assert_failed_before_extract(shop: dict, message: str) -> PipelineRun:
    """The run is failed with the message as its one-line error, no step ran and nothing was staged."""
    run = PipelineRun.objects.latest("id")
    assert (run.status, run.error) == ("failed", message)
    assert "\n" not in run.error
    assert not StepRun.objects.filter(run=run).exists()
    assert not list(Path(shop["staging"]).rglob("*.parquet"))
    assert not list(Path(shop["staging"]).rglob("_manifest.json"))
    return run


# --- the run fails before its first step -------------------------------------------------------------------


def test_an_unset_pseudonym_key_fails_the_run_in_under_a_second_before_anything_is_extracted(
    shop, monkeypatch
):
    write(shop)
    # The same process validated the pipeline first: the modules a command imports once are loaded, so
    # what is timed is the run itself (today's failure came from the Spark job, after the extract).
    assert "shop: valid" in run_command("validate_pipeline", "--pipeline", "shop")
    monkeypatch.delenv(KEY_ENV)
    started = time.monotonic()
    with pytest.raises(CommandError) as raised:
        run_command("run_pipeline", "--pipeline", "shop", "--date", DAY)
    took = time.monotonic() - started

    message = str(raised.value)
    assert (
        f"[spark] pseudonym_key_env: environment variable {KEY_ENV} (or {KEY_ENV}_FILE) is not set" in message
    )
    assert message.startswith(f"{shop['dir'] / 'shop.toml'}: ")
    assert took < 1.0, f"the run took {took:.2f} s to refuse"
    assert_failed_before_extract(shop, message)


def test_a_missing_job_module_fails_the_run_before_anything_is_extracted(shop):
    write(shop, job="spark_jobs.sales_nightly")
    with pytest.raises(
        CommandError, match=r"\[spark\] job: spark job module 'spark_jobs\.sales_nightly' not found"
    ):
        run_command("run_pipeline", "--pipeline", "shop", "--date", DAY)
    assert_failed_before_extract(shop, PipelineRun.objects.latest("id").error)


def test_a_job_outside_the_jobs_package_or_without_a_contract_is_refused(shop):
    write(shop, job="os.path")
    with pytest.raises(
        CommandError, match=r"\[spark\] job: spark job 'os\.path' must be a module of the spark_jobs"
    ):
        run_command("validate_pipeline", "--pipeline", "shop")
    write(shop, job="spark_jobs.quality")  # a real module, but no job: it declares no contract
    with pytest.raises(
        CommandError, match=r"'spark_jobs\.quality' declares no contract in spark_jobs/contract\.py"
    ):
        run_command("validate_pipeline", "--pipeline", "shop")


def test_a_dataset_or_column_the_job_reads_but_the_pipeline_lacks_fails_the_run_naming_them(shop):
    datasets = sales_datasets(shop["data"])
    del datasets["stores"]
    del datasets["order_lines"]["columns"]["unit_price"]
    write(shop, datasets=datasets)
    with pytest.raises(CommandError) as raised:
        run_command("run_pipeline", "--pipeline", "shop", "--date", DAY)
    message = str(raised.value)
    assert "[datasets]: spark_jobs.sales_daily reads a dataset 'stores', not declared" in message
    assert (
        "[datasets.order_lines.columns]: spark_jobs.sales_daily reads column(s) unit_price, not declared"
        in message
    )
    assert_failed_before_extract(shop, message)


def test_the_options_decide_which_inputs_and_columns_the_job_needs(shop):
    # Derived stores, lines numbered by row, one currency, a customer id for the pseudonym: the pipeline
    # needs no stores dataset, no line_number or currency column, but the customer_id column.
    datasets = sales_datasets(shop["data"])
    del datasets["stores"]
    for column in ("line_number", "currency"):
        del datasets["order_lines"]["columns"][column]
    datasets["order_lines"]["key"] = ["order_id"]
    options = {
        "stores": {"derive_from": "order_lines"},
        "line_number_from": "row",
        "currency": "EUR",
        "customer_key_from": "customer_id",
    }
    write(shop, datasets=datasets, spark={"options": options})
    with pytest.raises(CommandError) as raised:
        run_command("validate_pipeline", "--pipeline", "shop")
    assert str(raised.value).endswith("reads column(s) customer_id, not declared")

    datasets["order_lines"]["columns"]["customer_id"] = {}
    write(shop, datasets=datasets, spark={"options": options})
    assert "shop: valid" in run_command("validate_pipeline", "--pipeline", "shop")

    datasets["stores"] = sales_datasets(shop["data"])["stores"]  # declared, yet the options derive it
    write(shop, datasets=datasets, spark={"options": options})
    with pytest.raises(CommandError, match=r"\[datasets\.stores\]: .* derives stores from the lines"):
        run_command("validate_pipeline", "--pipeline", "shop")


def test_the_rates_dataset_an_option_names_must_be_declared_with_its_columns(shop):
    write(shop, spark={"options": {"rates": {"dataset": "rates"}}})
    with pytest.raises(CommandError, match=r"reads a dataset 'rates', not declared"):
        run_command("validate_pipeline", "--pipeline", "shop")


def test_an_unset_source_secret_variable_fails_the_run_before_anything_is_extracted(shop, monkeypatch):
    datasets = sales_datasets(shop["data"])
    datasets["rates"] = {
        **datasets["products"],
        "source": {
            "kind": "rest",
            "base_url": "http://127.0.0.1:9",
            "auth": {"type": "bearer", "token_env": "PREFLIGHT_TEST_TOKEN"},
        },
    }
    write(shop, datasets=datasets)
    monkeypatch.delenv("PREFLIGHT_TEST_TOKEN", raising=False)
    with pytest.raises(
        CommandError,
        match=r"\[datasets\.rates\.source\]: environment variable PREFLIGHT_TEST_TOKEN "
        r"\(or PREFLIGHT_TEST_TOKEN_FILE\) is not set",
    ):
        run_command("run_pipeline", "--pipeline", "shop", "--date", DAY)
    assert_failed_before_extract(shop, PipelineRun.objects.latest("id").error)


# --- [spark.options]: checked when the file is read -------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (
            {"rate": {"dataset": "rates"}},
            "[spark.options]: unknown key 'rate' (did you mean 'rates'? known: line_types, return_when, ",
        ),
        (
            {"rates": {"datset": "rates"}},
            "[spark.options.rates]: unknown key 'datset' (did you mean 'dataset'? known: dataset)",
        ),
        (
            {"line_types": [{"type": "postage", "sku": ["POST"]}]},
            "[spark.options.line_types[0]]: unknown key 'sku' (did you mean 'skus'? known: type, skus, ",
        ),
        ({"currency": 1}, "[spark.options]: currency must be text, got 1"),
        ({"line_number_from": "file"}, "[spark.options]: line_number_from 'file' is not one of column, row"),
    ],
)
def test_an_unknown_or_mistyped_spark_option_fails_when_the_file_is_read(shop, options, expected):
    path = write(shop, spark={"options": options})
    for command, args in (("validate_pipeline", ()), ("extract", ("--date", DAY))):
        with pytest.raises(CommandError) as raised:
            run_command(command, "--pipeline", "shop", *args)
        assert str(raised.value).startswith(f"{path} {expected}")
    # Even a run that does not transform refuses it: the file is wrong, whatever the step.
    assert_failed_before_extract(shop, PipelineRun.objects.latest("id").error)


# --- Java, as spark-submit will find it -------------------------------------------------------------------


def test_a_java_too_old_on_java_home_fails_the_transform_naming_what_was_found_and_what_is_needed(
    shop, tmp_path, monkeypatch
):
    write(shop)
    java = fake_java(tmp_path / "jdk-11" / "bin", 'openjdk version "11.0.2" 2019-01-15')
    monkeypatch.setenv("JAVA_HOME", str(java.parent.parent))
    expected = (
        f"Spark needs Java 17 or newer: found Java 11 at {java} (from JAVA_HOME): "
        'openjdk version "11.0.2" 2019-01-15'
    )
    with pytest.raises(CommandError) as raised:
        run_command("transform", "--pipeline", "shop", "--date", DAY)
    assert str(raised.value) == f"{shop['dir'] / 'shop.toml'}: {expected}"
    assert_failed_before_extract(shop, str(raised.value))


def test_a_java_8_first_on_path_is_too_old(shop, tmp_path, monkeypatch):
    write(shop)
    java = fake_java(tmp_path / "bin", 'java version "1.8.0_392"')
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", f"{java.parent}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(CommandError, match=rf"found Java 8 at {java} \(from PATH\)"):
        run_command("validate_pipeline", "--pipeline", "shop")


def test_no_java_at_all_is_named_as_such(shop, tmp_path, monkeypatch):
    write(shop)
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(
        CommandError, match=r"Spark needs Java 17 or newer: no java found \(JAVA_HOME is not set"
    ):
        run_command("run_pipeline", "--pipeline", "shop", "--date", DAY)
    assert_failed_before_extract(shop, PipelineRun.objects.latest("id").error)

    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "no-such-jdk"))
    with pytest.raises(CommandError, match=r"JAVA_HOME is .*no-such-jdk, which has no executable bin/java"):
        run_command("validate_pipeline", "--pipeline", "shop")


def test_a_recent_java_passes_and_validate_names_it(shop, tmp_path, monkeypatch):
    write(shop)
    java = fake_java(tmp_path / "jdk-21" / "bin", 'openjdk version "21.0.4" 2024-07-16')
    monkeypatch.setenv("JAVA_HOME", str(java.parent.parent))
    assert f"(Java 21 at {java})" in run_command("validate_pipeline", "--pipeline", "shop")


# --- validate_pipeline ------------------------------------------------------------------------------------


def test_validate_prints_the_plan_of_yesterday_without_secrets_and_writes_nothing(shop, monkeypatch):
    datasets = sales_datasets(shop["data"])
    datasets["rates"] = {
        **datasets["products"],
        "source": {
            "kind": "rest",
            "base_url": "http://127.0.0.1:9",
            "path": "/rates",
            "auth": {"type": "bearer", "token_env": "PREFLIGHT_TEST_TOKEN"},
        },
    }
    datasets["rates"]["columns"] = {"currency": {}, "rate": {"type": "decimal(18,8)"}}
    datasets["rates"]["key"] = ["currency"]
    write(shop, datasets=datasets, spark={"options": {"rates": {"dataset": "rates"}}})
    monkeypatch.setenv("PREFLIGHT_TEST_TOKEN", "tok-do-not-print")
    monkeypatch.setenv(KEY_ENV, "key-do-not-print")
    runs = PipelineRun.objects.count()

    output = run_command("validate_pipeline", "--pipeline", "shop")

    assert output.startswith(f"shop: valid ({shop['dir'] / 'shop.toml'})")
    assert "tok-do-not-print" not in output and "key-do-not-print" not in output
    assert "extract rates: rest source rest:GET http://127.0.0.1:9/rates" in output
    assert "secrets from PREFLIGHT_TEST_TOKEN (set)" in output
    assert f"extract products: file source file:{shop['data']}/products_{{date:%Y%m%d}}.csv" in output
    assert f"pseudonym key from {KEY_ENV} (set)" in output
    assert "outputs sales_lines, products, stores, customers, quarantine" in output
    assert "load: into warehouse database alias 'default'" in output
    assert "window " in output and "staged to " in output and "/shop/transformed/date=" in output
    assert PipelineRun.objects.count() == runs  # not even a run record
    assert not Path(shop["staging"]).exists() or not any(Path(shop["staging"]).rglob("*"))


def test_validate_all_reports_one_line_per_invalid_pipeline_and_prints_the_valid_ones(shop, monkeypatch):
    write(shop)
    pipeline_write(shop["dir"], "broken", datasets=sales_datasets(shop["data"]), job="spark_jobs.nope")
    (shop["dir"] / "unparsable.toml").write_text('name = "unparsable"\n[spark]\njob = \n')
    with pytest.raises(CommandError) as raised:
        out = StringIO()
        call_command("validate_pipeline", "--all", stdout=out, stderr=StringIO())
    lines = str(raised.value).splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(
        f"{shop['dir'] / 'broken.toml'}: [spark] job: spark job module 'spark_jobs.nope'"
    )
    assert lines[1].startswith(f"{shop['dir'] / 'unparsable.toml'}: cannot read pipeline file")
    assert "shop: valid" in out.getvalue() and "broken: INVALID" in out.getvalue()


@pytest.mark.parametrize("pipeline", ["retail_demo", "online_retail"])
def test_every_shipped_pipeline_validates_and_an_unset_variable_is_a_finding(pipeline, settings, monkeypatch):
    settings.ETL_PIPELINE_PATHS = [settings.BASE_DIR / "conf" / "pipelines"]
    for name in (KEY_ENV, "ETL_DEMO_API_TOKEN", "ETL_PII_KEYS"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(
        CommandError, match=rf"environment variable {KEY_ENV} \(or {KEY_ENV}_FILE\) is not set"
    ) as raised:
        run_command("validate_pipeline", "--pipeline", pipeline)
    # Only the demo encrypts a column (the e-mail's copy): only it needs the Fernet keys.
    assert ("environment variable ETL_PII_KEYS (or ETL_PII_KEYS_FILE) is not set" in str(raised.value)) == (
        pipeline == "retail_demo"
    )

    output = run_command("validate_pipeline", "--pipeline", pipeline, "--demo-defaults")
    assert f"{pipeline}: valid" in output
    assert output.startswith("demo values for unset ") and KEY_ENV in output.splitlines()[0]
    assert "demo-pseudonym-key-not-a-secret" not in output and DEMO_PII_KEYS not in output
    assert KEY_ENV not in os.environ and "ETL_PII_KEYS" not in os.environ  # for the validation only


def test_make_check_passes_on_the_shipped_pipelines_without_their_secrets_set(tmp_path):
    make = shutil.which("make")
    if make is None:
        skip_or_fail_in_ci("make is not installed", "make")
    venv = Path(sys.prefix)
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in (KEY_ENV, "ETL_DEMO_API_TOKEN", "DJANGO_SETTINGS_MODULE")
    }
    env["ETL_VAR_DIR"] = str(tmp_path / "var")
    # -o: the test's environment is installed already; make must not reinstall it.
    proc = subprocess.run(
        [make, "check", f"VENV={venv}", "-o", str(venv / ".installed")],
        cwd=settings.BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "retail_demo: valid" in proc.stdout and "online_retail: valid" in proc.stdout
    assert not (tmp_path / "var" / "staging").exists()  # validation wrote nothing


def test_every_spark_option_the_sales_job_declares_is_documented_and_no_other():
    from etlcore.config import spark_options_schema
    from tests.etlcore.test_config_schema import documented_keys

    declared = spark_options_schema("spark_jobs.sales_daily")
    assert declared is not None
    assert documented_keys("### `[spark.options]` of `spark_jobs.sales_daily`") == set(declared.keys)


def test_a_spark_submit_that_is_not_there_is_named(shop, settings, tmp_path):
    write(shop)
    settings.ETL_SPARK_SUBMIT = str(tmp_path / "spark-3" / "bin" / "spark-submit")
    with pytest.raises(
        CommandError, match=r"spark-submit .*spark-3/bin/spark-submit is not an executable file"
    ):
        run_command("validate_pipeline", "--pipeline", "shop")


# --- the Dask engine: no Java, its module and packages, its scheduler ---------------------------------------


def test_a_dask_pipeline_needs_no_java_and_no_spark_submit_but_auto_needs_both(
    shop, tmp_path, monkeypatch, settings
):
    java = fake_java(tmp_path / "jdk-11" / "bin", 'openjdk version "11.0.2" 2019-01-15')
    monkeypatch.setenv("JAVA_HOME", str(java.parent.parent))
    settings.ETL_SPARK_SUBMIT = str(tmp_path / "no-spark" / "spark-submit")
    write(shop, top='engine = "dask"')
    output = run_command("validate_pipeline", "--pipeline", "shop")
    assert "shop: valid" in output
    assert "transform: spark_jobs.sales_daily_dask on Dask (Dask's threaded scheduler" in output

    write(shop, top='engine = "auto"')  # a date above [dask] max_rows runs on Spark: Spark must be there
    with pytest.raises(CommandError) as raised:
        run_command("run_pipeline", "--pipeline", "shop", "--date", DAY)
    assert "no-spark/spark-submit is not an executable file" in str(raised.value)
    assert f"Spark needs Java 17 or newer: found Java 11 at {java}" in str(raised.value)
    assert_failed_before_extract(shop, str(raised.value))


def test_a_scheduler_that_does_not_answer_fails_the_run_before_anything_is_extracted(shop):
    with socket.socket() as listener:  # a scheduler's port accepts connections: the preflight asks no more
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        address = f"tcp://127.0.0.1:{listener.getsockname()[1]}"
        write(shop, top='engine = "dask"', tables=f'[dask]\nscheduler_address = "{address}"\n')
        assert f"on Dask ({address}, in a process of its own)" in run_command(
            "validate_pipeline", "--pipeline", "shop"
        )
    # Closed: nothing listens there any more.
    with pytest.raises(CommandError) as raised:
        run_command("run_pipeline", "--pipeline", "shop", "--date", DAY)
    assert str(raised.value).startswith(
        f"{shop['dir'] / 'shop.toml'}: [dask] scheduler_address: no scheduler answers at {address} ("
    )
    assert_failed_before_extract(shop, str(raised.value))
