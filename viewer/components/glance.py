"""A unit at a glance: the top of every unit page says what the unit does, from every lens the cache holds.

One row of cards, drawn as one HTML block: the best explanation (by a simulator that reads explanations), the
token-lookup baseline, the Neuron2Graph graph's firing F1 beside token-lookup's, the best topic's NPMI beside
random word sets, the ablation effect (loss change, tokens it promotes), and the tokens it fires on with its
density. Each card's title opens its tab; a missing lens
says how to get it, with a button where computing it is cheap (the page runs the job: this module only returns
what was asked for)."""

from __future__ import annotations

import html

import streamlit as st

from cache.store import UnitGlance
from viewer.components.explanations import BASELINE_HELP, TINY
from viewer.components.heatmap import token_code_html
from viewer.components.score_table import METRIC_LABEL, fmt_ci

STYLE = """<style>
.glance {display: flex; gap: 10px; margin: 2px 0 10px 0; font-family: sans-serif; font-size: 14px;}
.glance .card {border: 1px solid #e3e3e3; border-radius: 8px; padding: 8px 12px; flex: 1 1 0; min-width: 0;}
.glance .card.wide {flex: 2.2 1 0;}
.glance .card a {color: #555; font-size: 12.5px; text-decoration: none; text-transform: uppercase;
  letter-spacing: .04em;}
.glance .card a:hover {color: #b03000;}
.glance .big {font-weight: 600; margin: 3px 0;}
.glance .sub {color: #666; font-size: 12.5px;}
.glance .none {color: #999;}
.glance code {background: #f3f3f3; border-radius: 3px; padding: 0 3px; margin-right: 3px; font-size: 12.5px;}
</style>"""


def _card(url: str, title: str, body: str, tip: str = "", wide: bool = False) -> str:
    return (f'<div class="card{" wide" if wide else ""}" title="{html.escape(tip, quote=True)}">'
            f'<a href="{html.escape(url, quote=True)}" target="_self">{html.escape(title)} ↗</a>{body}</div>')


def _verdicts_line(verdicts: list) -> str:
    """The other scorers' headline numbers of an explanation (cache.scorer_results.StoredScore, newest first per
    scorer), one per scorer, intervals in the tooltip."""
    seen, parts = set(), []
    for v in verdicts:
        if v.scorer in seen or v.score is None:
            continue
        seen.add(v.scorer)
        tip = html.escape(f"95 % interval {fmt_ci(v.score, v.lo, v.hi)}", quote=True)
        parts.append(f'<span title="{tip}">{html.escape(v.scorer)} {METRIC_LABEL.get(v.metric, v.metric)} '
                     f"{v.score:.2f}</span>")
    return f'<div class="sub">{" · ".join(parts)}</div>' if parts else ""


