"""Fixtures shared by the connector tests."""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import pytest

from connectors.base import ExtractWindow


@pytest.fixture
def window() -> ExtractWindow:
    """The business day 2026-11-01 in UTC."""
    return ExtractWindow(
        business_date=date(2026, 11, 1),
        start=datetime(2026, 11, 1, tzinfo=UTC),
        end=datetime(2026, 11, 2, tzinfo=UTC),
    )


@dataclass
class SourceDb:
    conn: Any
    schema: str
    url: str

    def execute(self, statement: str, params: Any = None) -> None:
        with self.conn.cursor() as cursor:
            cursor.execute(statement, params)


@dataclass
class S3Bucket:
    client: Any
    name: str
    endpoint: str

    def put(self, key: str, body: bytes) -> None:
        self.client.put_object(Bucket=self.name, Key=key, Body=body)


# --- a source PostgreSQL database -----------------------------------------------------------------------


@pytest.fixture(scope="session")
def source_pg_url() -> Iterator[str]:
    """URL of a database created for this session on the suite's PostgreSQL server, dropped at the end.

    The name carries the process id, so two sessions on one server never share it."""
    from django.conf import settings

    from tests.conftest import _postgres_or_skip

    _postgres_or_skip()
    import psycopg2
    import psycopg2.extensions
    from psycopg2 import sql

    server = settings.POSTGRES_URL
    name = f"dse_source_test_{os.getpid()}"
    admin = psycopg2.connect(server)
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        cursor.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    parts = psycopg2.extensions.parse_dsn(server)
    parts["dbname"] = name
    try:
        yield psycopg2.extensions.make_dsn(**parts)
    finally:
        with admin.cursor() as cursor:
            cursor.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        admin.close()


@pytest.fixture
def source_db(source_pg_url, monkeypatch, request) -> Iterator[SourceDb]:
    """An autocommit connection to the source database with a fresh schema `src_<test>` on its search
    path; the URL is in SALES_DB_URL, the variable the tests' sources name in `dsn_env`."""
    import psycopg2
    from psycopg2 import sql

    schema = "src_" + re.sub(r"\W", "_", request.node.name.lower())[:50]
    conn = psycopg2.connect(source_pg_url)
    conn.autocommit = True
    with conn.cursor() as cursor:
        cursor.execute(
            sql.SQL("DROP SCHEMA IF EXISTS {0} CASCADE; CREATE SCHEMA {0}").format(sql.Identifier(schema))
        )
        cursor.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
    import psycopg2.extensions

    parts = psycopg2.extensions.parse_dsn(source_pg_url)
    dsn = psycopg2.extensions.make_dsn(**parts, options=f"-csearch_path={schema}")
    monkeypatch.setenv("SALES_DB_URL", dsn)
    try:
        yield SourceDb(conn=conn, schema=schema, url=dsn)
    finally:
        with conn.cursor() as cursor:
            cursor.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
        conn.close()


# --- an S3-protocol server ------------------------------------------------------------------------------

S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server on loopback for the session: boto3 speaks HTTP to it as it would to AWS."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint, monkeypatch, request) -> Iterator[S3Bucket]:
    """A new bucket for the test (its name from the test's), and a client for the test to fill it.

    Credentials are fake and come from the environment, the way the connector finds real ones."""
    import boto3

    for variable, value in S3_ENV.items():
        monkeypatch.setenv(variable, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:50].strip("-") + "-" + uuid.uuid4().hex[:8]
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    client.create_bucket(Bucket=name)
    yield S3Bucket(client=client, name=name, endpoint=s3_endpoint)
