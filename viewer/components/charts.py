"""Plotly figures."""

from __future__ import annotations

import math

import plotly.graph_objects as go

from analysis.types import UnitStats


def _bars(stats: UnitStats) -> list[tuple[float, float, int]]:
    """(low edge, high edge, tokens) of the non-empty finite bins of the harvest's log-scale grid."""
    out = []
    for (a, b), c in zip(stats.hist_edges, stats.hist_counts):
        lo, hi = (a, b) if a <= b else (b, a)
        if c and abs(hi) != float("inf") and abs(lo) != float("inf"):
            out.append((lo, hi, c))
    return out


def histogram_figure(stats: UnitStats, log_y: bool = True) -> go.Figure:
    """Bars on the harvest's log-scale bins (4 per octave), drawn at their true widths on a linear axis."""
    bars = _bars(stats)
    xs, ws, ys = [(lo + hi) / 2 for lo, hi, _c in bars], [hi - lo for lo, hi, _c in bars], [c for *_e, c in bars]
    tips = [f"[{lo:.4g}, {hi:.4g}): {c:,} tokens" for lo, hi, c in bars]
    fig = go.Figure(go.Bar(x=xs, y=ys, width=ws, hovertext=tips, hoverinfo="text", marker_color="#ff7a00",
                           marker_line_width=0))
    fig.update_layout(height=230, margin=dict(l=10, r=10, t=10, b=30), xaxis_title="activation",
                      yaxis_title="tokens", yaxis_type="log" if log_y else "linear", bargap=0, template="plotly_white")
    return fig


def histogram_svg(stats: UnitStats, width: int = 900, height: int = 200) -> str:
    """The same bars as a static SVG (log-scale counts), for pages that open without a server or scripts."""
    bars = _bars(stats)
    if not bars:
        return "<p>no tokens</p>"
    x0, x1 = min(lo for lo, _h, _c in bars), max(hi for _l, hi, _c in bars)
    top = math.log10(max(c for *_e, c in bars) + 1)
    sx = (width - 60) / max(x1 - x0, 1e-12)
    rects = []
    for lo, hi, c in bars:
        h = (height - 30) * math.log10(c + 1) / top
        rects.append(f'<rect x="{50 + (lo - x0) * sx:.2f}" y="{height - 20 - h:.2f}" width="{max((hi - lo) * sx, 0.6):.2f}" '
                     f'height="{h:.2f}" fill="#ff7a00"><title>[{lo:.4g}, {hi:.4g}): {c:,} tokens</title></rect>')
    zero = 50 + (0 - x0) * sx if x0 <= 0 <= x1 else None
    axis = (f'<line x1="{zero:.2f}" x2="{zero:.2f}" y1="0" y2="{height - 20}" stroke="#999" stroke-dasharray="3"/>'
            if zero is not None else "")
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
            f'font-size="11">{"".join(rects)}{axis}<line x1="50" x2="{width - 10}" y1="{height - 20}" '
            f'y2="{height - 20}" stroke="#555"/><text x="50" y="{height - 5}">{x0:.3g}</text>'
            f'<text x="{width - 10}" y="{height - 5}" text-anchor="end">{x1:.3g}</text>'
            f'<text x="{width / 2}" y="{height - 5}" text-anchor="middle">activation (tokens per bin, log scale)</text>'
            "</svg>")
