"""Lists: named sets of units with a note per unit, to keep, open and share (``?list=<name>``), and to export as a
static site that opens offline."""

from __future__ import annotations

import streamlit as st

from viewer.components.heatmap import md_escape, md_token
from viewer.components.picker import list_url, unit_link
from viewer.resources import cached_models, db_path, read, show_error


def overview(lists: list) -> None:
    if not lists:
        st.info("no list yet: add units from their pages (\"add to list\"), or create one here, or from a shell: "
                "`python -m analysis list add NAME --layer L --neuron N --note '…'`")
    for lst in lists:
        st.markdown(f"- [{md_escape(lst.name)}]({list_url(lst.name)}) · {len(lst.items)} unit(s)"
                    + (f" · {md_escape(lst.description)}" if lst.description else ""))
    with st.form("new_list"):
        name = st.text_input("new list", placeholder="e.g. French-language neurons")
        description = st.text_input("description")
        if st.form_submit_button("create"):
            from analysis.jobs.lists import save_list

            try:
                save_list(db_path(), name, description)
            except Exception as exc:
                show_error(exc)
                return
            st.query_params["list"] = name.strip()
            st.rerun()


def one_list(lst, names: dict[str, str], rows: list) -> None:
    from analysis.jobs.lists import delete_list, remove_from_list

    st.title(lst.name)
    if lst.description:
        st.markdown(md_escape(lst.description))
    st.caption(f"share: this page's URL (`{list_url(lst.name)}` on this server) · {len(lst.items)} unit(s)")
    if not lst.items:
        st.info("empty: add units from their pages (\"add to list\")")
    for item, glance in rows:
        model = names.get(item.model_id, item.model_id)
        c1, c2 = st.columns([12, 1])
        what = ""
        if glance is not None:
            best = f" · *{md_escape(glance.best[0].text)}* ({glance.best[1].score:+.2f})" if glance.best else ""
            what = " · " + " ".join(md_token(t) for t in glance.top_tokens[:4]) + best
        c1.markdown(f"**{unit_link(model, item.unit)}** ({md_escape(model)}){what}"
                    + (f"  \n{md_escape(item.note)}" if item.note else ""))
        if c2.button("remove", key=f"rm_{item.model_id}_{item.unit}"):
            remove_from_list(db_path(), lst.name, item.model_id, item.unit)
            st.rerun()
    c1, c2, c3 = st.columns(3)
    if lst.items and c1.button("prepare the static site (zip)"):
        from viewer.site import build_site, zip_bytes

        models = {i.model_id for i in lst.items}
        if len(models) > 1:
            st.warning("a static site shows one model's units: this list holds several")
        else:
            files = read(lambda s: build_site(s, names.get(next(iter(models)), next(iter(models))),
                                              [(i.unit, i.note) for i in lst.items], lst.name, lst.description))
            if files:
                folder = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in lst.name) or "list"
                c2.download_button("download the site", zip_bytes(files, folder), file_name=f"{folder}.zip",
                                   mime="application/zip")
    c3.caption(f"or: `python -m analysis site --list '{lst.name}' --out site.zip --db {db_path()}`")
    if st.button("delete this list", type="secondary"):
        delete_list(db_path(), lst.name)
        del st.query_params["list"]
        st.rerun()


def render() -> None:
    name = st.query_params.get("list")

    def load(s):
        if not cached_models(s):
            return None
        lists = s.lists.all()
        names = {m.model_id: m.name for m in s.catalog.models()}
        lst = s.lists.get(name) if name else None
        rows = []
        for item in lst.items if lst else []:
            run = s.runs.find(item.model_id, item.unit.layer, source=item.unit.source)
            rec = s.records.unit_record(run, item.unit) if run else None
            rows.append((item, s.glance(item.model_id, rec) if rec else None))
        return lists, names, lst, rows

    data = read(load)
    if data is None:
        return
    lists, names, lst, rows = data
    if name and lst is None:
        st.error(f"no list named {name!r} (lists here: {', '.join(l.name for l in lists) or 'none'})")
    if lst is None:
        st.title("Lists")
        overview(lists)
    else:
        one_list(lst, names, rows)
        st.markdown("[all lists](./lists)")


render()
