"""The Scores page's boxes: one box per layer for a kind of score, from every point or from the store's quartiles."""

from __future__ import annotations

import plotly.graph_objects as go


def box(trace, name: str, **style) -> go.Box:
    """A kind's scores as one box per layer: every point when the store gave them all, else the store's quartiles,
    fences and the points beyond them (cache.scores.ScoreTrace)."""
    common = dict(name=name, jitter=0.4, pointpos=0, **style)
    if trace.points is not None:
        return go.Box(x=[f"L{u.layer}" for u, _v in trace.points], y=[v for _u, v in trace.points],
                      boxpoints="all", hovertext=[str(u) for u, _v in trace.points], **common)
    b = trace.boxes
    stats = dict(x=[f"L{x.layer}" for x in b], q1=[x.q1 for x in b], median=[x.median for x in b],
                 q3=[x.q3 for x in b], lowerfence=[x.lowerfence for x in b], upperfence=[x.upperfence for x in b])
    if not any(x.outliers for x in b):
        return go.Box(boxpoints=False, **stats, **common)
    # plotly draws no box at all when the first box's points are empty: an empty box gets one missing point
    return go.Box(y=[[v for _u, v in x.outliers] or [None] for x in b],
                  hovertext=[[str(u) for u, _v in x.outliers] or [""] for x in b], boxpoints="outliers", **stats, **common)
