"""Viewer pages with Streamlit's AppTest, on a real harvest of a tiny model."""

from __future__ import annotations

from analysis.types import MLP, UnitId

import re

from tests.helpers import all_html, open_page
from viewer.views.search import query_tokens


def _tags(body: str) -> set[str]:
    return {t.lower() for t in re.findall(r"<\s*([a-zA-Z][a-zA-Z0-9]*)", body)}


def test_neuron_page_from_a_permalink(viewer_db, monkeypatch):
    db, model = viewer_db
    at = open_page("neuron", db, monkeypatch, model=model, layer=1, neuron=3)
    assert not at.exception
    assert at.title[0].value.endswith("L1 · N3")
    body = all_html(at)
    assert body.count('class="rec"') == 30  # the top-30 windows (the default harvest's)
    # the corpus holds '<script>alert(1)</script>' and '<img src=x onerror=...>': they show as text
    assert _tags(body) <= {"style", "div", "span", "br", "a", "code"}  # (a, code: the glance header)
    assert "&lt;" in body and "script" in body
    assert 'class="tok max"' in body
    assert at.query_params["model"] == model and at.query_params["neuron"] == "3"


def test_neuron_page_tabs_and_window_toggle(viewer_db, monkeypatch):
    db, model = viewer_db
    at = open_page("neuron", db, monkeypatch, model=model, layer=0, neuron=5, tab="random", around="1")
    assert not at.exception
    body = all_html(at)
    assert body.count('class="rec"') == 20 and 'class="ell"' in body  # windows cut around their max
    at = open_page("neuron", db, monkeypatch, model=model, layer=0, neuron=5, tab="quantiles")
    assert any("bin 1" in m.value for m in at.markdown)


def test_bad_neuron_and_unharvested_layer_get_messages(viewer_db, monkeypatch):
    db, model = viewer_db
    at = open_page("neuron", db, monkeypatch, model=model, layer=1, neuron=99999)
    assert not at.exception and "neuron '99999' does not exist" in at.error[0].value
    at = open_page("neuron", db, monkeypatch, model=model, layer=2, neuron=0)
    assert not at.exception and "not in this cache" in at.warning[0].value
    assert any("harvest layer 2 now" in b.label for b in at.button)
    at = open_page("neuron", db, monkeypatch, model=model, layer=2, neuron=0)
    next(b for b in at.button if "harvest layer 2" in b.label).click().run(timeout=180)  # harvest layer 2 on demand, from the run's own corpus
    assert not at.exception, at.exception
    at = open_page("neuron", db, monkeypatch, model=model, layer=2, neuron=0)
    assert not at.warning and all_html(at).count('class="rec"') > 0
    at = open_page("neuron", db, monkeypatch, model="no-such-model", layer=0, neuron=0)
    assert not at.exception and "not in this cache" in at.error[0].value


def test_empty_and_missing_cache(tmp_path, monkeypatch):
    from cache.store import open_store

    with open_store(tmp_path / "empty.duckdb"):
        pass
    at = open_page("neuron", tmp_path / "empty.duckdb", monkeypatch)
    assert not at.exception and "make demo" in at.info[0].value
    at = open_page("neuron", tmp_path / "missing.duckdb", monkeypatch)
    assert not at.exception and "no database at" in at.error[0].value


def test_live_text(viewer_db, monkeypatch):
    db, model = viewer_db
    at = open_page("live", db, monkeypatch, model=model, layer=1, neuron=2, text="<b>bold</b> Paris is the capital")
    assert not at.exception
    body = all_html(at)
    assert "&lt;" in body and _tags(body) <= {"style", "div", "span", "br"}
    assert any("fire most" in h.value for h in at.subheader)
    at.text_area[0].set_value("").run()
    assert "type or paste" in at.info[0].value
    at.text_area[0].set_value("Paris is nice. " * 20_000).run()  # 300k characters
    assert not at.exception and "only the first 128 are used" in at.warning[0].value  # the tiny GPT-2's context


