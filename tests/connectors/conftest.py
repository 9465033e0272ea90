"""Fixtures shared by the connector tests."""

from __future__ import annotations

from datetime import UTC, date, datetime

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
