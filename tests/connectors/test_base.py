from __future__ import annotations

import pytest

from connectors import build_connector, connector_kinds
from connectors.errors import ConfigurationError
from connectors.options import TEXT, WHOLE, Table


@pytest.mark.parametrize("kind", sorted(connector_kinds()))
def test_every_source_kind_refuses_a_batch_size_that_is_not_positive(kind):
    with pytest.raises(ConfigurationError, match=r"source 'orders': batch_size must be positive, got 0"):
        build_connector(name="orders", options={"kind": kind, "batch_size": 0})


def test_a_connector_class_that_names_its_kind_registers_itself():
    from connectors import base

    connector_kinds()  # the package's own kinds are registered before this one
    try:

        class Echo(base.Connector):
            kind = "echo"
            option_schema = Table({"kind": TEXT, "batch_size": WHOLE})

            def iter_batches(self, window):
                yield [{"name": self.name}]

            def describe(self):
                return "echo"

        assert connector_kinds()["echo"] is Echo
        assert isinstance(build_connector(name="orders", options={"kind": "echo"}), Echo)
    finally:
        base._KINDS.pop("echo", None)


def test_two_connector_classes_cannot_claim_one_kind():
    from connectors import base

    with pytest.raises(TypeError, match=r"source kind 'file' is taken by connectors\.files\.FileConnector"):

        class OtherFiles(base.Connector):
            kind = "file"


def test_a_connector_class_must_declare_the_options_it_reads():
    from connectors import base

    with pytest.raises(TypeError, match=r"source kind 'undeclared' \(Undeclared\) declares no option_schema"):

        class Undeclared(base.Connector):
            kind = "undeclared"

            def iter_batches(self, window):
                yield []

            def describe(self):
                return "undeclared"

    assert "undeclared" not in connector_kinds()
