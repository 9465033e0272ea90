"""REST extraction throughput and memory: RestConnector -> to_staging_batch -> raw_partition_write.

A loopback server (its own process) generates `--records` nested orders on the fly, `--page-size` per
page (250, Shopify's maximum), without holding them. Baseline: the same pages fetched by a bare
`requests` loop that JSON-decodes each page and drops it. `ratio` = our records/s / baseline records/s.
Both run in child processes that time themselves (imports excluded); `peak_memory_mb` is the extraction
child's peak RSS, which must not grow with `--records` (batches are bounded).

    .venv/bin/python -m benchmarks.bench_extract_rest [--records 200000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from benchmarks.common import run_child, self_peak_memory_mb, write_result

BENCH_KEY = b"bench-pseudonym-key"
COLUMNS = {
    "order_id": {"from": "id", "required": True},
    "line_number": {"from": "lines.line_number", "required": True},
    "ordered_at": {"from": "created_at", "required": True},
    "updated_at": {"from": "updated_at", "required": True},
    "store_code": {"from": "store_id", "required": True},
    # Personal, as in the shipped pipeline: staged as its keyed pseudonym (one HMAC a line).
    "customer_email": {"from": "customer.email", "pii": True},
    "customer_country": {"from": "customer.country"},
    "sku": {"from": "lines.sku", "required": True},
    "quantity": {"from": "lines.quantity", "required": True},
    "unit_price": {"from": "lines.unit_price", "required": True},
    "currency": {"from": "currency", "required": True},
}
START = datetime(2026, 11, 1, tzinfo=UTC)


def _order(i: int) -> dict:
    stamp = (START + timedelta(seconds=i % 86_400)).isoformat()
    return {
        "id": f"ORD-{i:09d}",
        "created_at": stamp,
        "updated_at": stamp,
        "store_id": f"S{i % 40:03d}",
        "currency": "EUR",
        "customer": {"email": f"c{i % 9973}@example.com", "country": "AT", "name": "Jane Doe"},
        "lines": [
            {"line_number": n, "sku": f"SKU-{(i + n) % 500:04d}", "quantity": 1 + n, "unit_price": 9.95}
            for n in range(1, 2 + i % 3)
        ],
    }


def serve(records: int, page_size: int) -> None:
    """Child: serve `records` orders page by page; prints the port, runs until killed."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
            query = parse_qs(urlsplit(self.path).query)
            page = int(query.get("page", ["1"])[0])
            first = (page - 1) * page_size
            orders = [_order(i) for i in range(first, min(first + page_size, records))]
            body = json.dumps({"orders": orders}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()


def baseline(url: str) -> None:
    """Child: the bare loop. Prints {"seconds", "records"}."""
    import requests

    started = time.perf_counter()
    count = 0
    with requests.Session() as session:
        page = 1
        while True:
            response = session.get(url, params={"page": page}, timeout=30)
            response.raise_for_status()
            orders = response.json()["orders"]
            if not orders:
                break
            count += len(orders)
            page += 1
    print(json.dumps({"seconds": time.perf_counter() - started, "records": count}))


def extract(url: str, staging_root: str) -> None:
    """Child: what the extract service does for one REST dataset. Prints {"seconds", "records", "rows"}."""
    from connectors.base import ExtractWindow
    from connectors.records import FieldObserver, staging_schema, to_staging_batch
    from connectors.rest import RestConnector
    from etlcore import staging

    window = ExtractWindow(date(2026, 11, 1), START, START + timedelta(days=1))
    started = time.perf_counter()
    connector = RestConnector(
        name="orders",
        options={
            "kind": "rest",
            "base_url": url,
            "records_path": "orders",
            "pagination": {"style": "page_number"},
        },
    )
    observer = FieldObserver(explode="lines")
    count = 0

    def batches():
        nonlocal count
        for batch in connector.iter_batches(window):
            count += len(batch)
            observer.observe(batch)
            yield to_staging_batch(
                batch, columns=COLUMNS, explode="lines", source_label="orders", pseudonym_key=BENCH_KEY
            )

    ref = staging.PartitionRef(Path(staging_root), "bench", staging.RAW, window.business_date, "orders")
    manifest = staging.raw_partition_write(
        ref,
        schema=staging_schema(COLUMNS),
        batches=batches(),
        source=connector.describe(),
        window={},
        run_id=None,
    )
    connector.close()
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "records": count, "rows": manifest.row_count}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000, help="orders served (default %(default)s)")
    parser.add_argument("--page-size", type=int, default=250, help="orders per page (default %(default)s)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of each side (default %(default)s)")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--baseline", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--extract", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--staging", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return serve(args.records, args.page_size)
    if args.baseline:
        return baseline(args.baseline)
    if args.extract:
        return extract(args.extract, args.staging)

    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "benchmarks.bench_extract_rest",
            "--serve",
            "--records",
            str(args.records),
            "--page-size",
            str(args.page_size),
        ],
        stdout=subprocess.PIPE,
    )
    try:
        port = int(server.stdout.readline())
        url = f"http://127.0.0.1:{port}/api/v1/orders"
        me = [sys.executable, "-m", "benchmarks.bench_extract_rest"]
        base, ours = [], []
        with tempfile.TemporaryDirectory(prefix="bench-extract-") as tmp:
            for _ in range(args.repeat):  # interleaved, so drift of the machine hits both sides
                _, base_mem, out = run_child([*me, "--baseline", url])
                base.append((json.loads(out), base_mem))
                _, our_mem, out = run_child([*me, "--extract", url, "--staging", tmp])
                ours.append((json.loads(out), our_mem))
    finally:
        server.terminate()
        server.wait(timeout=10)

    base_seconds = statistics.median(r["seconds"] for r, _ in base)
    our_seconds = statistics.median(r["seconds"] for r, _ in ours)
    records = ours[0][0]["records"]
    assert records == base[0][0]["records"] == args.records, (records, base[0][0]["records"])
    write_result(
        "extract_rest",
        {
            "records": records,
            "staged_rows": ours[0][0]["rows"],
            "page_size": args.page_size,
            "repeat": args.repeat,
            "baseline_records_per_second": round(records / base_seconds),
            "records_per_second": round(records / our_seconds),
            "ratio": round(base_seconds / our_seconds, 3),
            "seconds": round(our_seconds, 3),
            "baseline_seconds": round(base_seconds, 3),
            "peak_memory_mb": round(max(mem for _, mem in ours), 1),
            "baseline_peak_memory_mb": round(max(mem for _, mem in base), 1),
            "driver_peak_memory_mb": round(self_peak_memory_mb(), 1),
        },
    )


if __name__ == "__main__":
    main()
