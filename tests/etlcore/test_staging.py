from __future__ import annotations

import threading
import time
from datetime import date

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from etlcore import staging
from etlcore.errors import PartitionNotFound

SCHEMA = pa.schema([("sku", pa.string()), ("name", pa.string())])


def ref_for(root) -> staging.PartitionRef:
    return staging.PartitionRef(root, "shop", staging.RAW, date(2026, 11, 1), "products")


def batches(*rows):
    for chunk in rows:
        yield pa.RecordBatch.from_pylist(chunk, schema=SCHEMA)


def read_partition(ref) -> list[dict]:
    manifest = staging.manifest_read(ref)
    return pa.concat_tables(pq.read_table(p) for p in staging.manifest_files(ref, manifest)).to_pylist()


def test_published_partition_is_readable_with_its_manifest(tmp_path):
    ref = ref_for(tmp_path)
    manifest = staging.raw_partition_write(
        ref,
        schema=SCHEMA,
        batches=batches([{"sku": "A", "name": "a"}], [{"sku": "B", "name": "b"}]),
        source="file:/x.csv",
        window={"start": "s", "end": "e"},
        run_id=7,
    )
    assert manifest.row_count == 2
    assert manifest.checksum.startswith("sha256:")
    assert read_partition(ref) == [{"sku": "A", "name": "a"}, {"sku": "B", "name": "b"}]
    assert staging.manifest_read(ref).run_id == 7
    assert ref.dir == tmp_path / "shop" / "raw" / "products" / "date=2026-11-01"


def test_a_failing_writer_leaves_the_previous_partition_untouched(tmp_path):
    ref = ref_for(tmp_path)
    staging.raw_partition_write(
        ref, schema=SCHEMA, batches=batches([{"sku": "OLD", "name": "o"}]), source="s", window={}, run_id=1
    )

    def broken_source():
        yield pa.RecordBatch.from_pylist([{"sku": "NEW", "name": "n"}], schema=SCHEMA)
        raise OSError("connection reset mid-extract")

    with pytest.raises(OSError):
        staging.raw_partition_write(
            ref, schema=SCHEMA, batches=broken_source(), source="s", window={}, run_id=2
        )
    assert read_partition(ref) == [{"sku": "OLD", "name": "o"}]
    assert len(list(ref.dir.glob("attempt-*"))) == 1  # the failed attempt's files are gone


def test_republishing_replaces_the_partition_and_removes_old_files(tmp_path):
    ref = ref_for(tmp_path)
    for sku in ("V1", "V2"):
        staging.raw_partition_write(
            ref, schema=SCHEMA, batches=batches([{"sku": sku, "name": "x"}]), source="s", window={}, run_id=1
        )
    assert read_partition(ref) == [{"sku": "V2", "name": "x"}]
    assert len(list(ref.dir.glob("attempt-*"))) == 1


def test_empty_source_publishes_an_empty_partition_with_schema(tmp_path):
    ref = ref_for(tmp_path)
    manifest = staging.raw_partition_write(
        ref, schema=SCHEMA, batches=iter(()), source="s", window={}, run_id=1
    )
    assert manifest.row_count == 0
    assert pq.read_schema(staging.manifest_files(ref, manifest)[0]).names == ["sku", "name"]


def test_missing_partition_tells_which_step_input_is_absent(tmp_path):
    with pytest.raises(PartitionNotFound, match=r"no published partition for shop raw/products 2026-11-01"):
        staging.manifest_read(ref_for(tmp_path))


def test_a_failed_first_attempt_leaves_no_folder_or_lock_behind(tmp_path):
    ref = ref_for(tmp_path)
    debris = ref.dir / "attempt-20261101T000000-killed00"  # a writer killed before it could clean up
    debris.mkdir(parents=True)
    with pytest.raises(RuntimeError), staging.partition_attempt(ref) as attempt:
        (attempt / "part-00000.parquet").write_bytes(b"half a file")
        raise RuntimeError("source failed mid-extract")
    assert not ref.dir.exists()
    assert not ref.dir.parent.exists()  # the dataset's folder held only this date
    assert list(tmp_path.rglob("*")) == [tmp_path / "shop", tmp_path / "shop" / "raw"]


def test_a_failed_attempt_keeps_the_published_partition_and_its_lock(tmp_path):
    ref = ref_for(tmp_path)
    staging.raw_partition_write(
        ref, schema=SCHEMA, batches=batches([{"sku": "A", "name": "a"}]), source="s", window={}, run_id=1
    )
    with pytest.raises(RuntimeError), staging.partition_attempt(ref):
        raise RuntimeError("boom")
    assert read_partition(ref) == [{"sku": "A", "name": "a"}]
    assert (ref.dir / staging.LOCK).exists()


