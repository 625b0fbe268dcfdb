"""Token heatmaps as HTML. Every token string is escaped here, the one place tokens become markup.

One colour scale per page: positive activations in orange, negative in blue, both scaled by the same
``vmax`` (the neuron's max activation), so records on a page are comparable. The max token of each record is
outlined (when positive); hovering a token shows its exact text and value. Whitespace is visible: newlines as ``⏎`` (and a
break), tabs as ``⇥``; spaces keep their width.
"""

from __future__ import annotations

import html
import re

from analysis.types import TokenActivations

POS_RGB = (255, 122, 0)
NEG_RGB = (40, 110, 255)


def _bg(a: float, vmax: float) -> str:
    if vmax <= 0 or a != a:  # NaN-safe
        return "transparent"
    alpha = min(1.0, abs(a) / vmax)
    r, g, b = POS_RGB if a >= 0 else NEG_RGB
    return f"rgba({r},{g},{b},{alpha:.3f})"


_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$&:])")


def md_escape(text: str) -> str:
    """Text for st.markdown that shows as itself: markdown, LaTeX ($) and HTML characters backslash-escaped."""
    return _MD_SPECIAL.sub(r"\\\1", text).replace("\n", " ")


def token_code_html(token: str) -> str:
    """A token as an HTML code chip (its repr, so whitespace shows), escaped."""
    return f"<code>{html.escape(repr(token)[1:-1])}</code>"


def md_token(token: str) -> str:
    """A token as a markdown code span (its repr, so whitespace shows; a backtick inside becomes ˋ)."""
    return "`" + repr(token)[1:-1].replace("`", "ˋ") + "`"


def _shown(token: str) -> str:
    shown = html.escape(token).replace("\t", "⇥").replace("\r", "")
    return shown.replace("\n", '<span class="nl">⏎</span><br>')


def token_span(token: str, act: float, vmax: float, is_max: bool = False) -> str:
    tip = html.escape(f"{token!r}  {act:+.4f}", quote=True)
    cls = "tok max" if is_max else "tok"
    return f'<span class="{cls}" title="{tip}" style="background:{_bg(act, vmax)}">{_shown(token)}</span>'


def run_span(text: str, acts: list[float], vmax: float, is_max: bool = False) -> str:
    """Tokens that only decode together, as one cell: coloured by the value of largest magnitude, every
    token's own value on hover."""
    strongest = max(acts, key=abs)
    tip = html.escape(f"{text!r}  {len(acts)} tokens: " + ", ".join(f"{a:+.4f}" for a in acts), quote=True)
    cls = "tok max" if is_max else "tok"
    return (f'<span class="{cls} joined" title="{tip}" style="background:{_bg(strongest, vmax)}">'
            f"{_shown(text)}</span>")


def record_html(tokens: list[str], acts: list[float], vmax: float, around_max: int | None = None, label: str = "",
                runs: tuple = ()) -> str:
    """One record as a line of coloured tokens (``runs``: tokens shown together, see TokenActivations).
    ``around_max``: show only that many tokens either side of the max."""
    if not tokens:
        return ""
    imax = max(range(len(acts)), key=lambda i: acts[i])
    runs = runs or tuple((i, i + 1, t) for i, t in enumerate(tokens))
    lo, hi = 0, len(tokens)
    if around_max is not None:
        lo, hi = max(0, imax - around_max), min(len(tokens), imax + around_max + 1)
    shown = [(a, b, t) for a, b, t in runs if b > lo and a < hi]
    spans = "".join(token_span(t, acts[a], vmax, a == imax and acts[a] > 0) if b - a == 1 else
                    run_span(t, acts[a:b], vmax, a <= imax < b and acts[imax] > 0) for a, b, t in shown)
    prefix = f'<span class="lbl">{html.escape(label)}</span>' if label else ""
    ell_l = '<span class="ell">…</span>' if shown and shown[0][0] > 0 else ""
    ell_r = '<span class="ell">…</span>' if shown and shown[-1][1] < len(tokens) else ""
    return f'<div class="rec">{prefix}{ell_l}{spans}{ell_r}</div>'


STYLE = """<style>
.hm {font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 13.5px; line-height: 1.9;}
.hm .rec {padding: 4px 6px; border-bottom: 1px solid #eee; white-space: pre-wrap; word-break: break-word;}
.hm .tok {border-radius: 3px; padding: 1px 0;}
.hm .tok.joined {text-decoration: underline dotted #bbb;}
.hm .tok.max {outline: 2px solid #b03000; outline-offset: -1px;}
.hm .nl {color: #999;}
.hm .ell {color: #999; padding: 0 4px;}
.hm .lbl {color: #888; font-size: 11px; margin-right: 8px; user-select: none;}
.hm-legend {font-family: sans-serif; font-size: 12px; color: #555; margin: 4px 0 8px 0;}
.hm-legend .bar {display:inline-block; width: 220px; height: 10px; vertical-align: middle; border-radius: 2px;
  background: linear-gradient(to right, rgba(40,110,255,1), rgba(40,110,255,0) 50%, rgba(255,122,0,0) 50%, rgba(255,122,0,1));}
</style>"""


RECORDS_LEGEND = ("one scale for every record on this page (the neuron's max); the max token of each record is "
                  "outlined; hover a token for its value")


def legend_html(vmax: float, text: str = RECORDS_LEGEND) -> str:
    return (f'<div class="hm-legend">{-vmax:.3g} <span class="bar"></span> {vmax:.3g} &nbsp; '
            f"{html.escape(text, quote=False)}</div>")


def records_html(records: list[TokenActivations], vmax: float, around_max: int | None = None,
                 labels: list[str] | None = None, legend: str = RECORDS_LEGEND) -> str:
    """Many records (real, simulated or predicted activations, or any per-token value) with a shared scale and a
    legend (``legend``: what the values are)."""
    body = "".join(record_html(r.tokens, r.activations, vmax, around_max, labels[i] if labels else "", r.runs)
                   for i, r in enumerate(records))
    return STYLE + legend_html(vmax, legend) + f'<div class="hm">{body}</div>'
