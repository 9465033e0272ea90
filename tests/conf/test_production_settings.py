"""The production settings: no fallback for a secret or the database, and Django's deployment checks pass
with the variables the README documents."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def documented_environment() -> dict[str, str]:
    """The README's production environment block, with a real random secret key in its placeholder."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"<!-- production-env -->\n```sh\n(.*?)```", readme, re.DOTALL)
    assert block, "README.md lost its production-env block"
    env = {}
    for line in block.group(1).splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            env[name] = value
    env["DJANGO_SECRET_KEY"] = secrets.token_urlsafe(50)
    return env


def deploy_check(env: dict[str, str]) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "DATABASE_URL"))}
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_documented_production_environment_passes_the_deployment_checks():
    done = deploy_check(documented_environment())
    assert done.returncode == 0, done.stderr
    assert "no issues" in done.stdout


@pytest.mark.parametrize(
    ("dropped", "expected"),
    [
        ("DJANGO_HSTS_INCLUDE_SUBDOMAINS", "security.W005"),
        ("DJANGO_ALLOWED_HOSTS", "security.W020"),
    ],
)
def test_without_a_documented_variable_the_deployment_checks_fail(dropped, expected):
    env = documented_environment()
    del env[dropped]
    done = deploy_check(env)
    assert done.returncode != 0 and expected in done.stderr


@pytest.mark.parametrize("missing", ["DATABASE_URL", "DJANGO_SECRET_KEY"])
def test_production_without_its_database_or_secret_key_refuses_to_start(missing):
    env = documented_environment()
    del env[missing]
    done = deploy_check(env)
    assert done.returncode != 0
    assert f"environment variable {missing} (or {missing}_FILE) is required in production" in done.stderr


def test_secrets_may_come_from_files_the_variables_name_and_never_from_both(tmp_path):
    """Docker and Kubernetes secrets, systemd's LoadCredential=: `NAME_FILE` names a file holding the
    value; the deployment checks pass with it as with the variable."""
    env = documented_environment()
    for name in ("DJANGO_SECRET_KEY", "DATABASE_URL"):
        (tmp_path / name).write_text(env.pop(name) + "\n", encoding="utf-8")
        env[f"{name}_FILE"] = str(tmp_path / name)
    done = deploy_check(env)
    assert done.returncode == 0 and "no issues" in done.stdout, done.stderr

    env["DATABASE_URL"] = "postgres://etl:canary-password-4711@db:5432/etl"
    done = deploy_check(env)
    assert done.returncode != 0
    assert "environment variables DATABASE_URL and DATABASE_URL_FILE are both set: keep one" in done.stderr
    assert "canary-password-4711" not in done.stderr + done.stdout
