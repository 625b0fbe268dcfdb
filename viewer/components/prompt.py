"""The Prompt page's parts: the model picker, the layer × token maps, the unit lists with a one-line summary per
unit, the ablation check and the attribution graph. They render what the page hands them (an
``analysis.jobs.attribute.PromptReport``'s parts) and run no model.

Escaping: every token, explanation and topic word reaches HTML through ``html.escape`` (``heatmap.token_code_html``
for token chips); plotly's axis and hover texts are pseudo-HTML, so tokens are escaped there too (plotly shows
``&lt;`` as ``<``). The graph carries tokens only inside pyvis' JSON, drawn as canvas text (see ``graph.py``).
"""

from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass
from typing import Callable

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from analysis.types import UnitId
from viewer.components.heatmap import NEG_RGB, POS_RGB, token_code_html
from viewer.components.picker import unit_name, unit_url


@dataclass(frozen=True)
class UnitLine:
    """What the store says about one listed unit (``viewer.resources.unit_lines`` reads it)."""

    harvested: bool
    """Whether its layer (of its source) is harvested in the database; nothing else is known when not."""
    explanation: str | None = None
    """Its best-scored explanation, or None."""
    score: float | None = None
    """That explanation's correlation score (simulated vs real)."""
    baseline: float | None = None
    """Its token-lookup baseline's correlation score, or None."""
    top_tokens: tuple[str, ...] = ()
    """The tokens with its highest mean activation in the corpus."""
    topic: tuple[str, ...] = ()
    """Its best topic's first words (empty: none)."""
    npmi: float | None = None
    f1: float | None = None
    """Its Neuron2Graph graph's held-out firing F1, or None."""


def model_picker(names: list[str]) -> str:
    """The model, in the sidebar, synced with ``?model=`` (as the unit pages' picker; its own widget key: the unit
    picker reads the whole unit from the URL only while its key is unset)."""
    qp = st.query_params
    if st.session_state.get("prompt_model") not in names:
        st.session_state["prompt_model"] = qp.get("model") if qp.get("model") in names else names[0]
    name = st.sidebar.selectbox("model", names, key="prompt_model")
    qp["model"] = name
    return name


def token_label(token: str) -> str:
    """A token as plotly text: whitespace visible, escaped (plotly reads ``<b>`` as markup, ``&lt;`` as ``<``)."""
    return html.escape(token.replace("\n", "⏎").replace("\t", "⇥").replace(" ", "␣") or "∅")


