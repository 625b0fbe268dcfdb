"""A unit at a glance: the top of every unit page says what the unit does, from every lens the cache holds.

One row of cards: the best explanation (by a simulator that reads explanations), the token-lookup baseline,
the Neuron2Graph graph's firing F1 beside token-lookup's, the best topic's NPMI beside random word sets, and the
tokens it fires on with its density. Each card opens its tab; a missing lens says how to get it, with a button
where computing it is cheap (the page runs the job: this module only returns what was asked for)."""

from __future__ import annotations

import streamlit as st

from cache.store import UnitGlance

from viewer.components.explanations import BASELINE_HELP, TINY
from viewer.components.heatmap import md_escape, md_token


def _open_tab(tab: str) -> None:
    st.query_params["tab"] = tab
    st.session_state.pop("tab_sel", None)  # the tab picker takes its default from the URL again


def _card(col, title: str, tab: str, body: str, help: str | None = None) -> None:
    with col.container(border=True):
        st.button(title, key=f"glance_{title}", on_click=_open_tab, args=(tab,), type="tertiary", help=help,
                  icon=":material/arrow_outward:")
        st.markdown(body)


def glance_header(g: UnitGlance) -> str | None:
    """Draw the header; return the lens the user asked to compute now ('baseline', 'graph', 'topics') or None."""
    ask = None
    c = st.columns([3, 1.3, 1.5, 2.2, 2])
    if g.best:
        e, s = g.best
        tiny = " (tiny offline model)" if TINY["simulator"] == s.simulator or TINY["explainer"] == e.explainer else ""
        _card(c[0], "explanation", "explanations",
              f"**{md_escape(e.text)}**  \nr = {s.score:+.3f} · {e.explainer} → {s.simulator}{tiny}",
              help="the best-scored of the unit's explanations by a simulator that reads them")
    else:
        _card(c[0], "explanation", "explanations",
              "none scored yet" + (f" ({g.n_explanations} unscored)" if g.n_explanations else "")
              + "  \n`python -m analysis explain` then `score`, or write one on the explanations tab")
    base = next((b for b in g.baselines if b.error is None and b.score is not None), None)
    if base:
        _card(c[1], "baseline", "explanations", f"token-lookup  \nr = {base.score:+.3f}", help=BASELINE_HELP)
    else:
        with c[1].container(border=True):
            st.caption("baseline: none yet")
            if st.button("compute (instant)", key="glance_baseline_now"):
                ask = "baseline"
    if g.graph:
        f, b = g.graph.get("firing", {}), g.graph.get("baseline_firing", {})
        _card(c[2], "graph", "graph", f"N2G F1 **{f.get('f1', float('nan')):.2f}**  \ntoken-lookup "
              f"{b.get('f1', float('nan')):.2f}", help="held-out firing F1 of the Neuron2Graph graph and of "
              "token-lookup on the same records")
    elif g.neuron:
        with c[2].container(border=True):
            st.caption("graph: none yet (a few seconds)")
            if st.button("build now", key="glance_graph_now"):
                ask = "graph"
    else:
        _card(c[2], "graph", "graph", "graphs probe MLP neurons only")
    if g.topic:
        t = g.topic
        rnd = f" vs random {t.random_median:+.2f}" if t.random_median is not None else ""
        _card(c[3], "topic", "topics", f"{md_escape(' '.join(t.words[:8]))}  \nNPMI {t.score:+.3f}{rnd} ({t.mode})",
              help="the best positive-end topic over the unit's topic modes, beside the median of random word sets "
                   "from the same pool")
    elif g.n_topic_sets:
        _card(c[3], "topic", "topics", "no coherent topic in its pools")
    else:
        with c[3].container(border=True):
            st.caption("topics: none yet (about a second)")
            if st.button("compute now", key="glance_topics_now"):
                ask = "topics"
    toks = " ".join(md_token(t) for t in g.top_tokens[:5]) or "—"
    _card(c[4], "fires on", "tokens & weights", f"{toks}  \ndensity {g.density:.2%} of tokens > 0")
    return ask