def test_search_and_compare(viewer_db, monkeypatch):
    db, model = viewer_db
    at = open_page("search", db, monkeypatch, model=model, token=" Paris")
    assert not at.exception
    assert any("?model=" in m.value for m in at.markdown)
    at = open_page("compare", db, monkeypatch, a_model=model, a_layer=0, a_neuron=1, b_model=model, b_layer=1, b_neuron=2)
    assert not at.exception and all_html(at).count('class="hm"') >= 2  # + paired heatmaps if scored
    at = open_page("cache_page", db, monkeypatch)
    assert not at.exception and at.dataframe


def test_heatmap_escapes_every_token_and_tooltip():
    from viewer.components.heatmap import record_html

    evil = ['<img src=x onerror="alert(2)">', "<script>alert(1)</script>", "a\nb", "\t", '" onmouseover="x']
    html = record_html(evil, [1.0, -2.0, 0.5, 0.0, 3.0], vmax=3.0)
    assert _tags(html) <= {"div", "span", "br"}
    assert "&lt;img src=x onerror=&quot;alert(2)&quot;&gt;" in html
    assert 'onmouseover="x' not in html
    assert "⏎" in html and "⇥" in html
    assert html.count('class="tok max"') == 1


def test_weights_tab_links_related_neurons(viewer_db, monkeypatch):
    db, model = viewer_db
    at = open_page("neuron", db, monkeypatch, model=model, layer=1, neuron=4, tab="tokens & weights")
    assert not at.exception
    at.toggle(key="weights_on").set_value(True).run()
    assert not at.exception
    links = [m.value for m in at.markdown if "upstream" in m.value or "most negative" in m.value]
    assert links and all("./?" in l for l in links) and "layer=0" in links[0]


def test_export_is_self_contained(viewer_db):
    from cache.store import open_store
    from viewer.components.export import neuron_page_html

    db, model = viewer_db
    with open_store(db, read_only=True) as s:
        rec = s.records.unit_record(s.runs.find(model, 1), UnitId(MLP, 1, 3))
    page = neuron_page_html(rec, model)
    assert page.startswith("<!doctype html>") and page.count('class="bar"') > 3  # the histogram
    assert "<script" not in page and not re.search(r"(src|href)=\"?https?:", page)  # no script, no request
    assert page.count('class="rec"') == len(rec.most_positive_activation_records) + len(rec.random_sample) + sum(
        len(b) for b in rec.random_sample_by_quantile)


def _api(url: str) -> list[str]:
    return ["--simulator", "api-json", "--api-base-url", url, "--api-model", "good", "--api-retries", "0", "--quiet"]


def test_explanations_tab_scores_and_saves_your_own(viewer_db, monkeypatch, server):
    from analysis.__main__ import main
    from cache.store import open_store

    db, model = viewer_db
    args = ["--db", str(db), "--model", model, "--layer", "1"]
    assert main(["explain", *args, "--neurons", "6", "--explainer", "token-lookup", "--quiet"]) == 0
    assert main(["score", *args, "--neuron", "6", "--simulator", "token-lookup", "--quiet"]) == 0
    assert main(["score", *args, "--neuron", "6", *_api(server)]) == 0
    at = open_page("neuron", db, monkeypatch, model=model, layer=1, neuron=6, tab="explanations")
    assert not at.exception
    table = at.dataframe[0].value
    # the explanation-blind token-lookup is the unit's baseline line, never a score of an explanation
    assert "token-lookup" not in set(table["simulator"]) and any(m.value.startswith("**Baseline**")
                                                                 for m in at.markdown)
    assert table["vs baseline"].notna().all()
    assert at.get("plotly_chart") and 'sim</span>' in all_html(at)  # scatter + paired real/simulated heatmaps
    assert at.selectbox(key="own_sim").options == ["local-all-at-once"]
    at.text_input(key="own_text").set_value("the tokens Paris and France")
    at.button[[b.label for b in at.button].index("simulate and score")].click().run()
    assert not at.exception and any(m.label == "correlation score" for m in at.metric)
    next(b for b in at.button if b.label.startswith("save this explanation")).click().run()
    assert not at.exception
    with open_store(db, read_only=True) as s:
        texts = [e.text for e in s.explanations.of_unit(s.runs.find(model, 1).run_id, UnitId(MLP, 1, 6))]
    assert "the tokens Paris and France" in texts
    at = open_page("neuron", db, monkeypatch, model=model, layer=1, neuron=6, tab="explanations")
    assert "local-all-at-once (tiny offline)" in set(at.dataframe[0].value["simulator"])
    assert any("tiny offline model" in c.value for c in at.caption)  # with the hint to use a capable model


