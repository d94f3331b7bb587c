"""Small inline SVG charts (line charts over time or steps), so the report needs no library and no
network to show its plots."""
from __future__ import annotations

import html
import math

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")
MAX_POINTS = 800  # per series; longer series are thinned to this many points


def _ticks(lo: float, hi: float, n: int = 5, integers: bool = False) -> list[float]:
    if hi <= lo:
        hi = lo + 1
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    if integers:  # epochs and steps: no tick between two of them
        step = max(1, round(step))
    start = math.ceil(lo / step) * step
    return [start + i * step for i in range(int((hi - start) / step) + 1)]


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1000 or abs(v) < 0.01:
        return f"{v:.2g}"
    return f"{v:.3g}"


def _thin(xs, ys):
    if len(xs) <= MAX_POINTS:
        return list(xs), list(ys)
    k = math.ceil(len(xs) / MAX_POINTS)
    return list(xs[::k]), list(ys[::k])


def line_chart(series, *, title: str, x_label: str, y_label: str, y_min: float | None = None,
               y_max: float | None = None, width: int = 760, height: int = 240, markers: bool = False) -> str:
    """`series`: [(label, xs, ys), ...]. Returns an <svg> element with axes, ticks and a legend."""
    series = [(label, *_thin(xs, ys)) for label, xs, ys in series if len(xs)]
    left, right, top, bottom = 64, 16, 28, 44
    w, h = width - left - right, height - top - bottom
    out = [f'<svg class="chart" role="img" aria-label="{html.escape(title)}" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg" font-family="sans-serif" '
           f'font-size="11">', f'<text x="{left}" y="16" font-size="13" font-weight="bold">{html.escape(title)}</text>']
    if not series:
        out.append(f'<text x="{left + 10}" y="{top + h / 2}">no data</text></svg>')
        return "".join(out)
    all_x = [x for _, xs, _ in series for x in xs]
    all_y = [y for _, _, ys in series for y in ys if y is not None and math.isfinite(y)]
    x0, x1 = min(all_x), max(all_x)
    y0 = min(all_y, default=0) if y_min is None else y_min
    y1 = max(all_y, default=1) if y_max is None else y_max
    if x1 == x0:
        x1 = x0 + 1
    if y1 == y0:
        y1 = y0 + 1

    def sx(x):
        return left + (x - x0) / (x1 - x0) * w

    def sy(y):
        return top + h - (min(max(y, y0), y1) - y0) / (y1 - y0) * h

    out.append(f'<rect x="{left}" y="{top}" width="{w}" height="{h}" fill="#fafafa" stroke="#ccc"/>')
    for t in _ticks(y0, y1):
        if y0 <= t <= y1:
            out.append(f'<line x1="{left}" x2="{left + w}" y1="{sy(t):.1f}" y2="{sy(t):.1f}" stroke="#e4e4e4"/>'
                       f'<text x="{left - 6}" y="{sy(t) + 4:.1f}" text-anchor="end">{_fmt(t)}</text>')
    for t in _ticks(x0, x1, 8, integers=all(isinstance(x, int) for x in all_x)):
        if x0 <= t <= x1:
            out.append(f'<line x1="{sx(t):.1f}" x2="{sx(t):.1f}" y1="{top + h}" y2="{top + h + 4}" stroke="#888"/>'
                       f'<text x="{sx(t):.1f}" y="{top + h + 16}" text-anchor="middle">{_fmt(t)}</text>')
    out.append(f'<text x="{left + w / 2}" y="{height - 6}" text-anchor="middle">{html.escape(x_label)}</text>'
               f'<text x="14" y="{top + h / 2}" text-anchor="middle" transform="rotate(-90 14 {top + h / 2})">'
               f'{html.escape(y_label)}</text>')
    for i, (label, xs, ys) in enumerate(series):
        color = PALETTE[i % len(PALETTE)]
        points = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in zip(xs, ys) if y is not None and math.isfinite(y))
        out.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{points}"/>')
        if markers:
            out.extend(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.5" fill="{color}"/>'
                       for x, y in zip(xs, ys) if y is not None and math.isfinite(y))
        lx = left + 8 + (i % 4) * 180
        ly = top + 14 + (i // 4) * 14
        out.append(f'<rect x="{lx}" y="{ly - 8}" width="10" height="10" fill="{color}"/>'
                   f'<text x="{lx + 14}" y="{ly + 1}">{html.escape(label)}</text>')
    out.append("</svg>")
    return "".join(out)
