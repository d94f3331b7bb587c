"""report.html of a monitoring run: one self-contained file (inline CSS and SVG, no script, no
network), in the profiler report's layout: the verdict, the checks, then each distribution as
grouped bars, baseline beside live."""
from __future__ import annotations

import datetime as dt
import html

import numpy as np

from ..artifact.baseline import HISTOGRAM_BINS

BASELINE_COLOR, LIVE_COLOR = "#1f77b4", "#d62728"
STYLE = """body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px auto;max-width:1100px;
color:#222;line-height:1.4}h1{font-size:24px;margin-bottom:4px}h2{border-bottom:2px solid #ddd;padding-bottom:4px;
margin-top:32px}table{border-collapse:collapse;margin:8px 0 16px;font-size:13px}th,td{border:1px solid #ddd;
padding:4px 8px;text-align:left;vertical-align:top}th{background:#f2f2f2}td.num{text-align:right;
font-variant-numeric:tabular-nums}tr.fired td{background:#fff3f0}.muted{color:#777}.chart{display:block;margin:8px 0}
#verdict{padding:8px;border-left:4px solid}#verdict.drift{background:#fff3f0;border-color:#d62728}
#verdict.clean{background:#f0fff3;border-color:#2ca02c}"""


def bars(title: str, labels: list[str], series: list[tuple[str, str, list[float]]], y_label: str = "share",
         width: int = 760, height: int = 240) -> str:
    """Grouped bars: `series` = [(name, colour, values per label)]. An <svg> element."""
    left, right, top, bottom = 56, 16, 28, 56
    w, h = width - left - right, height - top - bottom
    peak = max((v for _, _, vs in series for v in vs), default=0) or 1
    group = w / max(1, len(labels))
    bar = group * 0.8 / max(1, len(series))
    out = [f'<svg class="chart" role="img" aria-label="{html.escape(title)}" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg" font-family="sans-serif" '
           f'font-size="11"><text x="{left}" y="16" font-size="13" font-weight="bold">{html.escape(title)}</text>',
           f'<line x1="{left}" y1="{top + h}" x2="{left + w}" y2="{top + h}" stroke="#999"/>',
           f'<text x="12" y="{top + h / 2}" transform="rotate(-90 12 {top + h / 2})">{html.escape(y_label)}</text>',
           f'<text x="{left - 4}" y="{top + 4}" text-anchor="end">{peak:.3g}</text>',
           f'<text x="{left - 4}" y="{top + h}" text-anchor="end">0</text>']
    step = max(1, len(labels) // 12)
    for i, label in enumerate(labels):
        x0 = left + i * group + group * 0.1
        for j, (_, color, values) in enumerate(series):
            v = values[i] if i < len(values) else 0
            bh = h * v / peak
            out.append(f'<rect x="{x0 + j * bar:.1f}" y="{top + h - bh:.1f}" width="{bar:.1f}" height="{bh:.1f}" '
                       f'fill="{color}"><title>{html.escape(label)}: {v:.4g}</title></rect>')
        if i % step == 0:
            out.append(f'<text x="{left + (i + 0.5) * group:.1f}" y="{top + h + 14}" text-anchor="middle">'
                       f'{html.escape(label)}</text>')
    for j, (name, color, _) in enumerate(series):
        x = left + j * 140
        out.append(f'<rect x="{x}" y="{height - 18}" width="10" height="10" fill="{color}"/>'
                   f'<text x="{x + 14}" y="{height - 9}">{html.escape(name)}</text>')
    out.append("</svg>")
    return "".join(out)


def _shares(counts) -> list[float]:
    counts = np.asarray(counts, dtype=float)
    return (counts / counts.sum()).tolist() if counts.sum() else counts.tolist()


def _histogram_chart(title: str, live, baseline_sample, lo: float | None = None, hi: float | None = None) -> str:
    both = np.concatenate([np.asarray(live, float), np.asarray(baseline_sample, float)])
    if not len(both):
        return ""
    if lo is None and both.min() == both.max():
        return ""  # one value on both sides (every image 28 px wide, say): the table says it
    lo = float(both.min()) if lo is None else lo
    hi = float(both.max()) if hi is None else hi
    edges = np.linspace(lo, hi if hi > lo else lo + 1, HISTOGRAM_BINS + 1)
    labels = [f"{e:.3g}" for e in edges[:-1]]
    return bars(title, labels, [("baseline", BASELINE_COLOR, _shares(np.histogram(baseline_sample, edges)[0])),
                                ("live", LIVE_COLOR, _shares(np.histogram(live, edges)[0]))])


def _cell(v) -> str:
    if v is None:
        return ""
    return f"{v:.4g}" if isinstance(v, float) else html.escape(str(v))


def render(a) -> str:
    """The report of an analysis.Analysis."""
    from .analysis import verdict_line

    baseline = a.model.baseline
    classes = list(a.classes)
    predicted = [int((a.predicted == i).sum()) for i in range(len(classes))]
    priors = [baseline.priors[c] for c in classes]
    charts = [bars("Predicted class: training priors and live predictions", classes,
                   [("training priors", BASELINE_COLOR, priors), ("live", LIVE_COLOR, _shares(predicted))]),
              _histogram_chart("Confidence (top probability)", a.confidence,
                               baseline.predictions["confidence"]["sample"], 0, 1),
              _histogram_chart("Entropy (0: certain, 1: uniform)", a.entropy,
                               baseline.predictions["entropy"]["sample"], 0, 1)]
    if baseline.inputs and a.inputs:
        for name in ("brightness", "contrast", "width", "height"):
            charts.append(_histogram_chart(f"Input {name}", [s[name] for s in a.inputs],
                                           baseline.inputs[name]["sample"]))
    if a.labelled and a.model.evaluation:
        per_class = a.model.evaluation.get("per_class", {})
        live_recall = [float((a.labelled_predicted[a.truth == i] == i).mean()) if (a.truth == i).any() else 0.0
                       for i in range(len(classes))]
        charts.append(bars("Recall per class: evaluation and live (labelled images)", classes,
                           [("evaluation", BASELINE_COLOR, [per_class.get(c, {}).get("recall", 0) for c in classes]),
                            ("live", LIVE_COLOR, live_recall)], y_label="recall"))
    rows = []
    for c in a.checks:
        cells = [c.name, c.test, c.n, c.statistic, c.p_value, c.effect, c.min_effect, c.baseline, c.live,
                 "drift" if c.drift else (c.skipped or "no drift")]
        rows.append(f"<tr{' class=fired' if c.drift else ''}>" + "".join(
            f"<td{' class=num' if isinstance(v, (int, float)) else ''}>{_cell(v)}</td>" for v in cells) + "</tr>")
    cap = a.capture
    generated = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    notes = "".join(f"<p class=muted>{html.escape(n)}</p>" for n in a.notes)
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>Monitoring report</title>"
            f"<style>{STYLE}</style></head><body><h1>Monitoring report</h1>"
            f"<p class=muted>Generated {generated}. {cap.files} capture file(s), {cap.records} request(s), "
            f"{len(a.predicted)} image(s), {cap.errors} error answer(s), {cap.unreadable} unreadable; "
            f"{a.labelled} image(s) with ground truth.</p>"
            f"<p id=verdict class={'drift' if a.drift else 'clean'}><b>{'Drift found' if a.drift else 'No drift'}"
            f"</b>: <code>{html.escape(verdict_line(a))}</code></p>{notes}"
            f"<h2>Checks</h2><p>Drift is claimed where p &lt; {a.threshold:.3g} (0.01 shared among the tests run) "
            f"and the effect reaches its minimum; a check without enough data is skipped.</p>"
            f"<table><tr><th>check</th><th>test</th><th>n</th><th>statistic</th><th>p</th><th>effect</th>"
            f"<th>min effect</th><th>baseline</th><th>live</th><th>verdict</th></tr>{''.join(rows)}</table>"
            f"<h2>Distributions</h2>{''.join(charts)}</body></html>\n")
