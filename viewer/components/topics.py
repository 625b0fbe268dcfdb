"""Word-pool topics as chips, and their scores against random word sets from the same pool."""

from __future__ import annotations

import html

import numpy as np
import plotly.graph_objects as go

STYLE = """<style>
.tp {font-family: sans-serif; margin: 2px 0 10px 0;}
.tp .chip {display: inline-block; border-radius: 10px; padding: 1px 8px; margin: 2px 3px 2px 0; font-size: 13.5px;
  border: 1px solid #e0c7a8;}
.tp .sc {color: #555; font-size: 12px; margin-right: 6px; font-variant-numeric: tabular-nums;}
.tp .na {color: #a33; font-size: 11px;}
</style>"""


def contributions(words: list[str], star_words: list[str], npmi: np.ndarray) -> list[float]:
    """Each topic word's mean NPMI with the topic's other words (from its star's matrix)."""
    idx = [star_words.index(w) for w in words]
    sub = npmi[np.ix_(idx, idx)]
    n = len(idx)
    return [float((sub[i].sum() - sub[i, i]) / (n - 1)) if n > 1 else 0.0 for i in range(n)]


def topic_html(words: list[str], score: float, contrib: list[float], optimal: bool) -> str:
    """One topic: its score, then its words as chips shaded by contribution (darker = more coherent)."""
    lo, hi = min(contrib), max(contrib)
    chips = []
    for w, c in sorted(zip(words, contrib), key=lambda x: -x[1]):
        f = (c - lo) / (hi - lo) if hi > lo else 1.0
        chips.append(f'<span class="chip" style="background: rgba(255,122,0,{0.15 + 0.6 * f:.2f})" '
                     f'title="{html.escape(f"{w}: mean NPMI with the others {c:+.3f}", quote=True)}">'
                     f"{html.escape(w)}</span>")
    flag = "" if optimal else '<span class="na"> (time limit: best found, not proven optimal)</span>'
    return f'<div class="tp"><span class="sc">{score:+.3f}</span>{"".join(chips)}{flag}</div>'


def scores_figure(sets: list) -> go.Figure:
    """Per polarity: the topics' NPMI (dots) against random k-word sets from the same pool (box)."""
    fig = go.Figure()
    for ts in sets:
        if ts.random_scores:
            fig.add_trace(go.Box(x=ts.random_scores, name=f"{ts.polarity}: random sets", marker_color="#adb5bd",
                                 boxpoints=False, orientation="h"))
        if ts.topics:
            fig.add_trace(go.Scatter(x=[t.score for t in ts.topics], y=[f"{ts.polarity}: topics"] * len(ts.topics),
                                     mode="markers", marker=dict(color="#e8590c", size=10),
                                     text=[" ".join(t.words) for t in ts.topics], hoverinfo="text+x",
                                     name=f"{ts.polarity}: topics"))
    fig.update_layout(height=90 + 45 * len(fig.data), margin=dict(l=10, r=10, t=10, b=30), showlegend=False,
                      xaxis_title="mean pairwise NPMI of k words")
    return fig
