"""Prompt: start from text. What fires on it (each unit relative to its corpus maximum), what causes the model's
prediction at a position (attribution through the frozen model), the top causes ablated for real, and how they
connect (docs/lenses/attribution.md). The whole view is in the URL: ``/prompt?model&text&target&position&contrast
&sae&first&at&graph``."""

from __future__ import annotations

import streamlit as st

from analysis.attribution.units import top_units
from analysis.jobs.attribute import AttributeJob
from viewer.components.heatmap import md_escape, md_token
from viewer.components.picker import source_label
from viewer.components.prompt import (check_table, graph_view, layer_token_figure, layer_token_map, model_picker,
                                      prompt_graph_html, units_html)
from viewer.resources import (MAX_PROMPT_TOKENS, cached_models, catalog, find_run, prompt_report, prompt_tokens, read,
                              show_error, unit_lines)

DEFAULT_TEXT = "The Eiffel Tower is in the city of"
# (comments, not docstrings: Streamlit's magic would show a bare string on the page)
TOP = 12  # units listed for and against the target (the share is theirs)
AT_TOKEN, AT_TOKEN_RAW = 12, 6  # units listed at the picked token: relative to their corpus max; no harvest (raw)
LAST = -1  # the position picker's "the last token"
ACT_RGB, ATTR_RGB = (255, 122, 0), (112, 72, 232)


def _init(key: str, value) -> None:
    """A widget's first value in this session: from the URL."""
    if key not in st.session_state:
        st.session_state[key] = value


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _keep(key: str, value: str | None) -> None:
    """``?key=value`` in the URL, or no ``key`` when the value is None (the default)."""
    qp = st.query_params
    if value is None:
        qp.pop(key, None)
    else:
        qp[key] = value


def _named(dictionaries: list, asked: str) -> list[str]:
    """The ids that ``?sae=`` names (each an id, a folder or a bare name); a name that fits none or several is
    said on the page and left out."""
    from analysis.jobs.reads import match_source
    from analysis.types import UserError

    out = []
    for text in filter(None, (t.strip() for t in asked.split(","))):
        try:
            out.append(match_source(dictionaries, text))
        except UserError as e:
            st.warning(str(e))
    return out


def inputs(model, dictionaries: list) -> AttributeJob | None:
    """The prompt and its options, synced with the URL: the job, or None (with a message) when there is nothing to
    run."""
    qp = st.query_params
    _init("prompt_text", qp.get("text", DEFAULT_TEXT))
    text = st.text_area("text", key="prompt_text", height=90,
                        help=f"at most {MAX_PROMPT_TOKENS} tokens; the prediction after a position is explained")
    _keep("text", text if len(text) <= 2000 else None)  # long texts stay out of the URL
    if not text.strip():
        st.info("Type or paste a prompt above: the page explains what the model predicts after it.")
        return None
    try:
        tokens = prompt_tokens(model.name, text)
    except Exception as exc:
        show_error(exc)
        return None
    if len(tokens) > MAX_PROMPT_TOKENS:
        st.warning(f"The prompt is {len(tokens):,} tokens: this page takes at most {MAX_PROMPT_TOKENS} (a report "
                   "keeps every unit at every position). Shorten it, or run `python -m analysis attribute` on it.")
        return None
    c1, c2, c3 = st.columns([2, 2, 3])
    _init("prompt_target", qp.get("target", ""))
    target = c1.text_input("target token", key="prompt_target", placeholder="the model's top prediction",
                           help="the next token to explain, as it would follow the text, leading space included "
                                "(' Paris'); empty: the model's top prediction")
    _init("prompt_contrast", qp.get("contrast", ""))
    contrast = c2.text_input("against (optional)", key="prompt_contrast", placeholder="no contrast",
                             help="explain the logit difference target − this token (' London')")
    positions = [LAST, *range(len(tokens))]  # (not None: a selectbox shows None as no choice)
    _init("prompt_position", _int(qp.get("position")))
    if st.session_state["prompt_position"] not in positions:
        st.session_state["prompt_position"] = LAST
    picked = c3.selectbox("predicted after", positions, key="prompt_position",
                          format_func=lambda p: f"the last token ({len(tokens) - 1}: {tokens[-1]!r})" if p == LAST
                          else f"{p}: {tokens[p]!r}")
    position = None if picked == LAST else picked
    _keep("target", target or None)
    _keep("contrast", contrast or None)
    _keep("position", None if position is None else str(position))
    sources = [d.source for d in dictionaries]
    default = [d.source for d in dictionaries if d.format != "baseline"]
    c4, c5 = st.columns([5, 2], vertical_alignment="bottom")
    key = f"prompt_sae:{model.name}"
    if sources:
        asked = qp.get("sae")
        _init(key, default if asked is None else [] if asked == "none" else _named(dictionaries, asked))
        chosen = c4.multiselect("dictionaries (their features count as units too)", sources, key=key,
                                format_func=lambda s: source_label(s, {d.source: d for d in dictionaries}))
        _keep("sae", None if chosen == default else ",".join(chosen) or "none")
    else:
        chosen = []
    _init("prompt_first", qp.get("first") == "1")
    first = c5.toggle("list the first token", key="prompt_first",
                      help="units at the first position (often an attention sink, with activations and attributions "
                           "many times any other's) are left out of the lists and maps unless this is on")
    _keep("first", "1" if first else None)
    _init("prompt_graph", qp.get("graph") == "1")
    graph = bool(st.session_state["prompt_graph"])
    return AttributeJob(text=text, model=model.name, target=target or None, position=position,
                        contrast=contrast or None, sae=tuple(chosen), top=TOP, graph=graph, first=first)


