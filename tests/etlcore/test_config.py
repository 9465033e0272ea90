from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest
from django.conf import settings

from etlcore.config import pipeline_load, pipeline_names, pipeline_parse
from etlcore.errors import ConfigurationError
from etlcore.services.transform import transform_contract
from spark_jobs.contract import SALES_DAILY
from tests.pipelines import dataset, pipeline_write

DEMO = Path(settings.BASE_DIR) / "conf" / "pipelines" / "retail_demo.toml"


def write_pipeline(folder: Path, name: str = "shop", *, sku_type: str = "string", **parts) -> Path:
    """A one-dataset pipeline reading products from ${DATA_DIR}; `parts` as in tests.pipelines."""
    products = parts.pop("products", {})
    declared = dataset("${DATA_DIR}/products.csv", sku={"from": "SKU", "type": sku_type, "required": True})
    return pipeline_write(folder, name, datasets={"products": declared | products}, **parts)


def test_demo_pipeline_file_parses_into_typed_datasets():
    config = pipeline_parse(DEMO, environ={})
    assert set(config.datasets) == {"order_lines", "products", "stores", "rates"}
    assert config.spark.options["rates"] == {"dataset": "rates"}
    lines = config.datasets["order_lines"]
    assert lines.explode == "lines"
    assert lines.key == ("order_id", "line_number")
    assert lines.spark_columns()["unit_price"] == {"type": "decimal(18,4)", "required": True}
    assert lines.source["base_url"] == "http://127.0.0.1:8765"  # the ${VAR:-default} fallback
    assert config.spark.master == "local[*]"


def test_environment_variables_fill_placeholders(tmp_path):
    config = pipeline_parse(write_pipeline(tmp_path), environ={"DATA_DIR": "/data/erp"})
    assert config.datasets["products"].source["path"] == "/data/erp/products.csv"


def test_unset_variable_without_default_names_file_and_variable(tmp_path):
    path = write_pipeline(tmp_path)
    with pytest.raises(ConfigurationError, match=r"shop\.toml: environment variable DATA_DIR is not set"):
        pipeline_parse(path, environ={})


def test_unknown_column_type_is_refused_with_its_location(tmp_path):
    path = write_pipeline(tmp_path, sku_type="varchar")
    with pytest.raises(
        ConfigurationError, match=r"\[datasets\.products\] column 'sku': unknown type 'varchar'"
    ):
        pipeline_parse(path, environ={"DATA_DIR": "/d"})


def test_key_must_be_a_declared_column(tmp_path):
    path = write_pipeline(tmp_path, products={"key": ["id"]})
    with pytest.raises(ConfigurationError, match=r"key column\(s\) \['id'\] are not declared"):
        pipeline_parse(path, environ={"DATA_DIR": "/d"})


def test_unknown_source_kind_lists_the_known_ones(tmp_path):
    path = write_pipeline(tmp_path, products={"source": {"kind": "ftp", "path": "products.csv"}})
    with pytest.raises(
        ConfigurationError, match=r"unknown kind 'ftp' \(expected one of: file, postgres, rest, s3\)"
    ):
        pipeline_parse(path, environ={"DATA_DIR": "/d"})


def test_pipelines_are_found_by_file_name(pipeline_dir, monkeypatch):
    monkeypatch.setenv("DATA_DIR", "/d")
    write_pipeline(pipeline_dir, "shop")
    assert pipeline_names() == ["shop"]
    assert pipeline_load("shop").name == "shop"
    with pytest.raises(ConfigurationError, match=r"unknown pipeline 'nope' \(known: shop\)"):
        pipeline_load("nope")


def test_window_is_the_business_day_in_the_pipeline_time_zone(tmp_path):
    path = write_pipeline(tmp_path, top='timezone = "Europe/Paris"')
    config = pipeline_parse(path, environ={"DATA_DIR": "/d"})
    window = config.window(date(2026, 3, 29))  # the day clocks go forward: 23 hours long
    assert window.start.isoformat() == "2026-03-29T00:00:00+01:00"
    assert window.end.isoformat() == "2026-03-30T00:00:00+02:00"
    assert window.end.timestamp() - window.start.timestamp() == 23 * 3600


def test_the_transform_step_takes_the_outputs_its_job_declares_and_refuses_an_undeclared_job(tmp_path):
    config = pipeline_parse(write_pipeline(tmp_path), environ={"DATA_DIR": "/d"})
    assert transform_contract(config=config) is SALES_DAILY

    path = write_pipeline(tmp_path, job="spark_jobs.weekly")
    other = pipeline_parse(path, environ={"DATA_DIR": "/d"})
    with pytest.raises(ConfigurationError, match=r"'shop': no output contract for job 'spark_jobs.weekly'"):
        transform_contract(config=other)


@pytest.mark.parametrize("shipped", ["retail_demo", "online_retail"])
def test_the_shipped_pipelines_stage_under_the_staging_root_setting(shipped, tmp_path, settings):
    settings.ETL_STAGING_ROOT = tmp_path / "elsewhere"  # e.g. moved by ETL_VAR_DIR or ETL_STAGING_ROOT
    config = pipeline_parse(DEMO.with_name(f"{shipped}.toml"), environ={})
    assert config.staging_root == tmp_path / "elsewhere"


@pytest.mark.parametrize(
    ("rule", "refused"),
    [
        ('check = "pattern"\ncolumn = "email"\npattern = ".+@.+"', True),
        ('check = "allowed"\ncolumn = "email"\nvalues = ["a@b.c"]', True),
        ('check = "required"\ncolumn = "customer_id"\nwhen = "email is not null and email = \'x\'"', True),
        ('check = "unique"\ncolumns = ["email"]\nwhen = "email is not null"', False),
    ],
)
def test_a_rule_cannot_read_the_text_of_a_personal_column_staged_as_its_pseudonym(tmp_path, rule, refused):
    customers = dataset(
        "/d/customers.csv",
        extra=f'[[datasets.customers.rules]]\ncode = "email_rule"\n{rule}\n',
        customer_id={"from": "ID"},
        email={"from": "Email", "pii": True},
    )
    path = pipeline_write(tmp_path, datasets={"customers": customers})
    if refused:
        refusal = r"'email_rule'.* (reads|compares) personal column 'email'"
        with pytest.raises(ConfigurationError, match=refusal):
            pipeline_parse(path)
    else:
        assert pipeline_parse(path).datasets["customers"].rules[0].code == "email_rule"


def test_ignore_fields_is_a_list_of_source_paths(tmp_path):
    ignoring = {"options": {"ignore_fields": ["customer.name", "Notes"]}}
    config = pipeline_parse(write_pipeline(tmp_path, products=ignoring), environ={"DATA_DIR": "/d"})
    assert config.datasets["products"].ignore_fields == ("customer.name", "Notes")
    assert pipeline_parse(DEMO, environ={}).datasets["order_lines"].ignore_fields == ("customer.name",)
    with pytest.raises(ConfigurationError, match=r"\[datasets.products\]: ignore_fields must be a list"):
        pipeline_parse(
            write_pipeline(tmp_path, products={"options": {"ignore_fields": "x"}}), environ={"DATA_DIR": "/d"}
        )
