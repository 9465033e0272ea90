"""Template tags of the ops console's admin pages."""

from __future__ import annotations

from django import template

register = template.Library()


@register.simple_tag
def etl_last_night() -> list[dict]:
    """Per pipeline its latest run (the admin index's "last night" panel)."""
    from etlcore.admin import last_night

    return last_night()
