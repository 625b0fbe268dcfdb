"""A neuron page as one self-contained HTML file (opens without the server: plotly.js is inlined)."""

from __future__ import annotations

import html

from analysis.types import UnitRecord
from viewer.components.charts import histogram_figure
from viewer.components.heatmap import records_html


def neuron_page_html(rec: UnitRecord, model_name: str) -> str:
    s = rec.stats
    vmax = max(s.max, 1e-9)
    stats_rows = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in [
        ("max", f"{s.max:.4g}"), ("min", f"{s.min:.4g}"), ("mean", f"{s.mean:.4g}"), ("std", f"{s.std:.4g}"),
        ("skewness", f"{s.skewness:.4g}"), ("kurtosis", f"{s.kurtosis:.4g}"), ("fraction > 0", f"{s.frac_active:.4f}"),
        ("tokens", f"{s.n_tokens:,}")])
    hist = histogram_figure(s).to_html(full_html=False, include_plotlyjs=True)
    bins = ""
    for i, recs in enumerate(rec.random_sample_by_quantile):
        if recs:
            bins += f"<h3>quantile bin {i + 1}</h3>" + records_html(recs, vmax)
    title = html.escape(f"{model_name} · layer {rec.layer} · neuron {rec.unit.index}")
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:20px auto;color:#222}} table{{border-collapse:collapse}}
th,td{{padding:2px 10px;text-align:left;border-bottom:1px solid #eee}}</style></head><body>
<h1>{title}</h1>
<p>{html.escape(f"run {rec.run_id} · corpus {rec.corpus_id} · model {rec.model_id} · hook {rec.hook_point}")}</p>
<table>{stats_rows}</table>
{hist}
<h2>Top-activating windows</h2>{records_html(rec.most_positive_activation_records, vmax)}
<h2>Random windows</h2>{records_html(rec.random_sample, vmax)}
<h2>Quantile samples</h2>{bins}
</body></html>"""
