"""deploy/: the Grafana dashboard and the Prometheus alert rules name only metrics the project writes, the
rules pass `promtool check rules` and their unit tests, and a real failed run's metrics make EtlRunFailed
fire until a run that succeeds replaces them (promtool from Debian's `prometheus` package)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from datetime import UTC, date, datetime
from io import StringIO
from pathlib import Path

import pytest
import yaml
from django.core.management import CommandError, call_command
from prometheus_client.parser import text_string_to_metric_families

from etlcore.metrics import metrics_registry
from etlcore.models import PipelineRun, RunStatus
from etlcore.selectors import Freshness
from tests.conftest import skip_or_fail_in_ci
from tests.pipelines import dataset, pipeline_write

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "deploy" / "grafana" / "etl-dashboard.json"
RULES = ROOT / "deploy" / "prometheus" / "etl-alerts.yml"
RULES_TEST = ROOT / "deploy" / "prometheus" / "etl-alerts.test.yml"
METRIC = re.compile(r"\betl_[a-zA-Z0-9_:]*")
DAY = date(2026, 11, 1)


def written_names() -> set[str]:
    """The series names etlcore.metrics writes, from the families of a registry it builds (a counter's
    samples are its name + `_total`)."""
    run = PipelineRun(id=1, pipeline="p", status=RunStatus.SUCCEEDED, started_at=datetime.now(UTC))
    registry = metrics_registry(run=run, steps=[], freshness=Freshness(last_loaded=None, last_success=None))
    return {f.name + ("_total" if f.type == "counter" else "") for f in registry.collect()}


def dashboard_expressions() -> list[str]:
    board = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    found = [t["expr"] for panel in board["panels"] for t in panel.get("targets", [])]
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            found.append(query["query"] if isinstance(query, dict) else query)
    return found


def rule_expressions() -> dict[str, str]:
    doc = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return {rule["alert"]: rule["expr"] for group in doc["groups"] for rule in group["rules"]}


def test_every_metric_the_dashboard_and_the_alert_rules_name_is_one_the_project_writes():
    written = written_names()
    named_by_board = {name for expr in dashboard_expressions() for name in METRIC.findall(expr)}
    named_by_rules = {name for expr in rule_expressions().values() for name in METRIC.findall(expr)}
    assert named_by_board - written == set()
    assert named_by_rules - written == set()
    # What the dashboard is for: runs and their status, durations, rows, quarantine, freshness.
    assert {
        "etl_run_success",
        "etl_run_duration_seconds",
        "etl_step_duration_seconds",
        "etl_dataset_rows",
        "etl_pipeline_last_loaded_business_date_timestamp_seconds",
        "etl_pipeline_last_success_timestamp_seconds",
    } <= named_by_board
    assert set(rule_expressions()) == {
        "EtlRunFailed",
        "EtlNoSuccess26h",
        "EtlFreshnessBehind",
        "EtlQuarantineRateHigh",
    }


def test_the_dashboard_is_grafana_json_whose_panels_use_its_datasource_variable():
    board = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert (
        variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    )
    assert board["uid"] and board["title"] and isinstance(board["schemaVersion"], int)
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"]) and panel["targets"], panel["title"]
        assert all(t["datasource"]["uid"] == "${datasource}" and t["refId"] for t in panel["targets"])


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        skip_or_fail_in_ci(
            "promtool is not installed (apt-get install prometheus, or `make test-deps` as root)", "promtool"
        )
    return found


def test_promtool_accepts_the_rules_and_their_unit_tests_pass():
    for args in (["check", "rules", str(RULES)], ["test", "rules", str(RULES_TEST)]):
        done = subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "SUCCESS" in done.stdout


def test_the_unit_tests_make_every_alert_fire_and_not_fire():
    doc = yaml.safe_load(RULES_TEST.read_text(encoding="utf-8"))
    fires, silent = set(), set()
    for test in doc["tests"]:
        pipelines = {re.search(r'pipeline="([^"]+)"', s["series"])[1] for s in test["input_series"]}
        for check in test["alert_rule_test"]:
            named = {alert["exp_labels"]["pipeline"] for alert in check["exp_alerts"]}
            if named:
                fires.add(check["alertname"])
            if pipelines - named:  # a pipeline with series for which the alert must not fire
                silent.add(check["alertname"])
    assert fires == silent == set(rule_expressions())


# --- the newcomer's path: break a source, the alert fires; fix it, it clears ---------------------------


def shop(pipeline_dir: Path, data: Path) -> None:
    products = dataset(f"{data}/products_{{date:%Y%m%d}}.csv", sku={"required": True}, name={})
    pipeline_write(pipeline_dir, datasets={"products": products}, staging=data.parent / "staging")


def extract() -> PipelineRun:
    try:
        call_command("extract", "--pipeline", "shop", "--date", DAY.isoformat(), stdout=StringIO())
    except CommandError:
        pass
    return PipelineRun.objects.latest("id")


def samples(path: Path) -> dict[str, float]:
    """The textfile's samples as promtool series selectors."""
    out = {}
    for family in text_string_to_metric_families(path.read_text(encoding="utf-8")):
        for s in family.samples:
            labels = ", ".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}"] = s.value
    return out


@pytest.mark.django_db
def test_a_real_failed_run_fires_EtlRunFailed_in_promtool_until_a_run_that_succeeds_replaces_it(
    pipeline_dir, tmp_path, settings
):
    settings.ETL_METRICS_TEXTFILE_DIR, settings.ETL_PUSHGATEWAY_URL = tmp_path / "textfile", ""
    data = tmp_path / "data"
    data.mkdir()
    shop(pipeline_dir, data)
    prom = tmp_path / "textfile" / "etl_shop.prom"
    failed = extract()  # the products export is missing: the run fails at its extract step
    broken = samples(prom)
    (data / f"products_{DAY:%Y%m%d}.csv").write_text("sku,name\nP1,Mug\n")  # the export arrives
    fixed_run = extract()
    fixed = samples(prom)
    assert (failed.status, fixed_run.status) == (RunStatus.FAILED, RunStatus.SUCCEEDED)

    # 15 minutes of the failed run's file as scraped every minute, then 15 of the fixed run's.
    def values(v: float | None, times: int) -> str:
        return f"{v}x{times}" if v is not None else f"_x{times}"  # _: no sample (not in that file)

    series = [
        {"series": name, "values": f"{values(broken.get(name), 14)} {values(fixed.get(name), 15)}"}
        for name in sorted(broken.keys() | fixed.keys())
    ]
    rule = next(
        r
        for g in yaml.safe_load(RULES.read_text())["groups"]
        for r in g["rules"]
        if r["alert"] == "EtlRunFailed"
    )
    annotations = {
        key: text.replace("{{ $labels.pipeline }}", "shop").replace("{{ $value }}", str(failed.pk))
        for key, text in rule["annotations"].items()
    }
    unit_test = {
        "rule_files": [str(RULES)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": series,
                "alert_rule_test": [
                    {
                        "eval_time": "10m",
                        "alertname": "EtlRunFailed",
                        "exp_alerts": [
                            {
                                "exp_labels": {"pipeline": "shop", **rule["labels"]},
                                "exp_annotations": annotations,
                            }
                        ],
                    },
                    {"eval_time": "25m", "alertname": "EtlRunFailed", "exp_alerts": []},
                ],
            }
        ],
    }
    path = tmp_path / "failed-run.test.yml"
    path.write_text(json.dumps(unit_test))  # JSON is YAML
    done = subprocess.run(
        [promtool(), "test", "rules", str(path)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
