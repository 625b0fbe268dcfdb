"""The causal lens on a page: an ablation's per-token change in log p(next token) as a heatmap on the same token
layout (diverging scale), the predictions that moved most at a picked position, and a steered continuation
beside the plain one."""

from __future__ import annotations

import html

import pandas as pd
import streamlit as st

from analysis.types import TokenActivations
from viewer.components.heatmap import records_html


def ablation_view(a, runs: tuple, tokenizer, key: str = "abl") -> None:
    """``a``: analysis.causal.Ablation. Token t + 1 carries the change in the log-probability the model gives it
    (blue: the ablation makes it less likely, orange: more); the first token predicts nothing."""
    delta = [0.0] + a.delta
    vmax = max((abs(d) for d in delta), default=0.0) or 1e-9
    st.caption(f"Δ log p(token | the tokens before it), ablated − clean, on one scale (±{vmax:.3g}); mean "
               f"{sum(a.delta) / max(len(a.delta), 1):+.4f} nats per token (negative: the unit helps predict "
               "this text)")
    st.html(records_html([TokenActivations(a.tokens, delta, runs=runs)], vmax,
                         legend="Δ log p of each token given the ones before it, ablated − clean: blue, the ablation "
                                "makes it less likely (the unit supports it); orange, more likely; the largest "
                                "increase is outlined; hover a token for its value"))
    worst = min(range(len(a.delta)), key=lambda i: a.delta[i]) if a.delta else 0
    pos = st.selectbox("predictions after token", range(len(a.delta)), index=worst, key=f"{key}_pos",
                       format_func=lambda i: f"#{i} {a.tokens[i]!r} (next {a.tokens[i + 1]!r}: Δ {a.delta[i]:+.3f})")
    rows = [{"token": repr(tokenizer.decode([t])), "p clean": pc, "p ablated": pa, "Δp": pa - pc}
            for t, pc, pa in a.top_changes[pos]]
    st.dataframe(pd.DataFrame(rows), hide_index=True, column_config={
        c: st.column_config.NumberColumn(format="%.4f") for c in ("p clean", "p ablated", "Δp")})


def steering_view(s, tokenizer) -> None:
    """``s``: analysis.causal.Steering, the two continuations side by side (text escaped)."""
    prompt = tokenizer.decode(s.prompt_ids, skip_special_tokens=True)
    c1, c2 = st.columns(2)
    for col, title, ids in ((c1, "plain", s.plain), (c2, "steered", s.steered)):
        col.markdown(f"**{title}**")
        col.html('<div style="font-family: ui-monospace, monospace; white-space: pre-wrap; line-height: 1.6; '
                 'border: 1px solid #eee; border-radius: 6px; padding: 8px">'
                 f'<span style="color:#888">{html.escape(prompt)}</span>'
                 f"{html.escape(tokenizer.decode(ids, skip_special_tokens=True))}</div>")
    same = sum(1 for a, b in zip(s.plain, s.steered) if a == b)
    st.caption(f"{same} of {len(s.plain)} generated tokens the same; seed {s.seed}, temperature {s.temperature:g}"
               f" ({'greedy' if s.temperature == 0 else 'sampled'}); edit: activation × {s.edit.scale:g} + "
               f"{s.edit.shift:.4g}")


def effects_view(e, names: dict) -> None:
    """A stored ablation summary (cache.effects.StoredEffects, or None: how to get one)."""
    from viewer.components.heatmap import md_token

    if e is None:
        st.info("No ablation effect measured yet: the button at the top of the page measures it (seconds), or a "
                "layer from a shell: `python -m analysis effects --layer L --neurons 0-99`")
        return
    st.markdown(f"**Ablated ({e.mode}) on {e.n_records} of its records**: next-token loss changes by "
                f"**{e.mean_loss_change:+.5f}** nats per token ({e.mean_loss_change_top:+.5f} on its top records; "
                f"> 0: the unit helps the model there), over {e.n_positions:,} positions.")
    c1, c2 = st.columns(2)
    for col, title, pairs in ((c1, "promotes (mean Δ log p, clean − ablated)", e.promoted),
                              (c2, "suppresses", e.suppressed)):
        col.markdown(f"**{title}**: " + " ".join(f"{md_token(names.get(t, str(t)))} {v:+.3f}" for t, v in pairs))
