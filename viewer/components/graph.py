"""Neuron2Graph in the viewer: the graph drawn with pyvis (vis-network, its JS inlined: works offline) and the
neuron page's graph panel (metrics against token-lookup, similar graphs, held-out records real vs predicted).

Escaping: token strings reach the page only inside the JSON node list, which pyvis writes with Jinja's
``tojson`` (``<``, ``>``, ``&`` and quotes become \\u escapes, so a token cannot close the script), and
vis-network draws labels on a canvas and sets tooltips with ``innerText``: a token is never parsed as HTML.
Tested in Chromium with ``<script>`` and ``<img onerror>`` tokens.
"""

from __future__ import annotations

import re

import pandas as pd
import streamlit as st

from analysis.n2g.evaluate import FIRING_FRACTION
from analysis.n2g.graph import ANY
from analysis.splits import N2G_HEAD
from analysis.types import TokenActivations, UnitId
from viewer.components.heatmap import records_html
from viewer.components.picker import unit_name, unit_url

ACTIVATING = "#e8590c"
IMPORTANT = "#fab005"
ANY_COLOR = "#ced4da"


def _shade(value: float, vmax: float) -> str:
    """White -> orange by activation (the heatmap's positive scale)."""
    f = max(0.0, min(1.0, value / vmax)) if vmax > 0 else 0.0
    r, g, b = (int(255 + (c - 255) * f) for c in (253, 126, 20))
    return f"#{r:02x}{g:02x}{b:02x}"


def shown_patterns(patterns: list[tuple[list[int], float]], min_value: float, max_roots: int) -> list:
    """The patterns worth drawing: activation >= ``min_value``, of the ``max_roots`` strongest activating tokens."""
    kept = [p for p in patterns if p[1] >= min_value]
    roots: list[int] = []
    for pattern, _v in sorted(kept, key=lambda p: -p[1]):
        if pattern[0] not in roots:
            roots.append(pattern[0])
    return [p for p in kept if p[0][0] in roots[:max_roots]]


def graph_height(patterns: list) -> int:
    """Enough room for one row per pattern end, within reason."""
    return int(min(900, max(260, 46 * len(patterns))))


def graph_html(patterns: list[tuple[list[int], float]], vocab: dict[int, str], vmax: float) -> str:
    """The trie of ``patterns`` as an interactive HTML page (filter first with ``shown_patterns``).

    Layout: reading order, left to right: context nodes point to the next token, ending at the activating token
    (outlined, on the right). Important tokens are boxes shaded by the strongest activation of the patterns
    through them; "any token" nodes are small grey dots.
    """
    from pyvis.network import Network

    net = Network(height=f"{graph_height(patterns)}px", width="100%", directed=True, cdn_resources="in_line")
    net.set_options('{"layout": {"hierarchical": {"enabled": true, "direction": "RL", "sortMethod": "directed",'
                    ' "levelSeparation": 150, "nodeSpacing": 36, "treeSpacing": 50}}, "physics": {"enabled": false},'
                    ' "interaction": {"hover": true, "dragNodes": true, "zoomView": true}}')
    # a run of "any token" nodes is drawn as one node ("3 any"): (key, count) groups
    strongest: dict[tuple[tuple[int, int], ...], float] = {}
    for pattern, value in sorted(patterns, key=lambda p: -p[1]):
        groups: list[tuple[int, int]] = []
        for key in pattern:
            if key == ANY and groups and groups[-1][0] == ANY:
                groups[-1] = (ANY, groups[-1][1] + 1)
            else:
                groups.append((key, 1))
        for depth in range(1, len(groups) + 1):
            path = tuple(groups[:depth])
            strongest[path] = max(strongest.get(path, value), value)
    ids = {path: i for i, path in enumerate(strongest)}
    for path, value in strongest.items():
        key, count = path[-1]
        text = vocab.get(key, f"#{key}")
        if key == ANY:
            net.add_node(ids[path], label="any" if count == 1 else f"{count} any", shape="dot", size=6,
                         title="any token" if count == 1 else f"any {count} tokens", color=ANY_COLOR,
                         level=len(path) - 1)
        elif len(path) == 1:
            net.add_node(ids[path], label=repr(text), title=f"activating token {text!r}\nmax activation {value:.3g}",
                         shape="box", color={"background": _shade(value, vmax), "border": ACTIVATING},
                         borderWidth=4, font={"size": 18}, level=0)
        else:
            before = sum(c for _k, c in path[1:])
            net.add_node(ids[path], label=repr(text), title=f"context token {text!r}, {before} before\n"
                         f"strongest activation through it {value:.3g}", shape="box",
                         color={"background": _shade(value, vmax), "border": IMPORTANT}, level=len(path) - 1)
        if len(path) > 1:
            net.add_edge(ids[path], ids[path[:-1]], color="#868e96")
    html = net.generate_html()
    # pyvis also links bootstrap from a CDN for menus we do not use: drop it (offline, no third-party requests)
    return re.sub(r'<(?:link|script)[^>]+cdn\.jsdelivr\.net[^>]*>(?:</script>)?', "", html)


