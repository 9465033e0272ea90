from __future__ import annotations

import pytest

from connectors import build_connector, connector_kinds
from etlcore.errors import ConfigurationError


@pytest.mark.parametrize("kind", sorted(connector_kinds()))
def test_every_source_kind_refuses_a_batch_size_that_is_not_positive(kind):
    with pytest.raises(ConfigurationError, match=r"source 'orders': batch_size must be positive, got 0"):
        build_connector(name="orders", options={"kind": kind, "batch_size": 0})
