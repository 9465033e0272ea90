"""The demo sources of the `retail_demo` pipeline: generated data files and a loopback sales API.

Pure Python (no Django), so tests and scripts can use it without settings.
"""

from __future__ import annotations

from etlcore.demo.api_server import DemoApiServer, demo_api_token, start_demo_api
from etlcore.demo.generate import (
    DEMO_API_TOKEN_DEFAULT,
    DEMO_BUSINESS_DATES,
    DEMO_SEED,
    Anomaly,
    DemoDataset,
    DemoDay,
    PriceChange,
    ensure_demo_data,
    generate_demo_data,
)

__all__ = [
    "DEMO_API_TOKEN_DEFAULT",
    "DEMO_BUSINESS_DATES",
    "DEMO_SEED",
    "Anomaly",
    "DemoApiServer",
    "DemoDataset",
    "DemoDay",
    "PriceChange",
    "demo_api_token",
    "ensure_demo_data",
    "generate_demo_data",
    "start_demo_api",
]
