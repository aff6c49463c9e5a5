"""SVG charts drawn here, so the report page needs no script and nothing from the network.

Each chart is an `<svg data-chart="NAME">`; every bar or point carries `data-series` and
`data-value` (and a `<title>` tooltip), which is also what the browser test checks.
"""

from __future__ import annotations

from html import escape
from typing import Mapping, Sequence

# Colour per series name; anything else cycles through the fallback palette.
COLOURS = {
    "answered": "#2e7d32", "not_found": "#f9a825", "model_failed": "#c62828", "failed": "#6d4c41",
    "up": "#1565c0", "down": "#ad1457",
    "mention": "#1565c0", "followup": "#00838f", "dm": "#6a1b9a", "slash": "#ef6c00", "panel": "#558b2f",
}
_PALETTE = ("#1565c0", "#ef6c00", "#2e7d32", "#6a1b9a", "#00838f", "#ad1457", "#6d4c41", "#558b2f", "#c62828")
LABELS = {"not_found": "not found", "model_failed": "model failed", "up": "voted up", "down": "voted down",
          "followup": "thread follow-up", "dm": "DM", "slash": "slash command"}


def colour(name: str, i: int = 0) -> str:
    return COLOURS.get(name, _PALETTE[i % len(_PALETTE)])


def label(name: str) -> str:
    return LABELS.get(name, name)


def _nice_max(v: float) -> float:
    """A round axis maximum at or above v (1, 2, 5 x 10^k)."""
    if v <= 0:
        return 1.0
    step = 10 ** (len(str(int(v))) - 1)
    for m in (1, 2, 5, 10):
        if m * step >= v:
            return float(m * step)
    return float(10 * step)


def _fmt(v: float) -> str:
    return f"{v:g}" if float(v).is_integer() else f"{v:.2f}".rstrip("0").rstrip(".")


def _legend(names: Sequence[str], x: float, y: float) -> str:
    parts, cx = [], x
    for i, name in enumerate(names):
        text = escape(label(name))
        parts.append(f'<rect x="{cx:.1f}" y="{y - 9:.1f}" width="10" height="10" fill="{colour(name, i)}"/>'
                     f'<text x="{cx + 14:.1f}" y="{y:.1f}" class="legend">{text}</text>')
        cx += 24 + 7 * len(text)
    return "".join(parts)


def _open_svg(name: str, title: str, width: int, height: int) -> list[str]:
    """The chart's opening tag and accessible title, shared by every chart kind."""
    return [f'<svg data-chart="{escape(name)}" role="img" aria-label="{escape(title)}" '
            f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg">',
            f"<title>{escape(title)}</title>"]


def _y_grid(left: float, right_x: float, top: float, plot_h: float, ymax: float) -> list[str]:
    """Grid lines with their value labels at 0, half and the top of the y axis."""
    out = []
    for frac in (0, 0.5, 1):
        y = top + plot_h * (1 - frac)
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{right_x}" y2="{y:.1f}" class="grid"/>'
                   f'<text x="{left - 4}" y="{y + 4:.1f}" class="axis" text-anchor="end">{_fmt(ymax * frac)}</text>')
    return out


