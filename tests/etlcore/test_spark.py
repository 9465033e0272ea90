"""spark-submit's command is stored and logged with the values of secret-looking `--conf` keys masked."""

from __future__ import annotations

import pytest

from etlcore.config import pipeline_parse
from etlcore.errors import SparkJobError
from etlcore.spark import job_submit, mask_command
from tests.pipelines import dataset, pipeline_write

CONF = {
    "spark.hadoop.fs.s3a.secret.key": "s3-SECRET",
    "spark.hadoop.fs.s3a.access.key": "AKIA-ACCESS",
    "spark.sql.shuffle.partitions": "3",
}


@pytest.mark.parametrize(
    "key",
    [
        "spark.hadoop.fs.s3a.secret.key",
        "spark.hadoop.fs.s3a.access.key",
        "spark.jdbc.password",
        "spark.hadoop.fs.gs.auth.token",
        "spark.hadoop.fs.azure.account.oauth2.client.Secret",
        "spark.some.credentials.provider",
    ],
)
def test_secret_looking_conf_values_are_masked_and_everything_else_is_kept(key):
    command = ["spark-submit", "--conf", f"{key}=hunter2=x", "--conf", "spark.ui.enabled=false", "job.py"]
    assert mask_command(command) == [
        "spark-submit",
        "--conf",
        f"{key}=***",
        "--conf",
        "spark.ui.enabled=false",
        "job.py",
    ]


def test_a_failed_submit_logs_and_records_its_command_without_the_secrets(tmp_path, settings):
    fake = tmp_path / "spark-submit"
    fake.write_text("#!/bin/sh\necho 'spark_jobs.sales_daily failed'\nexit 3\n")
    fake.chmod(0o755)
    settings.ETL_SPARK_SUBMIT = str(fake)
    products = dataset("/nowhere/products.csv", sku={"from": "SKU", "required": True})
    toml = pipeline_write(
        tmp_path,
        datasets={"products": products},
        spark_conf=CONF,
        database="default",
        staging=tmp_path / "staging",
    )
    config = pipeline_parse(toml)
    log_path = tmp_path / "logs" / "transform.log"

    with pytest.raises(SparkJobError, match="exit code 3") as exc:
        job_submit(config, spec={}, work_dir=tmp_path, log_path=log_path)

    command = exc.value.facts["command"]
    assert command[0] == str(fake)
    assert "spark.hadoop.fs.s3a.secret.key=***" in command
    assert "spark.hadoop.fs.s3a.access.key=***" in command
    assert "spark.sql.shuffle.partitions=3" in command
    logged = log_path.read_text()
    assert logged.startswith(f"$ {fake} ") and "spark.hadoop.fs.s3a.secret.key=***" in logged
    for secret in ("s3-SECRET", "AKIA-ACCESS"):
        assert secret not in " ".join(command) and secret not in logged
