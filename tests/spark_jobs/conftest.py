"""Spark job tests: the shared session, tuned for many tiny queries."""

from __future__ import annotations

import pytest

# Compiling generated code costs more than it saves on a few rows; results are the same either way
# (the spark-submit end-to-end test runs with code generation on).
_TINY_DATA_CONF = {
    "spark.sql.codegen.wholeStage": "false",
    "spark.sql.codegen.factoryMode": "NO_CODEGEN",
}


@pytest.fixture(scope="package", autouse=True)
def _tiny_data_conf(spark):
    previous = {k: spark.conf.get(k, None) for k in _TINY_DATA_CONF}
    for key, value in _TINY_DATA_CONF.items():
        spark.conf.set(key, value)
    yield
    for key, value in previous.items():
        if value is None:
            spark.conf.unset(key)
        else:
            spark.conf.set(key, value)