def test_baseline_is_stored_once_per_unit(viewer_db, capsys, server):
    """token-lookup scores the unit: one baseline row per unit and set, whatever its explanations; an
    explanation given with it is refused."""
    from analysis.__main__ import main
    from cache.store import open_store

    db, model = viewer_db
    args = ["--db", str(db), "--model", model, "--layer", "0"]
    assert main(["explain", *args, "--neurons", "7", "--explainer", "token-lookup", "--quiet"]) == 0
    assert main(["score", *args, "--neuron", "7", "--explanation", "commas", *_api(server)]) == 0
    for _ in range(2):
        assert main(["score", *args, "--neurons", "7", "--simulator", "token-lookup", "--quiet"]) == 0
    with open_store(db, read_only=True) as s:
        run = s.runs.find(model, 0)
        unit = UnitId(MLP, 0, 7)
        assert len(s.explanations.of_unit(run.run_id, unit)) == 2
        [b] = s.explanations.baselines(run.run_id, unit)
        assert b.predictor == "token-lookup" and b.max_activation > 0 and b.score is not None
        assert all(sim.simulator != "token-lookup" for e in s.explanations.of_unit(run.run_id, unit)
                   for sim in s.explanations.simulations(e.explanation_id))
    capsys.readouterr()
    assert main(["score", *args, "--neurons", "7", "--simulator", "token-lookup", "--explanation", "x"]) == 2
    assert "ignores the explanation" in capsys.readouterr().err


def test_glance_header_with_and_without_lenses(viewer_db, monkeypatch, server):
    """The top of the page says what the unit does from every lens it has; a missing one says how to get it
    and the cheap ones compute on a click."""
    from analysis.__main__ import main

    db, model = viewer_db

    def glance(at):
        return next(h.proto.body for h in at.html if 'class="glance"' in h.proto.body)

    at = open_page("neuron", db, monkeypatch, model=model, layer=0, neuron=9)
    assert not at.exception
    labels = [b.label for b in at.button]
    assert {"compute baseline (instant)", "build graph (seconds)"} <= set(labels)
    # NPMI over the reference corpus is not counted for this test database: the button says what it will take
    assert "compute topics (NPMI counts first: ~90 s once)" in labels
    body = glance(at)
    assert "none scored yet" in body and body.count("none yet") == 3 and "density" in body and "<code>" in body
    assert _tags(re.sub(r"<style>.*?</style>", "", body, flags=re.S)) <= {"div", "a", "code"}
    at.button[labels.index("compute baseline (instant)")].click().run()  # computed from the page
    assert not at.exception
    args = ["--db", str(db), "--model", model, "--layer", "0", "--neurons", "9", "--quiet"]
    assert main(["explain", *args, "--explainer", "token-lookup"]) == 0
    assert main(["score", *args, *_api(server)]) == 0
    assert main(["n2g", *args]) == 0
    at = open_page("neuron", db, monkeypatch, model=model, layer=0, neuron=9)
    assert not at.exception
    labels = [b.label for b in at.button]
    assert not any(l.startswith(("compute baseline", "build graph")) for l in labels)
    body = glance(at)
    assert "token-lookup → api-json" in body and "N2G F1 " in body and re.search(r"r = [+-]\d\.\d{3}</div><div "
                                                                             r'class="sub">token-lookup', body)
    assert "tab=graph" in body and 'target="_self"' in body  # a card opens its tab


