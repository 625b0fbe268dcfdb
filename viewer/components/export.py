"""A unit's page as one self-contained HTML file: opens from a folder or a zip, with no server, script or network
request (the histogram is plain HTML and CSS)."""

from __future__ import annotations

import html

from analysis.types import UnitRecord
from viewer.components.charts import histogram_html
from viewer.components.heatmap import records_html


def _ci(s) -> str:
    """`` [lo, hi]``: a score's 95 % interval, or nothing where none was stored."""
    return f" [{s.lo:+.3f}, {s.hi:+.3f}]" if getattr(s, "lo", None) is not None else ""


def glance_rows(g) -> list[tuple[str, str]]:
    """A cache.store.UnitGlance as (label, text) rows."""
    rows = []
    if g.best:
        e, s = g.best
        flag = f"; flagged: {e.degenerate}" if e.degenerate else ""
        rows.append(("best explanation", f"{e.text} (r = {s.score:+.3f}{_ci(s)}, {e.explainer} → {s.simulator}{flag})"))
    base = [b for b in g.baselines if b.error is None and b.score is not None]
    if base:
        rows.append(("baseline", "; ".join(f"{b.predictor} r = {b.score:+.3f}{_ci(b)} on {b.scoring_set} (ignores "
                                           "any explanation)" for b in base)))
    if g.graph:
        f, b = g.graph.get("firing", {}), g.graph.get("baseline_firing", {})
        rows.append(("Neuron2Graph", f"firing F1 {f.get('f1', float('nan')):.2f} (token-lookup "
                                     f"{b.get('f1', float('nan')):.2f})"))
    if g.topic:
        rnd = f" vs random sets {g.topic.random_median:+.3f}" if g.topic.random_median is not None else ""
        rows.append(("topic", f"{' '.join(g.topic.words)} (NPMI {g.topic.score:+.3f}{rnd}, {g.topic.mode})"))
    if g.effects:
        e = g.effects
        name = lambda t: repr(g.effect_tokens.get(t, str(t)))  # noqa: E731
        rows.append(("ablation effect", f"next-token loss {e.mean_loss_change:+.4f} nats/token ({e.mode} ablation, "
                     f"{e.n_records} records); promotes {' '.join(name(t) for t, _v in e.promoted[:6])}; "
                     f"suppresses {' '.join(name(t) for t, _v in e.suppressed[:6])}"))
    rows.append(("fires on", " ".join(repr(t) for t in g.top_tokens[:8]) or "—"))
    rows.append(("density", f"{g.density:.2%} of tokens > 0"))
    return rows


def neuron_page_html(rec: UnitRecord, model_name: str, glance=None, note: str = "", back: str | None = None) -> str:
    """The page; ``glance`` (cache.store.UnitGlance) adds what the other lenses say, ``note`` a list's note,
    ``back`` a link to the index it belongs to."""
    s = rec.stats
    vmax = max(s.max, 1e-9)
    table = lambda rows: "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    stats_rows = table([
        ("max", f"{s.max:.4g}"), ("min", f"{s.min:.4g}"), ("mean", f"{s.mean:.4g}"), ("std", f"{s.std:.4g}"),
        ("skewness", f"{s.skewness:.4g}"), ("kurtosis", f"{s.kurtosis:.4g}"), ("fraction > 0", f"{s.frac_active:.4f}"),
        ("tokens", f"{s.n_tokens:,}")])
    bins = ""
    for i, recs in enumerate(rec.random_sample_by_quantile):
        if recs:
            bins += f"<h3>quantile bin {i + 1}</h3>" + records_html(recs, vmax)
    unit = f"neuron {rec.unit.index}" if rec.unit.source == "mlp" else f"{rec.unit.source} feature {rec.unit.index}"
    title = html.escape(f"{model_name} · layer {rec.layer} · {unit}")
    head = f'<p><a href="{html.escape(back, quote=True)}">← all units</a></p>' if back else ""
    if note:
        head += f'<p class="note">{html.escape(note)}</p>'
    summary = f"<table>{table(glance_rows(glance))}</table>" if glance else ""
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:20px auto;color:#222}} table{{border-collapse:collapse}}
th,td{{padding:2px 10px;text-align:left;border-bottom:1px solid #eee;vertical-align:top}}
.note{{background:#fff6e0;padding:6px 10px;border-left:3px solid #ff7a00}}</style></head><body>
{head}<h1>{title}</h1>
{summary}
<p>{html.escape(f"run {rec.run_id} · corpus {rec.corpus_id} · model {rec.model_id} · hook {rec.hook_point}")}</p>
<table>{stats_rows}</table>
{histogram_html(s)}
<h2>Top-activating windows</h2>{records_html(rec.most_positive_activation_records, vmax)}
<h2>Random windows</h2>{records_html(rec.random_sample, vmax)}
<h2>Quantile samples</h2>{bins}
</body></html>"""
