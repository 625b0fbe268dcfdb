"""A list of units, or a layer, as a static site: ``index.html`` plus one self-contained page per unit
(``viewer.components.export``), written to a folder or a zip. Opens offline in any browser, with no request.

    python -m viewer.site --list NAME --out DIR|FILE.zip [--db PATH]
    python -m viewer.site --layer L [--neurons 0-99] [--model NAME] [--source ID] --out DIR|FILE.zip

A command of the viewer's, not of ``python -m analysis``: the pages are the viewer's HTML, and the science package
imports no viewer code.
"""

from __future__ import annotations

import argparse
import html
import io
import sys
import zipfile
from pathlib import Path

from analysis.config import DEFAULT_MODEL, default_db
from analysis.jobs.reads import cached_model, n_units, resolve_unit_source
from analysis.jobs.specs import parse_units
from analysis.progress import Progress
from analysis.types import MLP, UnitId, UserError
from cache.store import open_store
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


def site(args) -> int:
    """The command: a list's or a layer's units written as a site."""
    if (args.list is None) == (args.layer is None):
        raise UserError("give --list NAME or --layer L (with --neurons SPEC)")
    with open_store(args.db, read_only=True) as store:
        if args.list is not None:
            lst = store.lists.get(args.list)
            if lst is None:
                raise UserError(f"no list named {args.list!r} in {args.db}")
            models = {i.model_id for i in lst.items}
            if len(models) > 1:
                raise UserError(f"list {args.list!r} holds units of {len(models)} models; a site shows one")
            model = next(iter(models), args.model)
            units, title, description = [(i.unit, i.note) for i in lst.items], lst.name, lst.description
        else:
            info = cached_model(store, args.model)
            source = resolve_unit_source(store, info.model_id, args.source or MLP)
            picked = parse_units(args.neurons, n_units(store, info, source, args.layer), allow_all=True)
            model, title, description = info.name, f"{info.name} layer {args.layer}", ""
            units = [(UnitId(source, args.layer, u), "") for u in picked]
        files = build_site(store, model, units, title, description, Progress(enabled=not args.quiet))
    out = write_site(files, Path(args.out))
    print(f"{out}: {len(files) - 1} unit page(s) and index.html", file=sys.stderr)
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m viewer.site", description=(
        "Writes index.html plus one self-contained page per unit (records as heatmaps, statistics, histogram, "
        "explanation, baseline, graph F1, topic) to a folder, or a zip when --out ends in .zip."))
    p.add_argument("--db", default=str(default_db()), help="DuckDB file (default: %(default)s)")
    p.add_argument("--out", required=True, help="a folder, or a .zip file")
    p.add_argument("--list", default=None, help="the list to export")
    p.add_argument("--model", default=DEFAULT_MODEL, help="model, with --layer (default: %(default)s)")
    p.add_argument("--source", default=None,
                   help="unit source with --layer: mlp (default) or a dictionary (its id, name or folder)")
    p.add_argument("--layer", type=int, default=None, help="export this layer's units")
    p.add_argument("--neurons", default="0-99", help="with --layer: which units, e.g. 0-99 or all (default: 0-99)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        return site(parser().parse_args(argv))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
