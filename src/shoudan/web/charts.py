"""Charts drawn on the server as SVG: no JavaScript, no CDN, nothing to download.

``bar_chart`` turns a series of (label, value) points into an accessible inline SVG: a
``<title>`` for screen readers, one ``<rect>`` per point with its own ``<title>`` (the
browser shows it as a tooltip), the largest value on the axis. Presentation is in SVG
attributes and ``web.css`` classes, never in ``style`` attributes (the CSP forbids inline
styles). Values are plain integers: the caller says how to print them (``fen`` for money).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape

from markupsafe import Markup

WIDTH = 600
HEIGHT = 200
AXIS_LEFT = 70  # room for the largest value's label
AXIS_BOTTOM = 22  # room for the first/last point's label
PAD_RIGHT = 24  # room for the last label's glyphs (fonts render wider than estimated)
GAP = 2


@dataclass(frozen=True, slots=True)
class Point:
    label: str  # e.g. "11-23"
    value: int


def bar_chart(
    title: str,
    points: Sequence[Point],
    show: Callable[[int], str] = str,
    css_class: str = "chart",
) -> Markup:
    """An SVG bar chart of ``points`` (values ≥ 0; negatives are drawn as 0 and still
    labelled with their value). ``show`` prints a value (e.g. ``format_fen``)."""
    top = max((p.value for p in points), default=0)
    plot_width = WIDTH - AXIS_LEFT - PAD_RIGHT
    plot_height = HEIGHT - AXIS_BOTTOM
    slot = plot_width / max(len(points), 1)
    parts = [
        f'<svg class="{escape(css_class)}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'xmlns="http://www.w3.org/2000/svg" aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
        f'<line class="axis" x1="{AXIS_LEFT}" y1="{plot_height}" x2="{WIDTH - PAD_RIGHT}" '
        f'y2="{plot_height}"/>',
        f'<text class="tick" x="{AXIS_LEFT - 4}" y="12" text-anchor="end">'
        f"{escape(show(top))}</text>",
        f'<text class="tick" x="{AXIS_LEFT - 4}" y="{plot_height}" text-anchor="end">'
        f"{escape(show(0))}</text>",
    ]
    for index, point in enumerate(points):
        height = 0.0 if top <= 0 else max(point.value, 0) / top * (plot_height - 4)
        x = AXIS_LEFT + index * slot + GAP / 2
        parts.append(
            f'<rect class="bar" x="{x:.1f}" y="{plot_height - height:.1f}" '
            f'width="{max(slot - GAP, 1):.1f}" height="{height:.1f}">'
            f"<title>{escape(point.label)}: {escape(show(point.value))}</title></rect>"
        )
    for index in {0, len(points) - 1} if points else set():
        anchor = "start" if index == 0 else "end"
        x = AXIS_LEFT if index == 0 else WIDTH - 2
        parts.append(
            f'<text class="tick" x="{x}" y="{HEIGHT - 4}" text-anchor="{anchor}">'
            f"{escape(points[index].label)}</text>"
        )
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 (every text above went through escape)
