"""Open a registered admin's change list and check every `list_display` column rendered a value."""

from __future__ import annotations

import re

from django.contrib import admin
from django.contrib.admin.templatetags.admin_list import results
from django.db import models
from django.urls import reverse


def registered(app_label: str) -> list[type[models.Model]]:
    return sorted(
        (m for m in admin.site._registry if m._meta.app_label == app_label), key=lambda m: m._meta.model_name
    )


def assert_every_column_shows_a_value(client, model: type[models.Model]) -> None:
    """The change list renders (each column's field or callable ran on real rows), and no column is empty
    in every row: a column that only ever shows the empty value would hide a broken lookup."""
    response = client.get(reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist"))
    assert response.status_code == 200
    changelist = response.context["cl"]
    assert changelist.result_count > 0, f"no {model._meta.label} rows: the columns never ran"
    empty = re.compile(rf">\s*{re.escape(str(changelist.model_admin.get_empty_value_display()))}\s*</t[dh]>")
    columns = [c for c in changelist.list_display if c != "action_checkbox"]
    rows = [list(row)[-len(columns) :] for row in results(changelist)]
    for index, column in enumerate(columns):
        shown = [row[index] for row in rows if not empty.search(row[index])]
        assert shown, f"{model._meta.label}.{column} is empty in every row"