def test_a_writer_waiting_on_a_lock_a_failed_writer_removed_still_excludes_the_next_one(tmp_path):
    """The failed writer deletes the lock file another writer is blocked on; that writer must lock the
    file now at the path, or a third writer would lock a new file and both would write at once."""
    ref = ref_for(tmp_path)
    inside, most = [0], [0]
    guard = threading.Lock()

    def write() -> None:
        with staging.partition_attempt(ref):
            with guard:
                inside[0] += 1
                most[0] = max(most[0], inside[0])
            time.sleep(0.5)
            with guard:
                inside[0] -= 1

    second = threading.Thread(target=write)
    with pytest.raises(RuntimeError), staging.partition_attempt(ref):
        second.start()
        time.sleep(0.5)  # the second writer is now blocked on this attempt's lock file
        raise RuntimeError("first writer fails: its cleanup removes the lock file")
    third = threading.Thread(target=write)
    third.start()
    second.join(timeout=10)
    third.join(timeout=10)
    assert most[0] == 1


def publish(ref, sku: str) -> staging.Manifest:
    return staging.raw_partition_write(
        ref,
        schema=SCHEMA,
        batches=batches([{"sku": sku, "name": sku.lower()}]),
        source="file:/x.csv",
        window={},
        run_id=None,
    )


def test_a_publish_keeps_the_files_a_reader_holds_and_the_next_publish_removes_them(tmp_path):
    """A transform reading the raw partition while an extract re-publishes it: the job's files stay."""
    ref = ref_for(tmp_path)
    publish(ref, "A")
    with staging.partitions_reading([ref]):
        held = staging.manifest_files(ref, staging.manifest_read(ref))
        publish(ref, "B")  # another process's extract: its own lock file descriptor, as here
        assert pa.concat_tables(pq.read_table(p) for p in held).to_pylist() == [{"sku": "A", "name": "a"}]
        assert read_partition(ref) == [{"sku": "B", "name": "b"}]
    assert all(p.exists() for p in held)  # left for the next publish: this one met a reader
    publish(ref, "C")
    assert not any(p.exists() for p in held)
    assert len(list(ref.dir.glob(f"{staging.ATTEMPT_PREFIX}*"))) == 1
    assert read_partition(ref) == [{"sku": "C", "name": "c"}]


def test_reading_a_partition_not_published_yet_fails_as_usual_and_creates_nothing(tmp_path):
    ref = ref_for(tmp_path)
    with pytest.raises(PartitionNotFound), staging.partitions_reading([ref]):
        staging.manifest_read(ref)
    assert not ref.dir.exists()


def test_a_rewrite_publishes_new_files_behind_a_new_manifest_and_keeps_the_files_a_reader_holds(tmp_path):
    """forget_customer's rewrite is a publish: readers see the old or the new partition, whole."""
    ref = ref_for(tmp_path)
    staging.raw_partition_write(
        ref,
        schema=SCHEMA,
        batches=batches([{"sku": "A", "name": "a"}, {"sku": "B", "name": "b"}]),
        source="t",
        window={},
        run_id=7,
    )
    old = staging.manifest_read(ref)
    with staging.partitions_reading([ref]):
        held = staging.manifest_files(ref, old)
        new = staging.partition_rewrite(
            ref,
            lambda output, table: pa.table(
                {"sku": table["sku"], "name": pa.array(["a", None])}, schema=table.schema
            ),
        )
        assert pa.concat_tables(pq.read_table(p) for p in held).column("name").to_pylist() == ["a", "b"]
    assert read_partition(ref) == [{"sku": "A", "name": "a"}, {"sku": "B", "name": None}]
    assert staging.manifest_read(ref) == new
    assert (new.row_count, new.run_id, new.window, new.schema) == (2, 7, old.window, old.schema)
    assert new.files != old.files and new.checksum != old.checksum
    assert new.checksum == staging.files_checksum(staging.manifest_files(ref, new))
    assert all(p.exists() for p in held)  # a reader held them: the next publish removes them

    assert staging.partition_rewrite(ref, lambda output, table: None) is None  # nothing changed
    assert staging.manifest_read(ref) == new
    assert len(list(ref.dir.glob(f"{staging.ATTEMPT_PREFIX}*"))) == 2
