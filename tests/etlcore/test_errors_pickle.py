"""Errors cross processes whole: a Celery pool process hands its task's exception to the worker through a
pickled pipe, and an error whose `__init__` takes other arguments than its message used to break that
pipe (the worker's shutdown crashed on RunTerminated)."""

from __future__ import annotations

import pickle

import pytest

import etlcore.errors
import warehouse.errors
from connectors.errors import ConnectorError, SchemaDriftError
from connectors.records import SchemaDrift
from etlcore.errors import EtlError, RunTerminated, SparkJobError
from etlcore.models import PipelineRun
from warehouse.errors import (
    DailyMismatchError,
    MissingDimensionError,
    PseudonymKeyMismatchError,
    WarehouseError,
)


def _subclasses(base: type) -> set[type]:
    found = set()
    for cls in base.__subclasses__():
        found |= {cls} | _subclasses(cls)
    return found


SAMPLES = [
    RunTerminated(15),
    SparkJobError("spark job x failed", facts={"exit_code": 1}),
    SchemaDriftError("drift in 'orders'", drift=SchemaDrift(added=("coupon",))),
    MissingDimensionError(PipelineRun, "sku", ["A-1", "B-2"]),
    DailyMismatchError("shop", []),
    PseudonymKeyMismatchError("shop", warehouse="ab12", given="cd34"),
]
OURS = ("etlcore", "connectors", "warehouse")


def _own_init(cls: type) -> bool:
    """Its `__init__` (or an ancestor's of ours) takes other arguments than the message."""
    return any("__init__" in vars(k) for k in cls.__mro__ if k.__module__.split(".")[0] in OURS)


# Every other error class takes its message alone.
PLAIN = sorted(
    (
        cls
        for cls in _subclasses(EtlError)
        | _subclasses(ConnectorError)
        | _subclasses(WarehouseError)
        | {EtlError, ConnectorError, WarehouseError}
        if cls not in {type(s) for s in SAMPLES} and not _own_init(cls)
    ),
    key=lambda cls: cls.__qualname__,
)


@pytest.mark.parametrize("error", SAMPLES + [cls("what went wrong and where") for cls in PLAIN], ids=repr)
def test_an_error_comes_back_from_pickle_with_its_class_message_and_attributes(error):
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is type(error)
    assert str(again) == str(error)
    assert vars(again) == vars(error)


def test_every_error_class_with_its_own_arguments_is_sampled():
    modules = (etlcore.errors, warehouse.errors, __import__("connectors.errors").errors)
    own_init = {
        cls
        for module in modules
        for cls in vars(module).values()
        if isinstance(cls, type) and issubclass(cls, BaseException) and "__init__" in vars(cls)
    }
    assert own_init <= {type(s) for s in SAMPLES}
