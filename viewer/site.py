"""A list of units, or a layer, as a static site: ``index.html`` plus one self-contained page per unit
(``viewer.components.export``), written to a folder or a zip. Opens offline in any browser, with no request."""

from __future__ import annotations

import html
import io
import zipfile
from pathlib import Path

from analysis.types import MLP, UnitId, UserError
from viewer.components.export import neuron_page_html


def page_name(unit: UnitId) -> str:
    return (f"L{unit.layer}-N{unit.index}" if unit.source == MLP else
            f"L{unit.layer}-{unit.source.replace(':', '_').replace('@', '_').replace('/', '_')}-{unit.index}") + ".html"


def build_site(store, model_name: str, units: list[tuple[UnitId, str]], title: str, description: str = "",
               progress=None) -> dict[str, str]:
    """{file name: html} for ``units`` ((unit, note) pairs) of a cached model, read from an open store."""
    info = store.catalog.model(model_name)
    if info is None:
        raise UserError(f"model {model_name!r} is not in this cache")
    files, rows = {}, []
    bar = progress.bar(len(units), "unit pages", unit="unit") if progress else None
    for unit, note in units:
        run = store.runs.find(info.name, unit.layer, source=unit.source)
        rec = store.records.unit_record(run, unit) if run else None
        if rec is None:
            rows.append(f"<tr><td>{html.escape(str(unit))}</td><td colspan=4>not harvested in this cache</td>"
                        f"<td>{html.escape(note)}</td></tr>")
            continue
        glance = store.glance(info.model_id, rec)
        name = page_name(unit)
        files[f"units/{name}"] = neuron_page_html(rec, info.name, glance, note, back="../index.html")
        best = f"{glance.best[0].text} ({glance.best[1].score:+.2f})" if glance.best else ""
        rows.append(f'<tr><td><a href="units/{html.escape(name, quote=True)}">{html.escape(str(unit))}</a></td>'
                    f"<td>{rec.stats.max:.3g}</td><td>{rec.stats.frac_active:.2%}</td>"
                    f"<td>{html.escape(' '.join(repr(t) for t in glance.top_tokens[:5]))}</td>"
                    f"<td>{html.escape(best)}</td><td>{html.escape(note)}</td></tr>")
        if bar:
            bar.update(1)
    if bar:
        bar.close()
    files["index.html"] = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:20px auto;color:#222}} table{{border-collapse:collapse}}
th,td{{padding:3px 10px;text-align:left;border-bottom:1px solid #eee;vertical-align:top}}</style></head><body>
<h1>{html.escape(title)}</h1><p>{html.escape(description)}</p>
<p>{html.escape(f"{info.name} ({info.model_id}) · {len(units)} units")}</p>
<table><tr><th>unit</th><th>max</th><th>density</th><th>fires on</th><th>best explanation</th><th>note</th></tr>
{''.join(rows)}</table></body></html>"""
    return files


def zip_bytes(files: dict[str, str], folder: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, text in files.items():
            z.writestr(f"{folder}/{name}", text)
    return buf.getvalue()


def write_site(files: dict[str, str], out: Path) -> Path:
    """Write the site into folder ``out``, or as a zip if ``out`` ends in .zip; returns ``out``."""
    out = Path(out)
    if out.suffix == ".zip":
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(zip_bytes(files, out.stem))
        return out
    for name, text in files.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(text, encoding="utf-8")
    return out