def glance_html(g: UnitGlance, tab_url, coming: set[str] = frozenset(), verdicts: list = ()) -> str:
    """The cards; ``tab_url(tab)`` is the URL of this unit's page on a tab; ``coming``: the lenses a running build
    is still to write for it (build lens names); ``verdicts``: the other scorers' verdicts on the best explanation.
    Every text is escaped here."""
    cards = []

    def none(lens: str, text: str = "none yet") -> str:
        return f'<div class="none">{"being built…" if lens in coming else text}</div>'

    if g.best:
        e, s = g.best
        tiny = " (tiny offline model)" if TINY["simulator"] == s.simulator or TINY["explainer"] == e.explainer else ""
        flag = f'<div class="none">flagged: {html.escape(e.degenerate)}</div>' if e.degenerate else ""
        cards.append(_card(tab_url("explanations"), "explanation",
                           f'<div class="big">{html.escape(e.text)}</div>{flag}<div class="sub">r = '
                           f"{fmt_ci(s.score, s.lo, s.hi)} · {html.escape(e.explainer)} → {html.escape(s.simulator)}"
                           f"{tiny}</div>{_verdicts_line(verdicts)}",
                           "the best-scored of the unit's explanations by a simulator that reads them", wide=True))
    else:
        unscored = f" ({g.n_explanations} unscored)" if g.n_explanations else ""
        cards.append(_card(tab_url("explanations"), "explanation",
                           f'<div class="none">none scored yet{unscored}</div><div class="sub"><code>python -m '
                           "analysis explain</code> then <code>score</code>, or write one on the explanations tab"
                           "</div>", wide=True))
    base = next((b for b in g.baselines if b.error is None and b.score is not None), None)
    ci = "" if base is None or base.lo is None else f" · 95&nbsp;% [{base.lo:.2f},&nbsp;{base.hi:.2f}]"
    cards.append(_card(tab_url("explanations"), "baseline",
                       f'<div class="big">r = {base.score:+.3f}</div><div class="sub">token-lookup{ci}</div>' if base
                       else none("baselines"), BASELINE_HELP))
    if g.graph:
        f, b = g.graph.get("firing", {}), g.graph.get("baseline_firing", {})
        cards.append(_card(tab_url("graph"), "graph", f'<div class="big">N2G F1 {f.get("f1", float("nan")):.2f}'
                           f'</div><div class="sub">token-lookup {b.get("f1", float("nan")):.2f}</div>',
                           "held-out firing F1 of the Neuron2Graph graph and of token-lookup on the same records"))
    else:
        cards.append(_card(tab_url("graph"), "graph", none("n2g")))  # neurons and features alike
    if g.topic:
        t = g.topic
        rnd = f" vs random {t.random_median:+.2f}" if t.random_median is not None else ""
        cards.append(_card(tab_url("topics"), "topic", f'<div class="big">{html.escape(" ".join(t.words[:8]))}</div>'
                           f'<div class="sub">NPMI {t.score:+.3f}{rnd} ({html.escape(t.mode)})</div>',
                           "the best positive-end topic over the unit's topic modes, beside the median of random "
                           "word sets from the same pool", wide=True))
    else:
        cards.append(_card(tab_url("topics"), "topic", none("topics", "no coherent topic in its pools")
                           if g.n_topic_sets else none("topics")))
    if g.effects:
        e = g.effects
        promoted = "".join(token_code_html(g.effect_tokens.get(t, str(t))) for t, _v in e.promoted[:4])
        cards.append(_card(tab_url("ablation"), "effect", f'<div class="big">Δloss {e.mean_loss_change:+.4f}</div>'
                           f'<div class="sub">nats/token when ablated ({html.escape(e.mode)}); promotes</div>'
                           f"<div>{promoted}</div>",
                           "ablating the unit on its records: the mean change in next-token loss (> 0: it helps) "
                           "and the tokens whose log-probability it raises most there", wide=True))
    else:
        cards.append(_card(tab_url("ablation"), "effect", none("effects", "not measured yet")))
    toks = "".join(token_code_html(t) for t in g.top_tokens[:5]) or "—"
    cards.append(_card(tab_url("tokens & weights"), "fires on",
                       f'<div>{toks}</div><div class="sub">density {g.density:.2%} of tokens &gt; 0</div>',
                       wide=True))
    return STYLE + '<div class="glance">' + "".join(cards) + "</div>"


def glance_header(g: UnitGlance, tab_url, npmi_counted: bool = True, coming: set[str] = frozenset(),
                  verdicts: list | None = None) -> str | None:
    """Draw the header; return the lens the user asked to compute now ('baseline', 'graph', 'topics', 'effects')
    or None. ``npmi_counted``: whether topics can start at once (else the button says they count NPMI first);
    ``coming``, ``verdicts``: as for ``glance_html`` (None: read here)."""
    if verdicts is None and g.best:
        from viewer.resources import explanation_verdicts

        eid = g.best[0].explanation_id
        verdicts = explanation_verdicts([eid]).get(eid, [])
    st.html(glance_html(g, tab_url, coming, verdicts or ()))
    missing = [(lens, label) for lens, label, gone in (
        ("baseline", "compute baseline (instant)", not any(b.error is None for b in g.baselines)),
        ("graph", "build graph (seconds)", g.neuron and not g.graph),
        ("topics", "compute topics (~1 s)" if npmi_counted else
         "compute topics (NPMI counts first: ~90 s once)", not g.n_topic_sets),
        ("effects", "measure ablation (seconds)", not g.effects)) if gone]
    if not missing:
        return None
    ask = None
    row = st.container(horizontal=True, gap="small")  # each button as wide as its label, wrapping when they do not fit
    for lens, label in missing:
        if row.button(label, key=f"glance_{lens}_now", type="tertiary", icon=":material/play_arrow:", width="content"):
            ask = lens
    return ask
