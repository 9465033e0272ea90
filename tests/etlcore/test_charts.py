"""Server-side SVG charts: marks proportional to the values, no data handled, nothing external."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from etlcore.charts import HEIGHT, Point, bar_chart_svg, line_chart_svg

SVG = "{http://www.w3.org/2000/svg}"


def _marks(svg: str, tag: str) -> list[ET.Element]:
    return ET.fromstring(svg).findall(f".//{SVG}{tag}")


def test_bars_are_as_tall_as_their_values_the_largest_filling_the_plot():
    svg = bar_chart_svg(
        title="rows <per> run", points=[Point("#1", 100), Point("#2", 50), Point("#3", 0, css="failed")]
    )
    bars = _marks(svg, "rect")
    heights = [float(b.get("height")) for b in bars]
    assert heights[0] > 0 and heights[1] == heights[0] / 2 and heights[2] == 0
    bottoms = {round(float(b.get("y")) + float(b.get("height")), 2) for b in bars}
    assert len(bottoms) == 1  # one baseline
    assert "failed" in bars[2].get("class") and bars[2].get("fill") != bars[0].get("fill")
    assert "rows &lt;per&gt; run" in svg  # labels are escaped


def test_line_points_sit_at_heights_proportional_to_their_values():
    svg = line_chart_svg(
        title="quarantine rate", points=[Point("11-01", 2.0), Point("11-02", 1.0), Point("11-03", 0)]
    )
    ys = [float(c.get("cy")) for c in _marks(svg, "circle")]
    baseline = ys[2]
    assert baseline - ys[1] == (baseline - ys[0]) / 2
    assert len(_marks(svg, "polyline")) == 1


def test_no_data_draws_an_empty_chart_that_says_so():
    for chart in (bar_chart_svg, line_chart_svg):
        svg = chart(title="t", points=[])
        assert "no data yet" in svg and not _marks(svg, "rect") and not _marks(svg, "circle")
        ET.fromstring(svg)  # still a well-formed SVG
    only_zeros = bar_chart_svg(title="t", points=[Point("a", 0)])
    assert float(_marks(only_zeros, "rect")[0].get("height")) == 0


def test_a_chart_is_self_contained():
    svg = bar_chart_svg(title="t", points=[Point("a", 1)]) + line_chart_svg(title="t", points=[Point("a", 1)])
    assert not re.search(r"<script|href=|https?://(?!www\.w3\.org/2000/svg)", svg)
    assert f'height="{HEIGHT}"' in svg