def render() -> None:
    found = read(lambda s: (cached_models(s), catalog(s)[2]))
    if found is None:
        return
    models, dictionaries = found
    st.title("Prompt")
    if not models:
        return
    name = model_picker(sorted({m.name for m in models}))
    model = next(m for m in models if m.name == name)
    job = inputs(model, [d for d in dictionaries.values() if d.model_id == model.model_id])
    if job is None:
        return
    try:
        with st.spinner("running the model: a forward pass, a backward pass, the ablations"
                        + (", a backward pass per graph node…" if job.graph else "…")):
            report = prompt_report(job)
    except Exception as exc:
        show_error(exc)
        return
    raw = read(lambda s: frozenset(k for k in report.relative if find_run(s, model.name, k[1], k[0]) is None))
    if raw is None:
        return
    if report.notes:
        st.info("\n".join(f"- {md_escape(n)}" for n in report.notes))
    tokens, t = report.tokens, report.target
    against = (f" against {md_token(report.contrast_text)} (the logit difference)" if report.contrast_text else
               " (its logit)")
    chosen = "the token asked for" if job.target else "the model's top prediction"
    st.markdown(f"#### Explaining {md_token(report.target_text)}, {chosen}, after position {t.position} "
                f"{md_token(tokens[t.position])}{against}: {report.attribution.value:+.3g}")
    skip = 0 if job.first or t.position == 0 else 1  # as the report lists them
    fires_section(model, report, raw, skip)
    causes_section(model, report, raw, skip)
    check_section(report)
    graph_section(model.name, report, skip)


def lines_of(model, units: list) -> dict:
    """The one-line summaries of the listed units (empty when the store cannot be read: the lists still show)."""
    return read(lambda s: unit_lines(s, model.model_id, list({u.unit: None for u in units}))) or {}


def fires_section(model, report, raw: frozenset, skip: int) -> None:
    st.subheader("What fires")
    raw_layers = frozenset(layer for _s, layer in raw)
    st.caption("Per layer and token, the strongest unit's activation divided by its largest activation in the "
               "corpus harvest (1: as strong as anywhere in the corpus; neurons and the chosen dictionaries' "
               "features)." + (" Rows marked raw have no harvest: raw activations, on their own scale." if raw_layers
                               else "") + " Hover for values.")
    layer_token_map(layer_token_figure(report.fires_map[:, skip:].tolist(), report.tokens[skip:], skip,
                                       "activation relative to the corpus max", "relative activation", ACT_RGB,
                                       cap=1.0, raw_layers=raw_layers, mark=report.target.position), "prompt_fires")
    tokens = report.tokens
    positions = list(range(skip, len(tokens)))
    _init("prompt_at", _int(st.query_params.get("at")))
    if st.session_state["prompt_at"] not in positions:
        st.session_state["prompt_at"] = report.target.position if report.target.position in positions else positions[-1]
    at = st.columns([2, 3])[0].selectbox("units at token", positions, key="prompt_at",
                                         format_func=lambda p: f"{p}: {tokens[p]!r}")
    _keep("at", str(at))
    acts = report.attribution.acts
    ranked = top_units({k: v for k, v in report.relative.items() if k not in raw}, AT_TOKEN, position=at, acts=acts)
    unharvested = top_units({k: v for k, v in report.relative.items() if k in raw}, AT_TOKEN_RAW, position=at,
                            acts=acts)
    lines = lines_of(model, ranked)
    if ranked:
        st.markdown(f"**The units that fire most at {md_token(tokens[at])}**, relative to their corpus max")
        st.html(units_html(model.name, ranked, tokens, lines, ("× corpus max", lambda u: f"{u.value:.2f}")))
    if unharvested:
        st.markdown("**From layers with no harvest**, ranked by raw activation (no corpus max to compare with)")
        st.html(units_html(model.name, unharvested, tokens, {}, ("activation", lambda u: f"{u.value:+.3g}"), raw=raw,
                           activation=False))