def graph_panel(model_name: str, g, vocab: dict[int, str], data, rec, window: int | None) -> None:
    """A unit's stored graph (``cache.graphs.StoredGraph``): the drawing, P/R/F1 against token-lookup, and what
    ``data`` (``analysis.n2g.pipeline.GraphPanelData``) holds: similar graphs of its layer, held-out records real
    vs predicted."""
    unit = rec.unit
    m = g.metrics
    more = f" (+ {data.n_extra} past the first {N2G_HEAD}, with no probes)" if data.n_extra else ""
    st.markdown(f"**{len(g.patterns)} patterns** · fitted on {data.n_train} top records{more}, scored on "
                f"{len(data.test)} held-out ones · "
                f"a token fires at ≥ {FIRING_FRACTION:g} × max = {FIRING_FRACTION * g.max_activation:.3g} · "
                f"augmentation {'on' if g.params.get('augment') else 'off'} · fitted in {g.seconds:.1f} s (its share "
                "of its batch)")
    st.dataframe(pd.DataFrame([
        {"": name, "firing P": m[a]["precision"], "firing R": m[a]["recall"], "firing F1": m[a]["f1"],
         "non-firing P": m[b]["precision"], "non-firing R": m[b]["recall"], "non-firing F1": m[b]["f1"]}
        for name, a, b in [("Neuron2Graph", "firing", "non_firing"),
                           ("token-lookup", "baseline_firing", "baseline_non_firing")]]).round(3), hide_index=True)
    c1, c2 = st.columns([2, 3])
    exceptions = c1.toggle("also non-firing patterns", key="n2g_all",
                           help="substitutes and contexts that silence the neuron (stored as exceptions)")
    roots = c2.slider("activating tokens shown (strongest first)", 1, 50, 12, key="n2g_roots")
    shown = shown_patterns(g.patterns, 0.0 if exceptions else FIRING_FRACTION * g.max_activation, roots)
    st.caption(f"{len(shown)} of {len(g.patterns)} patterns. Drag, zoom, hover. Read left to right into the "
               "activating token (outlined, right): boxes are tokens that matter, shaded by activation; grey dots "
               "match any token.")
    st.iframe(graph_html(shown, vocab, g.max_activation), height=graph_height(shown) + 20)
    st.markdown(f"**Similar graphs in layer {unit.layer}** (Jaccard over trie paths, of {data.n_others} other "
                "graphs): " + (", ".join(f"[{unit_name(UnitId(unit.source, unit.layer, u))}]"
                                         f"({unit_url(model_name, UnitId(unit.source, unit.layer, u), tab='graph')})"
                                         f" {j:.2f}" for u, j in data.similar) or "none overlaps"))
    st.markdown("**Held-out records**: real (top line) vs the graph's prediction")
    rows, labels = [], []
    for i, (r, predicted) in enumerate(zip(data.test, data.predicted)):
        rows += [r, TokenActivations(r.tokens, predicted)]
        labels += [f"#{i + 1} real", "predicted"]
    st.html(records_html(rows, max(rec.stats.max, 1e-9), window, labels))
