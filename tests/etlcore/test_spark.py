"""spark-submit's command is stored and logged with the values of secret-looking `--conf` keys masked."""

from __future__ import annotations

from pathlib import Path

import pytest

from etlcore.config import pipeline_parse
from etlcore.errors import SparkJobError
from etlcore.spark import _properties_escape, job_submit, mask_command
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


@pytest.mark.parametrize("key_from", ["variable", "file"])
def test_a_failed_submit_logs_and_records_its_command_without_the_secrets(
    tmp_path, settings, monkeypatch, key_from
):
    # A real process in spark-submit's place records what it was given: arguments, environment, the
    # properties file's mode and content.
    seen = tmp_path / "seen"
    seen.mkdir()
    fake = tmp_path / "spark-submit"
    fake.write_text(
        "#!/bin/sh\n"
        f"env > {seen}/env\n"
        'while [ $# -gt 0 ]; do [ "$1" = --properties-file ] && '
        f'stat -c %a "$2" > {seen}/mode && cp "$2" {seen}/properties; shift; done\n'
        "echo 'spark_jobs.sales_daily failed'\nexit 3\n"
    )
    fake.chmod(0o755)
    settings.ETL_SPARK_SUBMIT = str(fake)
    monkeypatch.setenv("DATABASE_URL", "postgres://etl:db-CANARY@db/etl")
    monkeypatch.setenv("DJANGO_SECRET_KEY", "django-CANARY")
    if key_from == "file":  # the job reads variables only: it gets the file's content as the variable
        (tmp_path / "key").write_text("pseudonym-key\n")
        monkeypatch.delenv("ETL_PSEUDONYM_KEY", raising=False)
        monkeypatch.setenv("ETL_PSEUDONYM_KEY_FILE", str(tmp_path / "key"))
        (tmp_path / "db").write_text("postgres://etl:db-CANARY@db/etl")
        monkeypatch.setenv("DATABASE_URL_FILE", str(tmp_path / "db"))
    else:
        monkeypatch.setenv("ETL_PSEUDONYM_KEY", "pseudonym-key")
    monkeypatch.setenv("JOB_NEEDS_THIS", "declared")
    monkeypatch.setenv("ETL_PII_KEYS", "pii-keys-CANARY")
    products = dataset("/nowhere/products.csv", sku={"from": "SKU", "required": True})
    toml = pipeline_write(
        tmp_path,
        datasets={"products": products},
        spark_conf={**CONF, "spark.executorEnv.API_TOKEN": "env-SECRET"},
        spark={"env": ["JOB_NEEDS_THIS"]},
        database="default",
        staging=tmp_path / "staging",
    )
    config = pipeline_parse(toml)
    log_path = tmp_path / "logs" / "transform.log"

    with pytest.raises(SparkJobError, match="exit code 3") as exc:
        job_submit(config, spec={}, work_dir=tmp_path, log_path=log_path)

    command = exc.value.facts["command"]
    assert command[0] == str(fake)
    assert "spark.sql.shuffle.partitions=3" in command
    logged = log_path.read_text()
    assert logged.startswith(f"$ {fake} ")
    for secret in ("s3-SECRET", "AKIA-ACCESS", "env-SECRET"):
        assert secret not in " ".join(command) and secret not in logged
    # The secrets reached spark-submit in a file only the user could read, removed after the submit.
    assert (seen / "mode").read_text().strip() == "600"
    assert (seen / "properties").read_text().splitlines() == [
        "spark.hadoop.fs.s3a.secret.key=s3-SECRET",
        "spark.hadoop.fs.s3a.access.key=AKIA-ACCESS",
        "spark.executorEnv.API_TOKEN=env-SECRET",
    ]
    properties_path = command[command.index("--properties-file") + 1]
    assert not Path(properties_path).exists()
    # The child's environment is an allow-list: the job's variables, none of the project's secrets.
    env = dict(line.split("=", 1) for line in (seen / "env").read_text().splitlines() if "=" in line)
    assert env["ETL_PSEUDONYM_KEY"] == "pseudonym-key" and env["JOB_NEEDS_THIS"] == "declared"
    assert "PATH" in env and "PYSPARK_PYTHON" in env
    assert "CANARY" not in (seen / "env").read_text() and "_FILE" not in (seen / "env").read_text()
    # The job passes encrypted columns' tokens through: the Fernet keys stay out of its environment.
    assert "ETL_PII_KEYS" not in env


@pytest.mark.parametrize(
    ("text", "as_key", "written"),
    [
        ("plain", False, "plain"),
        ("a=b:c d", True, "a\\=b\\:c\\ d"),
        ("a=b:c d", False, "a=b:c d"),
        (" lead", False, "\\ lead"),
        ("#not-a-comment", False, "\\#not-a-comment"),
        ("back\\slash\nnew", False, "back\\\\slash\\nnew"),
        ("pässwörd", False, "pässwörd"),
    ],
)
def test_properties_values_are_escaped_as_java_reads_them(text, as_key, written):
    assert _properties_escape(text, key=as_key) == written