def test_scores_overview_and_explanations_in_compare(viewer_db, monkeypatch, server):
    from analysis.__main__ import main

    db, model = viewer_db
    args = ["--db", str(db), "--model", model, "--layer", "0"]
    assert main(["explain", *args, "--neurons", "0-5", "--explainer", "token-lookup", "--quiet"]) == 0
    assert main(["score", *args, "--neurons", "0-5", "--simulator", "token-lookup", "--quiet"]) == 0
    assert main(["score", *args, "--neurons", "0-5", *_api(server)]) == 0
    at = open_page("scores", db, monkeypatch)
    assert not at.exception and at.get("plotly_chart")
    names = [t["name"] for t in __import__("json").loads(at.get("plotly_chart")[0].proto.spec)["data"]]
    assert "baseline: token-lookup" in names and not any("→ token-lookup" in n for n in names)
    assert any("ignores any explanation" in c.value for c in at.caption)
    assert any("beats their token-lookup" in m.value for m in at.markdown)
    at = open_page("compare", db, monkeypatch, a_model=model, a_layer=0, a_neuron=1, b_model=model, b_layer=0, b_neuron=2)
    assert not at.exception and len([m for m in at.metric if m.label == "correlation score"]) == 2


def test_graph_tab_search_and_compare(n2g_db, monkeypatch):
    """The graph tab shows the drawing, P/R/F1 against token-lookup, similar graphs and held-out real vs predicted;
    search finds graphs by a token of their patterns; compare draws two graphs."""
    from cache.store import open_store

    db, model = n2g_db
    with open_store(db, read_only=True) as s:
        run = s.runs.find(model, 1)
        g = max((s.graphs.get(run.run_id, UnitId(MLP, 1, u)) for u in range(12)), key=lambda g: len(g.patterns))
        roots = [p[0] for p, v in g.patterns if v >= 0.5 * g.max_activation]
        vocab = s.catalog.vocab(s.catalog.model(model).tokenizer_id, roots)
        # the root the box used to drop (whitespace, a bar) when there is one: escaped, it is searchable now
        token = max((vocab[t] for t in roots), key=lambda x: not x.strip() or "|" in x or "\\" in x)
        query = "".join({"\n": "\\n", "\t": "\\t", "|": "\\|", "\\": "\\\\"}.get(c, c) for c in token)
        assert query_tokens(query) == [token]
    at = open_page("neuron", db, monkeypatch, model=model, layer=1, neuron=g.unit.index, tab="graph")
    assert not at.exception and not at.error
    table = at.dataframe[0].value
    assert list(table[""]) == ["Neuron2Graph", "token-lookup"]
    assert table["firing F1"][0] == round(g.metrics["firing"]["f1"], 3)
    assert any("Similar graphs in layer 1" in m.value for m in at.markdown)
    assert any("fitted on 10 top records (+ 10 past the first 20, with no probes), scored on 10 held-out ones"
               in m.value for m in at.markdown)  # the defaults: a top-30 harvest, 10 extra train records
    body = all_html(at)
    assert body.count('class="rec"') == 20 and body.count("predicted") == 10  # 10 held-out records, real + predicted
    assert _tags(body) <= {"style", "div", "span", "br", "a", "code"}  # (a, code: the glance header)
    [frame] = [e for e in at.main if getattr(e, "type", "") == "iframe"]
    assert "vis.DataSet" in frame.proto.srcdoc and "<img" not in frame.proto.srcdoc
    at = open_page("neuron", db, monkeypatch, model=model, layer=0, neuron=0, tab="graph")  # no graph yet
    assert not at.exception and any("build the graph now" in b.label for b in at.button)
    at = open_page("search", db, monkeypatch, model=model, graph=query)
    assert not at.exception
    hits = at.dataframe[0].value
    assert any(f"neuron={g.unit.index}&" in u for u in hits["neuron"])
    at = open_page("compare", db, monkeypatch, a_model=model, a_layer=1, a_neuron=g.unit.index, b_model=model, b_layer=0,
               b_neuron=0)
    at.toggle(key="cmp_graphs").set_value(True).run()
    assert not at.exception
    assert any("graph:" in c.value and "patterns" in c.value for c in at.caption)
    assert any("no graph yet" in c.value for c in at.caption)


