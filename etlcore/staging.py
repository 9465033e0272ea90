"""Staging partitions: Parquet files published atomically behind a `_manifest.json` commit point.

A partition is `<root>/<pipeline>/<layer>/[<dataset>/]date=YYYY-MM-DD/`. Writers fill a fresh
`attempt-<token>/` directory, make it durable, then replace `_manifest.json` in one `os.replace`, then
remove older attempts. Readers trust only the manifest, so they see the previous complete partition or the
new complete one, never a half-written one.

Every file here is 0600 and every folder 0700 (etlcore/files.py): the pipeline's folder under the root is
the project's own and is tightened when a writer finds it wider; the root's parents are never changed.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from .errors import PartitionNotFound
from .files import DIR_MODE, private_create, private_dirs, private_open, private_write

MANIFEST = "_manifest.json"
ATTEMPT_PREFIX = "attempt-"
LOCK = ".lock"
# Readers hold a shared flock on this file while they read a partition's files; a publish removes older
# attempts only when it can take it exclusively at once (`partitions_reading`, `partition_publish`).
READERS_LOCK = ".readers"
RAW = "raw"
TRANSFORMED = "transformed"


@dataclass(frozen=True)
class PartitionRef:
    root: Path
    pipeline: str
    layer: str
    business_date: date
    dataset: str | None = None

    @classmethod
    def raw(cls, root: Path, pipeline: str, dataset: str, business_date: date) -> PartitionRef:
        return cls(root, pipeline, RAW, business_date, dataset)

    @classmethod
    def transformed(cls, root: Path, pipeline: str, business_date: date) -> PartitionRef:
        return cls(root, pipeline, TRANSFORMED, business_date)

    @property
    def dir(self) -> Path:
        parts = [self.pipeline, self.layer] + ([self.dataset] if self.dataset else [])
        return self.root.joinpath(*parts, f"date={self.business_date.isoformat()}")

    @property
    def manifest_path(self) -> Path:
        return self.dir / MANIFEST

    def label(self) -> str:
        name = f"{self.layer}/{self.dataset}" if self.dataset else self.layer
        return f"{self.pipeline} {name} {self.business_date.isoformat()}"


@dataclass
class Manifest:
    pipeline: str
    layer: str
    dataset: str | None
    business_date: str
    files: list[str]
    row_count: int
    schema: list[dict[str, str]]
    source: str
    checksum: str
    run_id: int | None
    window: dict[str, str] = field(default_factory=dict)
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Transformed partitions: which pseudonym key made the customer keys (contract.pseudonym_key_fingerprint).
    key_fingerprint: str | None = None
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)


def manifest_read(ref: PartitionRef) -> Manifest:
    try:
        doc = json.loads(ref.manifest_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        published = partition_dates(ref)
        ready = f"latest {ref.layer}: {published[-1]}" if published else f"no {ref.layer} date yet"
        raise PartitionNotFound(
            f"no published partition for {ref.label()} ({ready}; expected {ref.manifest_path})"
        ) from None
    return Manifest(**doc)


def partition_dates(ref: PartitionRef) -> list[date]:
    """The business dates published in `ref`'s layer (and dataset), oldest first: what a step could read."""
    parent = ref.dir.parent
    dates = []
    for path in parent.glob("date=*/" + MANIFEST) if parent.is_dir() else ():
        try:
            dates.append(date.fromisoformat(path.parent.name.removeprefix("date=")))
        except ValueError:
            continue  # not a partition this project wrote
    return sorted(dates)


def manifest_files(ref: PartitionRef, manifest: Manifest) -> list[Path]:
    return [ref.dir / name for name in manifest.files]


@contextmanager
def partition_attempt(ref: PartitionRef) -> Iterator[Path]:
    """Hold the partition's lock and give a fresh attempt directory; remove it again on failure, and with
    it the partition's folder and lock file when nothing was ever published there."""
    with partition_lock(ref):
        attempt = ref.dir / f"{ATTEMPT_PREFIX}{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
        attempt.mkdir(DIR_MODE)
        try:
            yield attempt
        except BaseException:
            shutil.rmtree(attempt, ignore_errors=True)
            partition_unpublished_remove(ref)
            raise


