"""Plotly figures."""

from __future__ import annotations

import plotly.graph_objects as go

from analysis.types import UnitStats


def histogram_figure(stats: UnitStats, log_y: bool = True) -> go.Figure:
    """Bars on the harvest's log-scale bins (4 per octave), drawn at their true widths on a linear axis."""
    xs, ws, ys, tips = [], [], [], []
    for (a, b), c in zip(stats.hist_edges, stats.hist_counts):
        if not c:
            continue
        lo, hi = (a, b) if a <= b else (b, a)
        if abs(hi) == float("inf") or abs(lo) == float("inf"):
            continue
        xs.append((lo + hi) / 2)
        ws.append(hi - lo)
        ys.append(c)
        tips.append(f"[{lo:.4g}, {hi:.4g}): {c:,} tokens")
    fig = go.Figure(go.Bar(x=xs, y=ys, width=ws, hovertext=tips, hoverinfo="text", marker_color="#ff7a00",
                           marker_line_width=0))
    fig.update_layout(height=230, margin=dict(l=10, r=10, t=10, b=30), xaxis_title="activation",
                      yaxis_title="tokens", yaxis_type="log" if log_y else "linear", bargap=0, template="plotly_white")
    return fig