def causes_section(model, report, raw: frozenset, skip: int) -> None:
    st.subheader("What causes the prediction")
    st.caption("Attribution = activation × gradient of the target, in the frozen model (attention patterns and "
               "normalisation denominators held constant, the MLPs' nonlinearities kept): a linear estimate of how "
               "much the target would drop if the unit were removed at that token. Exact for last-layer neurons, an "
               "estimate elsewhere: the next part checks the top ones by real ablation.")
    lines = lines_of(model, report.positive + report.negative)
    value = ("attribution", lambda u: f"{u.value:+.3g}")
    st.markdown(f"**For** {md_token(report.target_text)}")
    st.html(units_html(model.name, report.positive, report.tokens, lines, value, raw))
    st.markdown(f"**Against** {md_token(report.target_text)}")
    st.html(units_html(model.name, report.negative, report.tokens, lines, value, raw))
    n = len({(u.unit, u.position) for u in report.positive + report.negative})
    st.markdown(f"These {n} units carry **{report.share:.0%}** of the total |attribution| of every unit at every "
                "position.")
    layer_token_map(layer_token_figure(report.attribution_map[:, skip:].tolist(), report.tokens[skip:], skip,
                                       "|attribution| per layer and token (summed over units)", "sum of |attribution|",
                                       ATTR_RGB, mark=report.target.position), "prompt_causes")


def check_section(report) -> None:
    st.subheader("Check by intervention")
    if not report.checked:
        st.caption("no unit was checked")
        return
    agree = sum(c.agrees for c in report.checked)
    rho = report.rank_correlation
    st.caption(f"The {len(report.checked)} units of largest |attribution|, each set to 0 at its token for real (no "
               "freezing): the target's real change beside the linear estimate (−attribution). They agree when of "
               "the same sign and within a factor of 2.")
    st.markdown(f"**{agree} of {len(report.checked)} agree** · Spearman rank correlation of estimate and real: "
                + (f"**{rho:+.2f}**" if rho is not None else "— (too few distinct values)"))
    check_table(report.checked, report.tokens)


def graph_section(model_name: str, report, skip: int) -> None:
    st.subheader("How they connect")
    c1, c2 = st.columns([2, 3])
    on = c1.toggle("build the graph", key="prompt_graph",
                   help="the top units by |attribution| and the edges between them: one backward pass per unit")
    _keep("graph", "1" if on else None)
    if not on or report.graph is None:
        st.caption("The graph connects the units of largest |attribution|: an edge from an earlier unit to a later "
                   "one is its attribution to that unit's activation. It takes one more backward pass per unit in "
                   "it (30).")
        return
    rest = c2.toggle("show each layer's rest", key="prompt_rest",
                     help="a grey node per layer for what the layer's units outside the graph carry")
    st.caption("Rows are layers (upward), columns tokens, the target on top. A unit is orange when it pushes the "
               "target up, blue when it pushes it down; an edge is orange when it raises the unit it enters, blue "
               "when it lowers it, as wide as its weight beside the strongest edge into that unit. Drag, zoom, "
               "hover; click a unit to open its page.")
    page, height = prompt_graph_html(model_name, report.graph, report.tokens, report.target_text, skip, rest)
    data = report.graph.to_json()
    for node in data["nodes"]:
        node["token"] = report.tokens[node["position"]]
    data = {"model": model_name, "tokens": report.tokens,
            "target": {**data["target"], "text": report.target_text, "contrast_text": report.contrast_text,
                       "value": report.attribution.value},
            "nodes": data["nodes"], "edges": data["edges"],
            "edge_ends": "indices into nodes; len(nodes) is the target; -1 - L is layer L's rest"}
    graph_view(page, height, data, f"{model_name}-prompt-graph.json".replace("/", "_"))


render()