def attempt_discard(ref: PartitionRef, attempt: Path) -> None:
    """Drop an attempt that will not be published, as a failed `partition_attempt` does (call it inside
    the attempt's block, which holds the lock)."""
    shutil.rmtree(attempt, ignore_errors=True)
    partition_unpublished_remove(ref)


@contextmanager
def partition_lock(ref: PartitionRef) -> Iterator[None]:
    """The partition's writer lock (`.lock`, flock). A failed writer may delete the lock file while
    another waits on it, so a waiter that wakes up holding a file no longer at that path locks again."""
    path = ref.dir / LOCK
    while True:
        try:
            private_dirs(ref.dir, owned_from=ref.root / ref.pipeline)
            fd = private_open(path, os.O_RDWR | os.O_CREAT)
        except FileNotFoundError:
            continue  # a failed writer removed the folder between our mkdir and open
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            current = os.stat(path)
        except FileNotFoundError:
            current = None
        held = os.fstat(fd)
        if current is not None and (current.st_dev, current.st_ino) == (held.st_dev, held.st_ino):
            break
        os.close(fd)
    try:
        yield
    finally:
        os.close(fd)


def partition_unpublished_remove(ref: PartitionRef) -> None:
    """After a failed attempt, under the lock: a partition that has no manifest is only debris (attempt
    folders of killed writers, a manifest never swapped in, the lock file); remove it, and its dataset's
    folder if that is then empty, so failed extracts leave no empty `date=` folders behind."""
    if ref.manifest_path.exists():
        return
    for leftover in ref.dir.glob(f"{ATTEMPT_PREFIX}*"):
        shutil.rmtree(leftover, ignore_errors=True)
    for leftover in ref.dir.glob(f".{MANIFEST}.*.tmp"):
        leftover.unlink(missing_ok=True)
    (ref.dir / LOCK).unlink(missing_ok=True)
    for folder in [ref.dir, ref.dir.parent] if ref.dataset else [ref.dir]:
        try:
            folder.rmdir()
        except OSError:
            return  # not empty: something else lives there


def partition_publish(ref: PartitionRef, manifest: Manifest, attempt: Path) -> None:
    """Make the attempt's files durable, swap the manifest in, then drop superseded attempts."""
    for path in sorted(attempt.rglob("*")):
        if path.is_file():
            _fsync_file(path)
    for directory in [*sorted(p for p in attempt.rglob("*") if p.is_dir()), attempt]:
        _fsync_dir(directory)
    tmp = ref.dir / f".{MANIFEST}.{uuid.uuid4().hex}.tmp"
    private_write(tmp, manifest.to_json(), exclusive=True)
    _fsync_file(tmp)
    os.replace(tmp, ref.manifest_path)
    _fsync_dir(ref.dir)
    attempts_prune(ref, keep=attempt)


def attempts_prune(ref: PartitionRef, *, keep: Path) -> bool:
    """Remove the partition's attempts other than `keep`, unless a reader holds the partition: a Spark
    job or a load may be reading the attempt the previous manifest named. Then they stay until the next
    publish finds no reader. Returns whether they were removed."""
    fd = private_open(ref.dir / READERS_LOCK, os.O_RDONLY | os.O_CREAT)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        for old in ref.dir.glob(f"{ATTEMPT_PREFIX}*"):
            if old != keep:
                shutil.rmtree(old, ignore_errors=True)
        return True
    finally:
        os.close(fd)


@contextmanager
def partitions_reading(refs: Iterable[PartitionRef]) -> Iterator[None]:
    """Hold the partitions for reading: read their manifests inside the block, and their files stay until
    it ends, whatever another process publishes meanwhile. A partition not published yet is not locked
    (reading its manifest fails as usual). Waits only while a publish removes old attempts."""
    with ExitStack() as stack:
        for ref in sorted(refs, key=lambda r: str(r.dir)):
            if not ref.manifest_path.exists():
                continue
            fd = private_open(ref.dir / READERS_LOCK, os.O_RDONLY | os.O_CREAT)
            stack.callback(os.close, fd)
            fcntl.flock(fd, fcntl.LOCK_SH)
        yield


