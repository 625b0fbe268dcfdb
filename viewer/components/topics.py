"""Word-pool topics as chips, and their scores against random word sets from the same pool."""

from __future__ import annotations

import html

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from analysis.topics.types import ACTIVATION_SOURCE, RESID
from analysis.types import MLP, UnitId

STYLE = """<style>
.tp {font-family: sans-serif; margin: 2px 0 10px 0;}
.tp .chip {display: inline-block; border-radius: 10px; padding: 1px 8px; margin: 2px 3px 2px 0; font-size: 13.5px;
  border: 1px solid #e0c7a8;}
.tp .sc {color: #555; font-size: 12px; margin-right: 6px; font-variant-numeric: tabular-nums;}
.tp .na {color: #a33; font-size: 11px;}
</style>"""


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


TOPIC_MODES = {"hi-c": "Hi-C", "hi-i": "Hi-I", ACTIVATION_SOURCE: "activation", "lo-c": "Lo-C", "lo-i": "Lo-I"}
TOPIC_HELP = ("Hi-C: the unit's output vector (a neuron's output weights, a feature's decoder direction) through the "
              "later blocks, final norm and unembedding. Hi-I: straight to final norm + unembedding. activation: the "
              "tokens it fires on most in the harvest. Lo-C / Lo-I: a residual-stream dimension through the later "
              "blocks / through its own block only.")


def topic_controls(unit: UnitId) -> tuple[str, UnitId]:
    """The mode picker: (mode, the unit it describes). Lo-C / Lo-I describe a residual-stream dimension, not the
    page's unit, so a dictionary feature's page offers Hi-C, Hi-I (from its decoder direction) and activation."""
    modes = list(TOPIC_MODES) if unit.source == MLP else ["hi-c", "hi-i", ACTIVATION_SOURCE]
    c1, c2 = st.columns([3, 1])
    mode = c1.segmented_control("source", modes, default=modes[0], format_func=TOPIC_MODES.get,
                                key="topic_source", help=TOPIC_HELP) or modes[0]
    if mode.startswith("lo"):
        dim = c2.number_input("residual dimension", 0, None, 0, key="topic_dim",
                              help="Lo-C and Lo-I describe a residual-stream dimension (0 .. d_model - 1), not a neuron")
        return mode, UnitId(RESID, unit.layer, int(dim))
    return mode, unit


def corpus_caption(p: dict) -> str:
    """Which reference corpus scored the topics, how big it is, and how unseen pairs count."""
    size = f" ({p['corpus_words'] / 1e6:.1f} M words)" if p.get("corpus_words") else ""
    unseen = ("a pair never seen together scores −1" if not p.get("eps") else
              f"p(a, b) + {p['eps']:g} as in the reference code, so a pair never seen together scores about −0.1 "
              "(rare words) to −0.4 (common ones)")
    small = (" — a small corpus: most word pairs never meet there, so absolute values are low; compare each topic "
             "with random word sets from the same pool (the default reference-en has 14.7 M words)"
             if p["corpus"] == "enwiki-sample+lee-background" else "")
    return (f"k = {p['k']} words per topic from the top/bottom τ = {p['tau']} tokens · NPMI over {p['window']}-word "
            f"windows of {p['corpus']}{size}; {unseen}{small}")


def random_line(ts) -> str:
    """The best topic against the median random k-word set from the same pool."""
    if not ts.topics or not ts.random_scores:
        return ""
    med = float(np.median(ts.random_scores))
    return f" · best {ts.topics[0].score:+.3f} vs random sets {med:+.3f} (median)"


def dropped_help(ts) -> str | None:
    """Which tokens the pool left out, and why."""
    if not ts.dropped:
        return None
    parts = ", ".join(f"{n} {why}" for why, n in ts.dropped.items())
    return f"Of the {ts.n_tokens} tokens, left out: {parts}; the pool keeps the rest."


def topics_view(sets: list) -> None:
    """Both polarities of one unit and mode (``cache.topics.StoredTopicSet``), against random word sets."""
    p = sets[0].params
    st.caption(corpus_caption(p))
    cols = st.columns(2)
    for col, ts in zip(cols, sorted(sets, key=lambda t: t.polarity != "pos")):
        with col:
            st.markdown(f"**{'positive' if ts.polarity == 'pos' else 'negative'}** · pool {len(ts.pool)} words "
                        f"from {ts.n_tokens} tokens · {len(ts.stars)} stars" + random_line(ts),
                        help=dropped_help(ts))
            if not ts.topics:
                st.caption(f"no topic: {ts.reason}")
                continue
            chips = [topic_html(t.words, t.score, t.contrib, t.optimal) for t in ts.topics]
            st.html(STYLE + "".join(chips[:5]))
            if len(chips) > 5:
                with st.expander(f"{len(chips) - 5} more topics"):
                    st.html(STYLE + "".join(chips[5:]))
    st.plotly_chart(scores_figure(sets), config={"displayModeBar": False})
