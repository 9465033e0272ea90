"""Small server-side SVG charts for the ops console: pure functions from numbers to SVG text, so the
admin serves no JavaScript and loads nothing from elsewhere."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

WIDTH, HEIGHT = 360, 160
_TOP, _BOTTOM, _LEFT, _RIGHT = 22, 22, 8, 8


@dataclass(frozen=True)
class Point:
    label: str  # under the mark, and in its tooltip
    value: float
    title: str = ""  # the tooltip; label and value when empty
    css: str = ""  # a class on the mark: `failed` colours a failed run's bar


def _plot_height() -> int:
    return HEIGHT - _TOP - _BOTTOM


def _scaled(value: float, top: float) -> float:
    """The mark's height: proportional to the value, the tallest filling the plot."""
    return 0.0 if top <= 0 else max(0.0, value) / top * _plot_height()


def _frame(title: str, body: list[str], *, empty: bool, kind: str) -> str:
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="etl-chart etl-chart-{kind}" role="img" '
        f'width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" aria-label="{escape(title)}">'
        f"<title>{escape(title)}</title>"
        f'<text x="{_LEFT}" y="14" class="etl-chart-title" font-size="12">{escape(title)}</text>'
        f'<line x1="{_LEFT}" y1="{HEIGHT - _BOTTOM}" x2="{WIDTH - _RIGHT}" y2="{HEIGHT - _BOTTOM}" '
        'stroke="#999" stroke-width="1"/>'
    )
    if empty:
        body = [
            f'<text x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle" class="etl-chart-empty" '
            'font-size="12" fill="#777">no data yet</text>'
        ]
    return head + "".join(body) + "</svg>"


def _label(x: float, text: str) -> str:
    return f'<text x="{x:.2f}" y="{HEIGHT - 8}" text-anchor="middle" font-size="9">{escape(text)}</text>'


def _fmt(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 or float(value).is_integer() else f"{value:.3g}"


def bar_chart_svg(*, title: str, points: Sequence[Point], unit: str = "") -> str:
    """One bar a point, heights proportional to the values (the largest fills the plot), its value on
    top and its label below; "no data yet" when there are no points."""
    top = max((p.value for p in points), default=0.0)
    slot = (WIDTH - _LEFT - _RIGHT) / max(1, len(points))
    bar = max(1.0, slot * 0.7)
    body = []
    for i, p in enumerate(points):
        h = _scaled(p.value, top)
        x = _LEFT + i * slot + (slot - bar) / 2
        y = HEIGHT - _BOTTOM - h
        tip = p.title or f"{p.label}: {_fmt(p.value)}{unit}"
        css = f"etl-bar {p.css}".strip()
        fill = "#ba2121" if p.css == "failed" else "#417690"
        body.append(
            f'<rect class="{escape(css)}" x="{x:.2f}" y="{y:.2f}" width="{bar:.2f}" height="{h:.2f}" '
            f'fill="{fill}" data-value="{p.value}"><title>{escape(tip)}</title></rect>'
        )
        if len(points) <= 16:  # labels of more would overlap
            cx = x + bar / 2
            body.append(
                _label(cx, p.label)
                + f'<text x="{cx:.2f}" y="{max(y - 2, _TOP):.2f}" text-anchor="middle" font-size="9">'
                + f"{escape(_fmt(p.value))}</text>"
            )
    return _frame(title, body, empty=not points, kind="bars")


def line_chart_svg(*, title: str, points: Sequence[Point], unit: str = "") -> str:
    """Points joined by a line, heights proportional to the values; "no data yet" when there are none."""
    top = max((p.value for p in points), default=0.0)
    step = (WIDTH - _LEFT - _RIGHT) / max(1, len(points))
    coords = [
        (_LEFT + step * (i + 0.5), HEIGHT - _BOTTOM - _scaled(p.value, top)) for i, p in enumerate(points)
    ]
    body = []
    if len(coords) > 1:
        path = " ".join(f"{x:.2f},{y:.2f}" for x, y in coords)
        body.append(f'<polyline points="{path}" fill="none" stroke="#417690" stroke-width="1.5"/>')
    for (x, y), p in zip(coords, points, strict=True):
        tip = p.title or f"{p.label}: {_fmt(p.value)}{unit}"
        body.append(
            f'<circle class="etl-point" cx="{x:.2f}" cy="{y:.2f}" r="3" fill="#417690" '
            f'data-value="{p.value}"><title>{escape(tip)}</title></circle>'
        )
        if len(points) <= 16:
            body.append(_label(x, p.label))
    return _frame(title, body, empty=not points, kind="line")
