"""Server-rendered charts: stacked bar charts as inline SVG (no JavaScript library, nothing to load).

Pure functions: buckets and counts in, SVG markup out (every text escaped). Each bar carries a ``<title>``
(a hover tooltip and a screen-reader label); the page shows the same numbers in a table under the chart.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from html import escape

from markupsafe import Markup


@dataclass(frozen=True)
class Series:
    name: str
    css_class: str          # fill colour comes from console.css (.bar-success, …)
    counts: list[int]


def hourly_buckets(now: dt.datetime, hours: int) -> list[dt.datetime]:
    """The starts of the last ``hours`` whole hours, oldest first (the current hour included)."""
    top = now.astimezone(dt.UTC).replace(minute=0, second=0, microsecond=0)
    return [top - dt.timedelta(hours=h) for h in range(hours - 1, -1, -1)]


def daily_buckets(now: dt.datetime, days: int) -> list[dt.datetime]:
    top = now.astimezone(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return [top - dt.timedelta(days=d) for d in range(days - 1, -1, -1)]


def count_into(buckets: Sequence[dt.datetime], step: dt.timedelta, times: Iterable[dt.datetime]) -> list[int]:
    counts = [0] * len(buckets)
    if not buckets:
        return counts
    first = buckets[0]
    for t in times:
        i = int((t.astimezone(dt.UTC) - first) // step)
        if 0 <= i < len(counts):
            counts[i] += 1
    return counts


def stacked_bars(title: str, labels: Sequence[str], series: Sequence[Series], *, width: int = 720,
                 height: int = 180, label_every: int = 1) -> Markup:
    """An SVG stacked bar chart; ``labels[i]`` names bar ``i``; every ``label_every``-th label is drawn."""
    n = len(labels)
    totals = [sum(s.counts[i] for s in series) for i in range(n)]
    peak = max(totals + [1])
    left, bottom, top = 36, 22, 8
    plot_h = height - bottom - top
    slot = (width - left) / max(n, 1)
    bar_w = max(slot * 0.72, 1.0)
    parts = [f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}" '
             f'preserveAspectRatio="none" xmlns="http://www.w3.org/2000/svg">']
    for frac in (0.0, 0.5, 1.0):        # grid lines; values only where they are whole numbers
        y = top + plot_h * (1 - frac)
        parts.append(f'<line class="grid" x1="{left}" x2="{width}" y1="{y:.1f}" y2="{y:.1f}"/>')
        value = peak * frac
        if value == int(value):
            parts.append(f'<text class="axis" x="{left - 4}" y="{y + 4:.1f}" text-anchor="end">{int(value)}</text>')
    for i in range(n):
        x = left + i * slot + (slot - bar_w) / 2
        y = top + plot_h
        tip = ", ".join(f"{s.name}: {s.counts[i]}" for s in series)
        parts.append(f"<g><title>{escape(labels[i])}: {escape(tip)}</title>")
        for s in series:
            value = s.counts[i]
            if value <= 0:
                continue
            h = plot_h * value / peak
            y -= h
            parts.append(f'<rect class="{escape(s.css_class)}" x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" '
                         f'height="{h:.1f}"/>')
        if totals[i] == 0:   # an empty slot still gets a hover target
            parts.append(f'<rect class="bar-empty" x="{x:.1f}" y="{top}" width="{bar_w:.1f}" height="{plot_h}"/>')
        parts.append("</g>")
        if i % label_every == 0:
            parts.append(f'<text class="axis" x="{x + bar_w / 2:.1f}" y="{height - 6}" text-anchor="middle">'
                         f'{escape(labels[i])}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))