def test_pages_say_what_a_running_build_has_still_to_write(viewer_db, monkeypatch, tmp_path):
    """A build in the background (its status file, this process standing in for it): the unit page's tabs say
    their lens is coming, the Cache page shows its progress; once its process is gone, how to resume."""
    import subprocess
    import sys

    from analysis.__main__ import main
    from analysis.jobs.build.plan import Stage
    from analysis.jobs.build.status import BuildStatus, status_file, StatusProgress
    from analysis.progress import Progress

    db, model = viewer_db
    copy = tmp_path / "building.duckdb"  # a harvest only (other tests add lenses to viewer_db's units)
    assert main(["harvest", "--model", model, "--corpus", str(db.parent / "docs.jsonl"), "--db", str(copy),
                 "--layers", "0,1", "--seq-len", "24", "--quiet"]) == 0
    stages = [Stage("harvest", [0, 1], 480, 0.0, "done"), Stage("baselines", [0, 1], 64, 2.0, "VM"),
              Stage("n2g", [1], 4, 10.0, "VM"), Stage("topics", [1], 4, 3.0, "VM")]
    status = BuildStatus.start(stages, f"python -m analysis build --db {copy} --expensive-neurons 0-3", [0, 1, 2, 3])
    status.stages[1].done.append(0)
    status.current, status.step = (1, 1), ("token-lookup L1", 5, 32)
    writer = StatusProgress(Progress(enabled=False), status, status_file(copy))
    writer.save()

    def infos(at):
        return " ".join(i.value for i in at.info)

    at = open_page("neuron", copy, monkeypatch, model=model, layer=1, neuron=2, tab="graph")
    assert not at.exception and "graphs of layer 1 are still being built" in infos(at)
    assert "baselines L1 (token-lookup L1: 5/32)" in infos(at) and any("build the graph now" in b.label
                                                                       for b in at.button)
    glance = all_html(at).split('<div class="glance">')[1]
    assert glance.count("being built…") == 3  # baseline, graph, topic; the effect is not in this build
    assert "not measured yet" in glance
    at = open_page("neuron", copy, monkeypatch, model=model, layer=1, neuron=9, tab="graph")  # not among its units
    assert "still being built" not in infos(at) and "No Neuron2Graph graph" in infos(at)
    at = open_page("neuron", copy, monkeypatch, model=model, layer=0, neuron=2, tab="graph")  # not among its layers
    assert "still being built" not in infos(at)
    at = open_page("neuron", copy, monkeypatch, model=model, layer=1, neuron=9, tab="explanations")
    assert "token-lookup baselines of layer 1 are still being built" in infos(at)
    at = open_page("neuron", copy, monkeypatch, model=model, layer=1, neuron=2, tab="topics")
    assert "topics of layer 1 are still being built" in infos(at)
    at = open_page("cache_page", copy, monkeypatch)
    assert not at.exception
    [bar] = at.get("progress")
    assert "running (process" in bar.proto.text and "baselines L1" in bar.proto.text
    assert at.dataframe[0].value["layers done"].tolist() == ["2 of 2", "1 of 2", "0 of 1", "0 of 1"]
    at = open_page("scores", copy, monkeypatch)
    assert any("still to write: token-lookup baselines of 1 layer" in c.value for c in at.caption)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    status.pid = dead.pid
    writer.save()
    at = open_page("neuron", copy, monkeypatch, model=model, layer=1, neuron=2, tab="graph")
    assert "still being built" not in infos(at) and "being built…" not in all_html(at)
    at = open_page("cache_page", copy, monkeypatch)
    assert any("stopped before the end" in w.value for w in at.warning)
    assert any("--expensive-neurons 0-3" in c.value for c in at.code)