def raw_partition_write(
    ref: PartitionRef,
    *,
    schema: pa.Schema,
    batches: Iterable[pa.RecordBatch],
    source: str,
    window: dict[str, str],
    run_id: int | None,
) -> Manifest:
    """Stream record batches into one Parquet file and publish it; memory holds one batch at a time.

    This module owns the partition layout (directories, attempts, manifest), not the rows' format: the
    raw layer's columns and text values are defined once, in `connectors.records` (`staging_schema`,
    `to_staging_batch`), and arrive here as `schema` and `batches`."""
    with partition_attempt(ref) as attempt:
        data_file = attempt / "part-00000.parquet"
        private_create(data_file)  # 0600 before pyarrow opens it (O_TRUNC keeps the mode)
        rows = 0
        with pq.ParquetWriter(data_file, schema, compression="zstd") as writer:
            for batch in batches:
                if batch.num_rows:
                    writer.write_batch(batch)
                    rows += batch.num_rows
        manifest = Manifest(
            pipeline=ref.pipeline,
            layer=ref.layer,
            dataset=ref.dataset,
            business_date=ref.business_date.isoformat(),
            files=[str(data_file.relative_to(ref.dir))],
            row_count=rows,
            schema=[
                {"name": f.name, "type": str(f.type)}
                | {k.decode(): v.decode() for k, v in (f.metadata or {}).items()}
                for f in schema
            ],
            source=source,
            checksum=files_checksum([data_file]),
            run_id=run_id,
            window=window,
        )
        partition_publish(ref, manifest, attempt)
    return manifest


def partition_rewrite(
    ref: PartitionRef,
    rewrite: Callable[[str | None, pa.Table], pa.Table | None],
    *,
    manifest_changes: Mapping[str, Any] | None = None,
) -> Manifest | None:
    """Publish a new version of a partition whose data files are `rewrite(output, table)` of the current
    ones (`output`: the transformed output the file belongs to, None in the raw layer; None back: the file
    is unchanged). Under the partition's writer lock, into a fresh attempt, behind a manifest swap, like
    any publish: a reader holding the partition keeps reading the files it started with. The new manifest
    keeps everything but the files, their rows and the checksum, and `manifest_changes` (e.g. the key
    fingerprint after a key rotation). None when nothing changed (nothing is published); a change of the
    manifest alone is published with the files copied."""
    if not ref.manifest_path.exists():
        return None
    with partition_attempt(ref) as attempt:
        manifest = manifest_read(ref)
        owner = {f: name for name, out in manifest.outputs.items() for f in out.get("files", ())}
        tables: dict[str, pa.Table] = {}
        for name in manifest.files:
            changed = rewrite(owner.get(name), pq.read_table(ref.dir / name))
            if changed is not None:
                tables[name] = changed
        changes = {k: v for k, v in (manifest_changes or {}).items() if getattr(manifest, k) != v}
        if not tables and not changes:
            attempt_discard(ref, attempt)
            return None
        renamed: dict[str, str] = {}
        for name in manifest.files:
            relative = Path(name)
            inside = Path(*relative.parts[1:]) if relative.parts[0].startswith(ATTEMPT_PREFIX) else relative
            target = attempt / inside
            private_dirs(target.parent, owned_from=attempt)
            private_create(target)
            if name in tables:
                pq.write_table(tables[name], target, compression="zstd")
            else:
                shutil.copyfile(ref.dir / name, target)
            renamed[name] = str(target.relative_to(ref.dir))
        files = [renamed[name] for name in manifest.files]
        outputs = {
            output: out
            | {
                "files": [renamed[f] for f in out["files"]],
                "rows": sum(pq.ParquetFile(ref.dir / renamed[f]).metadata.num_rows for f in out["files"]),
            }
            for output, out in manifest.outputs.items()
        }
        rows = sum(pq.ParquetFile(ref.dir / f).metadata.num_rows for f in files)
        updated = replace(
            manifest,
            files=files,
            outputs=outputs,
            checksum=files_checksum(ref.dir / f for f in files),
            row_count=rows if not outputs else manifest.row_count,
            created_at=datetime.now(UTC).isoformat(),
            **changes,
        )
        partition_publish(ref, updated, attempt)
    return updated


def files_checksum(paths: Iterable[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