def layer_token_figure(values: list[list[float]], tokens: list[str], start: int, title: str, value_name: str,
                       colour: tuple[int, int, int], cap: float | None = None, raw_layers: frozenset = frozenset(),
                       mark: int | None = None) -> go.Figure:
    """Layers (rows, layer 0 at the bottom) × tokens (columns from position ``start``) coloured by ``values``,
    white to ``colour``. ``cap``: the value of full colour (larger values saturate; default the largest). Rows
    of ``raw_layers`` hold raw values, coloured on their own scale (the largest raw value) and labelled "raw".
    ``mark``: a position to outline (the target's)."""
    n_layers = len(values)
    raw_max = max([abs(v) for layer in raw_layers for v in values[layer]] + [1e-9])
    rel = [abs(v) for layer in range(n_layers) if layer not in raw_layers for v in values[layer]]
    top = cap if cap is not None else max(rel + [1e-9])
    shade = [[min(1.0, abs(v) / (raw_max if layer in raw_layers else top)) for v in values[layer]]
             for layer in range(n_layers)]
    labels = [token_label(t) for t in tokens]
    hover = [[f"L{layer}{' (raw)' if layer in raw_layers else ''} · position {start + i} {labels[i]}<br>"
              f"{'activation (raw)' if layer in raw_layers else html.escape(value_name)} {v:.3g}"
              for i, v in enumerate(values[layer])] for layer in range(n_layers)]
    r, g, b = colour
    fig = go.Figure(go.Heatmap(
        z=shade, x=list(range(start, start + len(tokens))), y=list(range(n_layers)), text=hover,
        hoverinfo="text", zmin=0, zmax=1, colorscale=[[0, "rgb(255,255,255)"], [1, f"rgb({r},{g},{b})"]],
        showscale=False, xgap=1, ygap=1))
    fig.update_xaxes(tickmode="array", tickvals=list(range(start, start + len(tokens))), ticktext=labels,
                     tickangle=-45 if len(tokens) > 12 else 0, showgrid=False)
    step = max(1, n_layers // 15)
    fig.update_yaxes(tickmode="array", tickvals=list(range(0, n_layers, step)),
                     ticktext=[f"L{l}{' raw' if l in raw_layers else ''}" for l in range(0, n_layers, step)],
                     title="layer", showgrid=False)
    if mark is not None:
        fig.add_shape(type="rect", x0=mark - 0.5, x1=mark + 0.5, y0=-0.5, y1=n_layers - 0.5,
                      line={"color": "#b03000", "width": 2})
    fig.update_layout(title=title, height=int(min(620, max(220, 16 * n_layers + 130))), template="plotly_white",
                      margin={"l": 60, "r": 10, "t": 40, "b": 10})
    return fig


def layer_token_map(fig: go.Figure, key: str) -> None:
    st.plotly_chart(fig, key=key, config={"displayModeBar": False})


UNITS_STYLE = """<style>
.units {font-family: sans-serif; font-size: 13.5px; border-collapse: collapse; width: 100%; margin-bottom: 8px;}
.units td, .units th {padding: 3px 8px; border-bottom: 1px solid #eee; text-align: left; vertical-align: top;}
.units th {color: #777; font-weight: 500; font-size: 12px;}
.units td.num {text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap;}
.units a {color: #b03000; text-decoration: none; white-space: nowrap;}
.units code {background: #f3f3f3; border-radius: 3px; padding: 0 3px; margin-right: 2px; font-size: 12.5px;}
.units .none {color: #999;}
.units .raw {color: #999; font-size: 11.5px;}
.units .expl {font-style: italic;}
</style>"""


def summary_html(line: UnitLine | None) -> str:
    """A unit's one-line summary: its best explanation (else its token-lookup baseline), the tokens it fires on,
    its best topic, its graph's F1."""
    if line is None or not line.harvested:
        return '<span class="none">no harvest of its layer in the database</span>'
    parts = []
    if line.explanation is not None:
        parts.append(f'<span class="expl">“{html.escape(line.explanation)}”</span> r {line.score:+.2f}')
    elif line.baseline is not None:
        parts.append(f'<span class="none">no explanation; token-lookup r {line.baseline:+.2f}</span>')
    else:
        parts.append('<span class="none">no explanation</span>')
    if line.top_tokens:
        parts.append("fires on " + "".join(token_code_html(t) for t in line.top_tokens))
    if line.topic:
        parts.append(f"topic {html.escape(' '.join(line.topic))} (NPMI {line.npmi:+.2f})")
    if line.f1 is not None:
        parts.append(f"N2G F1 {line.f1:.2f}")
    return " · ".join(parts)


def units_html(model_name: str, units: list, tokens: list[str], lines: dict[UnitId, UnitLine],
               value: tuple[str, Callable], raw: frozenset = frozenset(), activation: bool = True) -> str:
    """A table of ``units`` (``analysis.attribution.units.UnitAt``): the unit (a link to its page), where, ``value``
    (its column title and how to show a UnitAt's value), its activation there (unless ``activation`` is False: the
    value is the activation), and its one-line summary. Units whose (source, layer) is in ``raw`` are marked as
    ranked by raw activation."""
    if not units:
        return '<div class="units none">none</div>'
    rows = []
    for u in units:
        mark = ' <span class="raw" title="no harvest of its layer in the database: raw activations only">raw</span>' \
            if (u.unit.source, u.unit.layer) in raw else ""
        rows.append(
            f'<tr><td><a href="{html.escape(unit_url(model_name, u.unit), quote=True)}" target="_self" '
            f'title="{html.escape(u.unit.source, quote=True)}">'
            f"{html.escape(unit_name(u.unit))}</a>{mark}</td><td>{u.position} {token_code_html(tokens[u.position])}"
            f'</td><td class="num">{html.escape(value[1](u))}</td>'
            + (f'<td class="num">{u.activation:+.3g}</td>' if activation else "") +
            f"<td>{summary_html(lines.get(u.unit))}</td></tr>")
    head = (f"<tr><th>unit</th><th>at token</th><th>{html.escape(value[0])}</th>"
            + ("<th>activation</th>" if activation else "") + "<th>what the database says</th></tr>")
    return UNITS_STYLE + f'<table class="units">{head}{"".join(rows)}</table>'


def check_table(checked: list, tokens: list[str]) -> None:
    """The ablation check (``analysis.attribution.check.Checked``): estimate beside real, with a mark."""
    st.dataframe(pd.DataFrame([{
        "unit": unit_name(c.unit.unit), "source": c.unit.unit.source, "position": c.unit.position,
        "token": repr(tokens[c.unit.position]), "activation": c.unit.activation, "estimate": c.estimate,
        "real": c.real, "agrees": "✓" if c.agrees else "✗"} for c in checked]),
        hide_index=True, column_config={
            "estimate": st.column_config.NumberColumn(format="%+.3f", help="−attribution: the linear estimate of "
                                                      "the target's change when the unit is set to 0 there"),
            "real": st.column_config.NumberColumn(format="%+.3f", help="the target's real change when the unit is "
                                                  "set to 0 there (one forward pass, nothing frozen)"),
            "activation": st.column_config.NumberColumn(format="%+.3g"),
            "agrees": st.column_config.TextColumn(help="same sign and within a factor of 2")})


# ---- the graph ---------------------------------------------------------------------------------------------------

MIN_COL, ROW_H, NODE_W = 96, 56, 78  # px: an empty column, a layer row, a unit box
FRAME_W = 900  # px: the graph frame's usual width on a wide page


def _hex(rgb: tuple[int, int, int], f: float) -> str:
    """White -> ``rgb`` by ``f`` in [0, 1]."""
    f = max(0.0, min(1.0, f))
    return "#" + "".join(f"{int(255 + (c - 255) * f):02x}" for c in rgb)


def prompt_graph_html(model_name: str, graph, tokens: list[str], target_text: str, start: int = 0,
                      rest: bool = False) -> tuple[str, int]:
    """An ``analysis.attribution.graph.PromptGraph`` as an interactive page: a column per token (from ``start``), a row
    per layer that holds a node (upward), the target on top; nodes coloured by their attribution to the target
    (orange: for, blue: against), edges by their weight. A click on a unit opens its page (a new tab). ``rest``:
    also each layer's "rest" node (what the layer's other units carry). Returns (the page, its height in px)."""
    from pyvis.network import Network

    nodes, n = graph.nodes, len(graph.nodes)
    edges = [e for e in graph.edges if rest or (e.source >= 0 and e.target >= 0)]
    layers = sorted({u.unit.layer for u in nodes} | ({-1 - e.source for e in edges if e.source < 0} if rest else set()))
    row = {layer: i for i, layer in enumerate(reversed(layers))}  # the top row is the last layer
    per_cell: dict[tuple[int, int], list[int]] = {}
    for i, u in enumerate(nodes):
        per_cell.setdefault((u.unit.layer, u.position), []).append(i)
    # each column as wide as its fullest cell (attribution gathers at a few tokens: the others stay narrow)
    widths = [max([MIN_COL] + [NODE_W * len(v) + 18 for (_l, p), v in per_cell.items() if p == pos])
              for pos in range(start, len(tokens))]
    centre, left = {}, MIN_COL  # the first column: the layers' labels (or rest nodes)
    for pos, w in zip(range(start, len(tokens)), widths):
        centre[pos], left = left + w / 2, left + w
    vmax = max([abs(u.value) for u in nodes] + [1e-9])
    # the drawing is fitted to the frame: a frame of the drawing's proportions (at a typical page width) wastes no
    # space above and below it
    height = max(360, int(min(1.0, FRAME_W / left) * ROW_H * (len(layers) + 2)) + 70)
    net = Network(height=f"{height}px", width="100%", directed=True, cdn_resources="in_line")
    net.set_options('{"physics": {"enabled": false}, "interaction": {"hover": true, "dragNodes": true, '
                    '"zoomView": true, "navigationButtons": false}, "edges": {"smooth": {"type": "curvedCW", '
                    '"roundness": 0.12}, "arrows": {"to": {"scaleFactor": 0.5}}}}')
    urls = {}
    for (layer, pos), members in per_cell.items():
        for k, i in enumerate(members):
            u = nodes[i]
            colour = POS_RGB if u.value >= 0 else NEG_RGB
            urls[i] = unit_url(model_name, u.unit)
            net.add_node(i, label=unit_name(u.unit), shape="box", x=centre[pos] + (k - (len(members) - 1) / 2) * NODE_W,
                         y=(row[layer] + 1) * ROW_H,
                         color={"background": _hex(colour, abs(u.value) / vmax), "border": "#555"},
                         font={"size": 12}, title=f"{unit_name(u.unit)} ({u.unit.source}) at {pos} {tokens[pos]!r}\n"
                         f"activation {u.activation:+.3g}\nattribution to the target {u.value:+.3g}\n"
                         "click: open its page")
    target = graph.target
    net.add_node(n, label=f"→ {target_text!r}", shape="box", x=centre.get(target.position, left), y=0,
                 color={"background": "#fff3bf", "border": "#b03000"}, borderWidth=3, font={"size": 15},
                 title=f"the target: {target_text!r} after position {target.position}")
    if rest:
        for layer in layers:
            net.add_node(-1 - layer, label=f"rest of L{layer}", shape="dot", size=5, color="#ced4da",
                         x=MIN_COL / 2, y=(row[layer] + 1) * ROW_H, font={"size": 11, "color": "#888"},
                         title=f"the units of layer {layer} not in the graph")
    else:
        for layer in layers:
            net.add_node(f"L{layer}", label=f"L{layer}", shape="text", x=MIN_COL / 2,
                         y=(row[layer] + 1) * ROW_H, font={"size": 12, "color": "#888"}, title=f"layer {layer}")
    for pos in range(start, len(tokens)):
        net.add_node(f"t{pos}", label=repr(tokens[pos]), shape="text", x=centre[pos],
                     y=(len(layers) + 1) * ROW_H, font={"size": 14, "color": "#333"}, title=f"position {pos}")
    wmax: dict[int, float] = {}
    for e in edges:
        wmax[e.target] = max(wmax.get(e.target, 0.0), abs(e.weight))
    for e in edges:
        f = abs(e.weight) / max(wmax[e.target], 1e-12)
        net.add_edge(e.source, e.target, width=0.5 + 5 * f, title=f"{e.weight:+.3g}",
                     color={"color": _hex(POS_RGB if e.weight >= 0 else NEG_RGB, 0.25 + 0.75 * f), "opacity": 1.0})
    page = net.generate_html()
    page = re.sub(r'<(?:link|script)[^>]+cdn\.jsdelivr\.net[^>]*>(?:</script>)?', "", page)
    click = ("<script>var unitUrls = " + json.dumps(urls).replace("<", "\\u003c") + ";\n"
             'network.on("click", function (p) { var u = p.nodes.length ? unitUrls[p.nodes[0]] : null; '
             'if (u) window.open(new URL(u, document.baseURI).href, "_blank"); });</script>')
    return page.replace("</body>", click + "</body>", 1), height


def graph_view(page: str, height: int, data: dict, file_name: str) -> None:
    """The drawn graph and its JSON download."""
    st.iframe(page, height=height + 30)
    st.download_button("download the graph (JSON)", json.dumps(data, indent=1), file_name=file_name,
                       mime="application/json", icon=":material/download:")
