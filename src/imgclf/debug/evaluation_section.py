"""The profiler report's evaluation section, from the job's evaluation.json (train/evaluation.py):
the headline figures, the confusion matrix as a picture, precision, recall and F1 per class as
bars, and the most confused pairs with thumbnails of their mistakes (mistakes.json, as data: URIs).
Inline SVG, like the report's other charts."""
from __future__ import annotations

import html

from markupsafe import Markup

from .charts import PALETTE

CELL = 34  # px per confusion matrix cell (smaller for many classes)
MAX_MATRIX_CLASSES = 40  # beyond this the picture is unreadable: the table of pairs stays


def _label(text: str, limit: int = 14) -> str:
    return html.escape(text if len(text) <= limit else text[:limit - 1] + "…")


def confusion_matrix_svg(matrix: dict[str, dict[str, int]]) -> str:
    """Rows: true class; columns: predicted. Each cell's shade is its share of the row (recall on
    the diagonal), its text the count."""
    classes = list(matrix)
    n = len(classes)
    cell = max(12, min(CELL, 640 // max(1, n)))
    left, top = 120, 110
    size = cell * n
    width, height = max(left + size + 20, 420), top + size + 30  # at least the title's width
    out = [f'<svg class="chart" role="img" aria-label="Confusion matrix" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg" font-family="sans-serif" '
           f'font-size="11"><text x="4" y="16" font-size="13" font-weight="bold">Confusion matrix '
           f'(rows: true class, columns: predicted)</text>']
    for j, c in enumerate(classes):
        x = left + j * cell + cell / 2
        out.append(f'<text x="{x}" y="{top - 6}" transform="rotate(-60 {x} {top - 6})">{_label(c)}</text>')
    for i, t in enumerate(classes):
        row = matrix[t]
        total = sum(row.values()) or 1
        y = top + i * cell
        out.append(f'<text x="{left - 6}" y="{y + cell / 2 + 4}" text-anchor="end">{_label(t)}</text>')
        for j, p in enumerate(classes):
            count = row.get(p, 0)
            share = count / total
            color = (f"rgba(31,119,180,{0.1 + 0.9 * share:.3f})" if i == j
                     else f"rgba(214,39,40,{0.9 * share:.3f})" if count else "#fafafa")
            x = left + j * cell
            out.append(f'<rect x="{x}" y="{y}" width="{cell}" height="{cell}" fill="{color}" stroke="#ddd">'
                       f'<title>{html.escape(t)} predicted as {html.escape(p)}: {count} ({share:.0%} of {html.escape(t)})'
                       f'</title></rect>')
            if count and cell >= 20:
                out.append(f'<text x="{x + cell / 2}" y="{y + cell / 2 + 4}" text-anchor="middle">{count}</text>')
    out.append("</svg>")
    return "".join(out)


def per_class_svg(per_class: dict[str, dict]) -> str:
    """Precision, recall and F1 of each class as grouped bars on [0, 1]."""
    classes = list(per_class)
    metrics = ("precision", "recall", "f1")
    left, right, top, bottom = 48, 16, 28, 80
    group = max(24, min(90, 700 // max(1, len(classes))))
    width, height = max(left + group * len(classes) + right, 320), 260  # at least the legend's width
    h = height - top - bottom
    bar = group * 0.8 / len(metrics)
    out = [f'<svg class="chart" role="img" aria-label="Per-class metrics" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg" font-family="sans-serif" '
           f'font-size="11"><text x="{left}" y="16" font-size="13" font-weight="bold">Precision, recall and F1 '
           f'per class</text>']
    for v in (0, 0.5, 1):
        y = top + h * (1 - v)
        out.append(f'<line x1="{left}" y1="{y}" x2="{width - right}" y2="{y}" stroke="#eee"/>'
                   f'<text x="{left - 4}" y="{y + 4}" text-anchor="end">{v:g}</text>')
    for i, c in enumerate(classes):
        x0 = left + i * group + group * 0.1
        for j, m in enumerate(metrics):
            v = per_class[c][m]
            out.append(f'<rect x="{x0 + j * bar:.1f}" y="{top + h * (1 - v):.1f}" width="{bar:.1f}" '
                       f'height="{h * v:.1f}" fill="{PALETTE[j]}"><title>{html.escape(c)} {m}: {v:.3f} '
                       f'(support {per_class[c]["support"]})</title></rect>')
        x = left + (i + 0.5) * group
        out.append(f'<text x="{x}" y="{top + h + 12}" transform="rotate(-45 {x} {top + h + 12})" '
                   f'text-anchor="end">{_label(c)}</text>')
    for j, m in enumerate(metrics):
        out.append(f'<rect x="{left + j * 90}" y="{height - 14}" width="10" height="10" fill="{PALETTE[j]}"/>'
                   f'<text x="{left + j * 90 + 14}" y="{height - 5}">{m}</text>')
    out.append("</svg>")
    return "".join(out)


def _thumbnails(pairs: list[dict] | None) -> dict[tuple[str, str], list[dict]]:
    """(true, predicted) -> [{"src": data: URI, "title"}] from mistakes.json's pairs."""
    return {(p["true"], p["predicted"]): [{"src": f"data:image/jpeg;base64,{m['jpeg']}",
                                           "title": f"{m['source']}: {m['confidence']:.0%} {p['predicted']}"}
                                          for m in p["images"]] for p in pairs or ()}


def section(evaluation: dict | None, mistakes: list[dict] | None = None) -> dict | None:
    """What the report's template shows of an evaluation and the thumbnails of its mistakes
    (mistakes.json's pairs); None without an evaluation."""
    if not evaluation:
        return None
    headline = evaluation["multiclass_classification_metrics"]
    matrix = headline["confusion_matrix"]
    thumbnails = _thumbnails(mistakes)
    return {
        "split": evaluation.get("split", ""), "images": evaluation.get("images", ""),
        "headline": [(k, f"{v['value']:.4f}", f"{v['standard_deviation']:.4f}") for k, v in headline.items()
                     if isinstance(v, dict) and "value" in v],
        "matrix": Markup(confusion_matrix_svg(matrix)) if len(matrix) <= MAX_MATRIX_CLASSES else None,
        "per_class": Markup(per_class_svg(evaluation["per_class"])) if evaluation.get("per_class") else None,
        "pairs": [(p["true"], p["predicted"], p["count"], thumbnails.get((p["true"], p["predicted"]), []))
                  for p in evaluation.get("most_confused", [])],
    }
