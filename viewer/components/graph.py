"""A Neuron2Graph graph drawn with pyvis (vis-network), self-contained (its JS inlined: works offline).

Escaping: token strings reach the page only inside the JSON node list, which pyvis writes with Jinja's
``tojson`` (``<``, ``>``, ``&`` and quotes become \\u escapes, so a token cannot close the script), and
vis-network draws labels on a canvas and sets tooltips with ``innerText``: a token is never parsed as HTML.
Tested in Chromium with ``<script>`` and ``<img onerror>`` tokens.
"""

from __future__ import annotations

import re

from analysis.n2g.graph import ANY

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
