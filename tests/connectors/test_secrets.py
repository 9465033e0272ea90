"""Secrets from the environment or from the file `NAME_FILE` names (connectors.secrets), wherever the
project reads one: a source's credentials, the pseudonym key, and what the Spark job's environment gets."""

from __future__ import annotations

import pytest

from connectors.base import secret_from_env
from connectors.errors import ConfigurationError
from connectors.secrets import secret_get, secret_problem

CANARY = "canary-secret-93e1"


def test_a_secret_comes_from_its_variable_or_from_the_file_its_file_twin_names(tmp_path):
    path = tmp_path / "token"
    path.write_text(CANARY + "\n", encoding="utf-8")  # as `echo` and editors leave it
    assert secret_get("API_TOKEN", {"API_TOKEN": CANARY}) == CANARY
    assert secret_get("API_TOKEN", {"API_TOKEN_FILE": str(path)}) == CANARY
    assert secret_get("API_TOKEN", {}) == ""
    assert secret_problem("API_TOKEN", {"API_TOKEN_FILE": str(path)}) is None
    assert secret_problem("API_TOKEN", {}) == "environment variable API_TOKEN (or API_TOKEN_FILE) is not set"


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        (
            {"API_TOKEN": CANARY, "API_TOKEN_FILE": "{file}"},
            "environment variables API_TOKEN and API_TOKEN_FILE are both set: keep one",
        ),
        ({"API_TOKEN_FILE": "{missing}"}, "API_TOKEN_FILE: cannot read {missing}: No such file or directory"),
        ({"API_TOKEN_FILE": "{empty}"}, "API_TOKEN_FILE: {empty} is empty"),
    ],
    ids=["both", "missing-file", "empty-file"],
)
def test_a_secret_that_cannot_be_read_fails_in_one_line_naming_the_variable_never_the_value(
    tmp_path, environ, expected
):
    paths = {"file": tmp_path / "token", "missing": tmp_path / "nowhere", "empty": tmp_path / "empty"}
    paths["file"].write_text(CANARY, encoding="utf-8")
    paths["empty"].write_text("\n", encoding="utf-8")
    environ = {name: value.format(**paths) for name, value in environ.items()}
    with pytest.raises(ConfigurationError) as failed:
        secret_get("API_TOKEN", environ)
    assert str(failed.value) == expected.format(**paths)
    assert CANARY not in str(failed.value) and "\n" not in str(failed.value)
    assert secret_problem("API_TOKEN", environ) == expected.format(**paths)


def test_a_source_reads_its_credential_from_a_file_and_says_which_variable_is_missing(tmp_path, monkeypatch):
    path = tmp_path / "token"
    path.write_text(CANARY, encoding="utf-8")
    monkeypatch.delenv("SHOP_TOKEN", raising=False)
    monkeypatch.setenv("SHOP_TOKEN_FILE", str(path))
    assert secret_from_env("SHOP_TOKEN", source="orders", option="auth.token_env") == CANARY
    monkeypatch.delenv("SHOP_TOKEN_FILE")
    with pytest.raises(ConfigurationError) as failed:
        secret_from_env("SHOP_TOKEN", source="orders", option="auth.token_env")
    assert str(failed.value) == (
        "source 'orders': environment variable SHOP_TOKEN (auth.token_env) is not set (nor SHOP_TOKEN_FILE)"
    )
