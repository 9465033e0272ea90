"""Files private to the user that runs the pipeline (issue 14): everything the project writes is 0600,
every folder 0700, whatever the umask it runs under; lock and temporary files refuse a symbolic link.
Spark's output and log under an open umask: tests/test_end_to_end.py."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from datetime import date
from io import StringIO
from pathlib import Path

import pyarrow as pa
import pytest
from django.conf import settings
from django.core.management import CommandError, call_command

from etlcore.demo.api_server import start_demo_api
from etlcore.demo.generate import DEMO_API_TOKEN_DEFAULT, generate_demo_data
from etlcore.errors import UnsafePath
from etlcore.staging import PartitionRef, partitions_reading, raw_partition_write

DAY = date(2026, 11, 1)
UMASKS = [0o022, 0o000]


@pytest.fixture(params=UMASKS, ids=lambda mask: f"umask{mask:03o}")
def umask(request):
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


@pytest.fixture
def demo(tmp_path, monkeypatch, staging_root, settings):
    """The demo pipeline's sources and its orders API on loopback; lock files in the test's own folder."""
    monkeypatch.setenv("ETL_PSEUDONYM_KEY", "file-modes-test-key")
    data_dir = tmp_path / "demo"
    generate_demo_data(out_dir=data_dir, business_dates=[DAY])
    monkeypatch.setenv("ETL_DEMO_DIR", str(data_dir))
    monkeypatch.setenv("ETL_DEMO_API_TOKEN", DEMO_API_TOKEN_DEFAULT)
    settings.ETL_LOCK_DIR = tmp_path / "locks"
    with start_demo_api(orders_path=data_dir / "orders.jsonl", token=DEMO_API_TOKEN_DEFAULT) as api:
        monkeypatch.setenv("ETL_DEMO_API_URL", api.url)
        yield {"staging": staging_root, "locks": settings.ETL_LOCK_DIR}


def wide(root: Path) -> list[str]:
    """Everything under `root` (and `root` itself) that is not a 0700 folder or a 0600 regular file."""
    found = []
    for path in [root, *sorted(root.rglob("*"))]:
        info = path.lstat()
        mode = stat.S_IMODE(info.st_mode)
        expected = 0o700 if stat.S_ISDIR(info.st_mode) else 0o600 if stat.S_ISREG(info.st_mode) else None
        if mode != expected:
            found.append(f"{path.relative_to(root.parent)} {mode:04o}")
    return found


def run_command(name: str, *args: str) -> str:
    out = StringIO()
    call_command(name, *args, stdout=out, stderr=StringIO())
    return out.getvalue()


@pytest.mark.django_db
def test_extract_writes_only_private_files_and_folders_whatever_the_umask(demo, umask):
    run_command("extract", "--pipeline", "retail_demo", "--date", DAY.isoformat())

    staging = demo["staging"]
    assert len(list(staging.glob("retail_demo/raw/*/date=*/attempt-*/*.parquet"))) >= 3
    assert list(staging.glob("retail_demo/raw/*/date=*/.readers"))
    assert wide(staging) == []
    lock = demo["locks"] / "default-retail_demo.lock"
    assert stat.S_IMODE(lock.stat().st_mode) == 0o600
    assert os.umask(umask) == umask  # the run's private umask ended with it


def test_staging_sets_modes_itself_and_tightens_the_pipeline_s_folders_not_their_parent(tmp_path):
    """No run control here (so no private umask): the modes come from the staging code alone."""
    parent = tmp_path / "shared"
    parent.mkdir()
    root = parent / "staging"
    (root / "shop" / "raw").mkdir(parents=True)
    for folder in (parent, root, root / "shop", root / "shop" / "raw"):
        folder.chmod(0o755)
    ref = PartitionRef.raw(root, "shop", "products", DAY)
    schema = pa.schema([("sku", pa.string())])
    previous = os.umask(0)
    try:
        raw_partition_write(
            ref,
            schema=schema,
            batches=[pa.record_batch([pa.array(["A-1"])], schema=schema)],
            source="test",
            window={},
            run_id=None,
        )
        with partitions_reading([ref]):
            pass
    finally:
        os.umask(previous)

    assert wide(root / "shop") == []
    # The pipeline's folder is the project's own; the staging root and what holds it are the user's.
    assert stat.S_IMODE(root.stat().st_mode) == stat.S_IMODE(parent.stat().st_mode) == 0o755


@pytest.mark.django_db
def test_symlink_planted_at_the_pipeline_lock_is_refused_and_its_target_untouched(demo, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("must not change\n")
    victim.chmod(0o644)
    demo["locks"].mkdir()
    link = demo["locks"] / "default-retail_demo.lock"
    link.symlink_to(victim)

    with pytest.raises(CommandError) as failure:
        run_command("extract", "--pipeline", "retail_demo", "--date", DAY.isoformat())

    message = str(failure.value)
    assert "\n" not in message and str(link) in message and "symbolic link" in message
    assert victim.read_text() == "must not change\n"
    assert stat.S_IMODE(victim.stat().st_mode) == 0o644
    assert not (demo["staging"] / "retail_demo").exists()


@pytest.mark.parametrize("name", [".lock", ".readers"])
def test_symlink_planted_in_a_partition_is_refused_and_its_target_untouched(tmp_path, name):
    victim = tmp_path / "victim.txt"
    victim.write_text("must not change\n")
    ref = PartitionRef.raw(tmp_path / "staging", "shop", "products", DAY)
    ref.dir.mkdir(parents=True)
    (ref.dir / name).symlink_to(victim)
    schema = pa.schema([("sku", pa.string())])

    with pytest.raises(UnsafePath, match=rf"^{ref.dir / name} is a symbolic link"):
        raw_partition_write(
            ref,
            schema=schema,
            batches=[pa.record_batch([pa.array(["A-1"])], schema=schema)],
            source="test",
            window={},
            run_id=None,
        )
    assert victim.read_text() == "must not change\n"


# In a process of its own: `manage.py migrate` on a SQLite file, then the pipeline's lock beside it and a
# write in WAL mode, printing the modes of what they made.
_SQLITE_PROBE = """
import json, os, stat
from pathlib import Path
from django.db import connection
from etlcore.locks import lock_file, lock_try
held = lock_try(pipeline="shop", using="default")
with connection.cursor() as cursor:
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("CREATE TABLE probe (x integer)")
    cursor.execute("INSERT INTO probe VALUES (1)")
    name = Path(connection.settings_dict["NAME"])
    lock = lock_file(pipeline="shop", using="default")
    paths = [name, Path(f"{name}-wal"), Path(f"{name}-shm"), lock, lock.parent]
    print(json.dumps({p.name: oct(stat.S_IMODE(os.stat(p).st_mode)) for p in paths}))
held.release()
"""


@pytest.mark.parametrize("mask", UMASKS, ids=lambda mask: f"umask{mask:03o}")
def test_sqlite_database_its_wal_and_its_lock_are_private_after_migrate(tmp_path, mask):
    database = tmp_path / "db.sqlite3"
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "conf.settings.local",
        "DATABASE_URL": f"sqlite:///{database}",
        "ETL_VAR_DIR": str(tmp_path / "var"),
    }
    manage = [sys.executable, str(Path(settings.BASE_DIR) / "manage.py")]
    for args in (["migrate", "--no-input"], ["shell", "-c", _SQLITE_PROBE]):
        done = subprocess.run(
            [*manage, *args], env=env, capture_output=True, text=True, umask=mask, timeout=120, check=False
        )
        assert done.returncode == 0, done.stderr
    modes = json.loads(done.stdout.strip().splitlines()[-1])
    assert modes == {
        "db.sqlite3": "0o600",
        "db.sqlite3-wal": "0o600",
        "db.sqlite3-shm": "0o600",
        "shop.lock": "0o600",
        "db.sqlite3.locks": "0o700",
    }
