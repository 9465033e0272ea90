"""The ops console in a real browser: Playwright driving Debian's Chromium headless (`make test-deps`
installs it; never `playwright install`). The site is `manage.py runserver` over a SQLite file, so the
re-run the console starts in the background (another process) writes to the database the page reads.

A failing test leaves a screenshot and the page's HTML in the folder its report names."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.conf import settings

from tests.conftest import skip_or_fail_in_ci
from tests.pipelines import pipeline_write, sales_datasets

from .console_seed import FAILED_ERROR, OPERATOR, PASSWORD

# Debian's Chromium; ETL_TEST_CHROMIUM names another build (or a missing one, to see the skip).
CHROMIUM = Path(os.environ.get("ETL_TEST_CHROMIUM", "/usr/bin/chromium"))
INSTALL = "`make test-deps` (as root) installs Chromium, `make install` the playwright package"
TIMEOUT = 60

pytestmark = pytest.mark.browser


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        skip_or_fail_in_ci(f"browser tests: the playwright package is not installed; {INSTALL}", "browser")
    if not CHROMIUM.exists():
        skip_or_fail_in_ci(f"browser tests: no Chromium at {CHROMIUM}; {INSTALL}", "browser")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"]
        )
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def site(browser, tmp_path_factory):
    """The console served by `manage.py runserver` over a migrated, seeded SQLite file; a pipeline `shop`
    whose sources do not exist, so a re-run fails at extract within a second."""
    root = tmp_path_factory.mktemp("console")
    pipelines = root / "pipelines"
    pipelines.mkdir()
    pipeline_write(pipelines, datasets=sales_datasets(root / "missing"), staging=root / "staging")
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "conf.settings.local",
        "DATABASE_URL": f"sqlite:///{root / 'db.sqlite3'}",
        "ETL_VAR_DIR": str(root / "var"),
        "ETL_PIPELINE_PATH": str(pipelines),
        "ETL_PSEUDONYM_KEY": "browser-test-key",
        "PYTHONUNBUFFERED": "1",
    }
    manage = [sys.executable, str(Path(settings.BASE_DIR) / "manage.py")]
    seed = "from tests.etlcore.console_seed import seed; seed()"
    for args in (["migrate", "--no-input", "-v0"], ["shell", "-c", seed]):
        done = subprocess.run(
            [*manage, *args], env=env, cwd=settings.BASE_DIR, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
    port = _free_port()
    log = (root / "server.log").open("wb")
    server = subprocess.Popen(
        [*manage, "runserver", f"127.0.0.1:{port}", "--noreload"],
        env=env,
        cwd=settings.BASE_DIR,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + TIMEOUT
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert server.poll() is None, (root / "server.log").read_text()
            assert time.monotonic() < deadline, "runserver never listened"
            time.sleep(0.1)
    yield {"url": f"http://127.0.0.1:{port}", "root": root}
    server.terminate()
    server.wait(timeout=TIMEOUT)
    log.close()


@pytest.fixture
def page(browser, site, tmp_path):  # tmp_path: where a failure's screenshot goes (tests/conftest.py)
    """A logged-in operator's page (a fresh browser context per test)."""
    context = browser.new_context(base_url=site["url"])
    context.set_default_timeout(15_000)
    tab = context.new_page()
    tab.goto("/admin/login/?next=/admin/")
    tab.fill("#id_username", OPERATOR)
    tab.fill("#id_password", PASSWORD)
    tab.click("input[type=submit]")
    tab.wait_for_selector("#last-night")
    yield tab
    context.close()


def test_an_operator_finds_last_night_s_failure_its_error_and_reconciliation(page):
    from playwright.sync_api import expect

    panel = page.locator("#last-night")
    expect(panel.locator(".etl-badge.etl-failed")).to_be_visible()  # the index says last night failed
    page.goto("/admin/etlcore/pipelinerun/")
    expect(page.locator("svg.etl-chart-bars").first).to_be_visible()  # rows and duration per run
    expect(page.locator("svg.etl-chart-line")).to_be_visible()
    assert page.locator("svg.etl-chart-bars").first.locator("rect.etl-bar").count() == 3
    page.locator("#changelist-filter").get_by_role("link", name="failed", exact=True).click()
    expect(page.locator("#result_list tbody tr")).to_have_count(1)
    page.locator("#result_list tbody tr").first.locator("a").first.click()
    expect(page.locator("h1")).to_have_text(re.compile(r"^Pipeline run #\d+$"))
    expect(page.locator("#run-error")).to_contain_text(FAILED_ERROR)
    row = page.locator('#reconciliation tr[data-dataset="order_lines"]')
    expect(row).to_contain_text("959")
    expect(row).to_contain_text("cancelled 480")
    expect(row).to_contain_text("✓ 959")
    expect(page.locator("#log-transform")).to_contain_text("Py4JJavaError")


def test_an_operator_opens_the_quarantine_of_a_rule_with_personal_fields_masked(page):
    from playwright.sync_api import expect

    page.goto("/admin/warehouse/quarantinedrow/")
    page.locator("#changelist-filter").get_by_role("link", name="unknown_product", exact=True).click()
    expect(page.locator("#result_list tbody tr")).to_have_count(2)
    expect(page.locator("#quarantine-per-rule")).to_contain_text("unknown_product")
    page.locator("#result_list tbody tr").first.locator("a").first.click()
    record = page.locator("pre.etl-record")
    expect(record).to_contain_text('"customer_email": "•••"')
    expect(record).to_contain_text('"sku": "X0"')
    assert "PSEUDONYM-OF-ALICE" not in page.content()


def test_an_operator_re_runs_a_date_and_sees_the_new_run_appear(page):
    from playwright.sync_api import expect

    page.goto("/admin/etlcore/pipelinerun/?status__exact=failed")
    page.locator("#result_list tbody tr").first.locator("a").first.click()
    page.get_by_role("button", name="Re-run shop 2026-11-03").click()
    expect(page.locator(".messagelist")).to_contain_text("started in the background")
    # The background run records itself within seconds: reload until it is in the list.
    deadline = time.monotonic() + TIMEOUT
    while "admin (night-operator)" not in page.locator("#result_list").inner_text():
        assert time.monotonic() < deadline, "the re-run never appeared in the runs list"
        time.sleep(0.5)
        page.reload()
    newest = page.locator("#result_list tbody tr").first
    expect(newest).to_contain_text("admin (night-operator)")
    expect(newest).to_contain_text("Nov. 3, 2026")