def stacked_bars(name: str, categories: Sequence[str], series: Mapping[str, Sequence[float]], *,
                 title: str, width: int = 900, height: int = 260, stacked: bool = True) -> str:
    """Bars per category (e.g. a day), one segment per series; side by side when not stacked."""
    names = list(series)
    left, right, top, bottom = 40, 10, 28, 46
    plot_w, plot_h = width - left - right, height - top - bottom
    n = max(len(categories), 1)
    totals = [sum(series[s][i] for s in names) if stacked else max([series[s][i] for s in names] or [0])
              for i in range(len(categories))]
    ymax = _nice_max(max(totals or [0]))
    slot = plot_w / n
    bar_w = max(slot * 0.8, 1.0)
    out = _open_svg(name, title, width, height) + [_legend(names, left, 14)]
    out += _y_grid(left, width - right, top, plot_h, ymax)
    label_every = max(1, n // 15)
    for i, cat in enumerate(categories):
        x0 = left + i * slot + (slot - bar_w) / 2
        base = top + plot_h
        for j, s in enumerate(names):
            v = series[s][i]
            if v <= 0:
                continue
            h = plot_h * v / ymax
            if stacked:
                x, w, y = x0, bar_w, base - h
                base -= h
            else:
                w = bar_w / len(names)
                x, y = x0 + j * w, top + plot_h - h
            out.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}" fill="{colour(s, j)}" '
                       f'data-series="{escape(s)}" data-category="{escape(cat)}" data-value="{_fmt(v)}">'
                       f"<title>{escape(cat)}: {escape(label(s))} {_fmt(v)}</title></rect>")
        if i % label_every == 0:
            out.append(f'<text x="{x0 + bar_w / 2:.1f}" y="{top + plot_h + 14}" class="axis" '
                       f'text-anchor="end" transform="rotate(-35 {x0 + bar_w / 2:.1f} {top + plot_h + 14})">'
                       f"{escape(cat[5:] if len(cat) == 10 else cat)}</text>")
    out.append("</svg>")
    return "".join(out)


def horizontal_bars(name: str, rows: Sequence[tuple[str, float]], *, title: str, width: int = 900,
                    series: str = "value", unit: str = "") -> str:
    """One labelled bar per row (e.g. a source and how often it was cited)."""
    label_w, bar_h, gap, top = 330, 16, 6, 8
    height = top + len(rows) * (bar_h + gap) + 8
    vmax = max([v for _, v in rows] or [0]) or 1
    plot_w = width - label_w - 70
    out = _open_svg(name, title, width, height)
    for i, (text, v) in enumerate(rows):
        y = top + i * (bar_h + gap)
        w = max(plot_w * v / vmax, 1.0)
        short = text if len(text) <= 48 else text[:47] + "…"
        out.append(f'<text x="{label_w - 6}" y="{y + bar_h - 4}" class="axis" text-anchor="end">{escape(short)}</text>'
                   f'<rect x="{label_w}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="{colour(series)}" '
                   f'data-series="{escape(series)}" data-category="{escape(text)}" data-value="{_fmt(v)}">'
                   f"<title>{escape(text)}: {_fmt(v)}{escape(unit)}</title></rect>"
                   f'<text x="{label_w + w + 4:.1f}" y="{y + bar_h - 4}" class="axis">{_fmt(v)}{escape(unit)}</text>')
    out.append("</svg>")
    return "".join(out)


def lines(name: str, categories: Sequence[str], series: Mapping[str, Sequence[float]], *, title: str,
          width: int = 900, height: int = 240) -> str:
    """One line per series over the categories (e.g. chunks per source over index versions)."""
    names = list(series)
    left, right, top, bottom = 52, 10, 28, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    ymax = _nice_max(max([v for s in names for v in series[s]] or [0]))
    n = len(categories)
    step = plot_w / max(n - 1, 1)
    out = _open_svg(name, title, width, height) + [_legend(names, left, 14)]
    out += _y_grid(left, width - right, top, plot_h, ymax)
    for j, s in enumerate(names):
        pts = [(left + i * step if n > 1 else left + plot_w / 2, top + plot_h * (1 - series[s][i] / ymax))
               for i in range(n)]
        if len(pts) > 1:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
            out.append(f'<polyline points="{path}" fill="none" stroke="{colour(s, j)}" stroke-width="2"/>')
        for i, (x, y) in enumerate(pts):
            out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="{colour(s, j)}" data-series="{escape(s)}" '
                       f'data-category="{escape(categories[i])}" data-value="{_fmt(series[s][i])}">'
                       f"<title>{escape(categories[i])}: {escape(s)} {_fmt(series[s][i])}</title></circle>")
    for i, cat in enumerate(categories):
        x = left + i * step if n > 1 else left + plot_w / 2
        out.append(f'<text x="{x:.1f}" y="{top + plot_h + 16}" class="axis" text-anchor="middle">'
                   f"{escape(cat[:8])}</text>")
    out.append("</svg>")
    return "".join(out)
