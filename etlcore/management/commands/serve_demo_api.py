"""`manage.py serve_demo_api`: serve the demo sales API on loopback until Ctrl-C."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from etlcore.demo.api_server import DemoApiServer, demo_api_token
from etlcore.demo.generate import DEMO_BUSINESS_DATES, ensure_demo_data


def default_port() -> int:
    """The port of the ETL_DEMO_API_URL setting, where the demo pipeline asks (8765 unless moved)."""
    try:
        return urlsplit(settings.ETL_DEMO_API_URL).port or 8765
    except ValueError:
        return 8765


class Command(BaseCommand):
    help = (
        "Serve the demo sales API (GET /api/v1/orders, bearer auth, Link-header paging) on 127.0.0.1, "
        "generating the demo data first if it is missing. Stop with Ctrl-C."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--port",
            type=int,
            default=default_port(),
            help="Port to listen on (default: the port of ETL_DEMO_API_URL, %(default)s; 0: a free one).",
        )
        parser.add_argument(
            "--data-dir",
            type=Path,
            default=None,
            help="Directory holding orders.jsonl and exports/ (default: the ETL_DEMO_DIR setting, "
            "$ETL_VAR_DIR/demo, where the demo pipeline reads the exports).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        data_dir: Path = options["data_dir"] or Path(settings.ETL_DEMO_DIR)
        port: int = options["port"]
        if not 0 <= port <= 65535:
            raise CommandError(f"--port must be between 0 and 65535, got {port}")

        dates = ", ".join(d.isoformat() for d in DEMO_BUSINESS_DATES)
        try:
            orders_path, generated = ensure_demo_data(out_dir=data_dir)
        except OSError as exc:
            raise CommandError(f"cannot write the demo data under {data_dir}: {exc}") from exc
        if generated:
            self.stdout.write(f"Generated demo data for {dates} in {data_dir}")

        token, from_env = demo_api_token()
        try:
            server = DemoApiServer(orders_path=orders_path, token=token, port=port)
        except OSError as exc:
            raise CommandError(f"cannot listen on 127.0.0.1:{port}: {exc}") from exc
        except ValueError as exc:
            raise CommandError(f"{orders_path} is not valid demo data: {exc}") from exc

        self.stdout.write(
            self.style.SUCCESS(f"Demo sales API on {server.url}/api/v1/orders ({server.order_count} orders)")
        )
        if from_env:
            # The value came from the environment: it may be a real secret, so never echo it.
            self.stdout.write("Token: the value of ETL_DEMO_API_TOKEN (Authorization: Bearer <token>)")
        else:
            self.stdout.write(
                f"Token: ETL_DEMO_API_TOKEN is unset, using the demo default {token!r} "
                "(Authorization: Bearer <token>)"
            )
        self.stdout.write(f"Point the pipeline at it with ETL_DEMO_API_URL={server.url}. Ctrl-C to stop.")
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            self.stdout.write("Stopped.")
