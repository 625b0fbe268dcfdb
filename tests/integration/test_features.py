"""Dictionary features end to end on a tiny model: harvest beside the neurons, every lens, the viewer's pages."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from analysis.types import MLP, UnitId, UserError
from tests.helpers import TINY_TEXT, open_page
from tests.sae_helpers import topk_ambiguous


def _store(db, read_only=True):
    from cache.store import open_store

    return open_store(db, read_only=read_only)


def test_harvest_with_an_sae_registers_its_features(sae_db, viewer_db):
    from analysis.sae.load import load_sae

    db, model, folder = sae_db
    sae = load_sae(str(folder))
    with _store(db) as s:
        (d,) = s.catalog.dictionaries()
        assert (d.source, d.layer, d.site, d.d_sae, d.k, d.architecture) == (sae.source, 1, "resid_post", 64, 4, "topk")
        assert s.runs.sources()[s.catalog.model(model).model_id] == [MLP, sae.source]
        run = s.runs.find(model, 1, source=sae.source)
        assert run.layers == [1]
        rec = s.records.unit_record(run, UnitId(sae.source, 1, 7))
        neuron_runs = [r.run_id for r in s.runs.list() if r.source == MLP]
    with _store(viewer_db[0]) as plain:
        # the neurons of layer 1 were already in a finished run (layers 0, 1): the SAE harvest reused it
        assert neuron_runs == [r.run_id for r in plain.runs.list()]
    # a TopK feature is 0 or positive; at most k = 4 of the 64 features fire on a token
    assert rec.stats.min >= 0
    with _store(db) as s:
        total = sum(s.records.unit_record(run, UnitId(sae.source, 1, u)).stats.frac_active for u in range(64))
    assert 0 < total <= 4 + 1e-6
    assert len(rec.most_positive_activation_records) > 0 or rec.stats.max == 0


def test_second_harvest_with_the_same_sae_is_cached(sae_db, viewer_db):
    from analysis.config import HarvestConfig
    from analysis.jobs.harvest import HarvestJob, harvest

    db, model, folder = sae_db
    corpus = str(viewer_db[0].parent / "docs.jsonl")
    out = harvest(HarvestJob(model=model, corpus=corpus, sae=(str(folder),), config=HarvestConfig(seq_len=24)), db)
    assert out.status == "cached" and len(out.runs) == 2


def test_feature_units_are_bounded_by_the_dictionary(sae_db):
    from analysis.jobs.reads import unit_record

    db, model, folder = sae_db
    with _store(db) as s:
        source = s.catalog.dictionaries()[0].source
        with pytest.raises(UserError, match="feature 64 does not exist"):
            unit_record(s, model, UnitId(source, 1, 64))
        with pytest.raises(UserError, match="reads layer 1"):
            unit_record(s, model, UnitId(source, 0, 3))
        with pytest.raises(UserError, match="not a dictionary"):
            unit_record(s, model, UnitId("sae:nope@0", 1, 3))


def test_lenses_run_on_features(sae_db, tmp_path):
    """explain + score (token lookup), Neuron2Graph with the SAE as the prober's reader, topics (hi-i from the
    decoder rows, and the activation mode), all stored under the feature's unit id."""
    from analysis.__main__ import main

    db0, model, folder = sae_db
    db = tmp_path / "lenses.duckdb"
    shutil.copy(db0, db)
    with _store(db) as s:
        source = s.catalog.dictionaries()[0].source
    units = "0-63"
    with _store(db) as s:
        run = s.runs.find(model, 1, source=source)
        firing = [u for u in range(64) if s.records.unit_record(run, UnitId(source, 1, u)).stats.max > 0][:3]
    spec = ",".join(map(str, firing))
    common = ["--db", str(db), "--model", model, "--layer", "1", "--source", source, "--neurons", spec, "--quiet"]
    assert main(["explain", *common, "--explainer", "token-lookup"]) == 0
    assert main(["score", *common, "--simulator", "token-lookup"]) == 0
    assert main(["n2g", *common]) == 0
    ref = tmp_path / "ref.txt"  # a small NPMI reference that is not the harvest's text
    ref.write_text("\n\n".join(TINY_TEXT * 20))
    assert main(["topics", *common, "--mode", "hi-i,activation", "--corpus", str(ref), "--min-count", "2"]) == 0
    with _store(db) as s:
        for u in firing:
            unit = UnitId(source, 1, u)
            assert s.explanations.with_simulations(run.run_id, unit)
            assert s.graphs.get(run.run_id, unit) is not None
            assert {t.mode for t in s.topics.sets(s.catalog.model(model).model_id, unit, "hi-i")} == {"hi-i"}
    del units


def test_n2g_prober_reads_features_as_the_sae_encodes_them(sae_db, tiny_folders):
    """The prober's activation at the last position equals encoding that position's resid_post by hand."""
    from analysis.activations import sae_reader
    from analysis.models import load_model
    from analysis.n2g.fit import ModelProber, Probe
    from analysis.sae.load import load_sae

    db, model, folder = sae_db
    subject = load_model(model)
    sae = load_sae(str(folder))
    prober = ModelProber(subject, 1, reader=sae_reader(sae))
    seq = (5, 17, 42, 9)
    (answer,) = prober([Probe(seq=seq, lm=False)])
    ids = torch.tensor([subject.bos_prefix + list(seq)])
    with torch.no_grad():
        h = subject.model(input_ids=ids, output_hidden_states=True).hidden_states[2][0, -1]
    x = h.double().numpy() - sae.b_dec.double().numpy()
    pre = x @ sae.W_enc.double().numpy() + sae.b_enc.double().numpy()
    keep = pre.argsort()[::-1][:4]
    expect = torch.zeros(64, dtype=torch.float64)
    expect[keep.copy()] = torch.tensor(pre[keep]).clamp(min=0)
    # where the float32 pass may pick another feature at the TopK cut (a near-tie), or fire or not (near 0), the
    # two may disagree by a whole activation: compared elsewhere
    sure = torch.from_numpy(~topk_ambiguous(pre[None], 4)[0])
    assert sure.sum() >= 60
    assert torch.allclose(torch.tensor(answer.acts, dtype=torch.float64)[sure], expect[sure], atol=1e-4)


def test_feature_page_and_weights(sae_db, monkeypatch):
    db, model, folder = sae_db
    with _store(db) as s:
        source = s.catalog.dictionaries()[0].source
    at = open_page("neuron", db, monkeypatch, model=model, layer=1, neuron=5, source=source, tab="tokens & weights")
    assert not at.exception
    assert at.title[0].value.endswith("L1 · F5 (tiny-sae)")
    assert at.query_params["source"] == source
    at.toggle(key="weights_on").set_value(True).run()
    assert not at.exception
    text = " ".join(m.value for m in at.markdown)
    assert "nearest features" in text and "neurons it reads most" in text
    # a feature index beyond the dictionary, and a layer the dictionary does not read
    at = open_page("neuron", db, monkeypatch, model=model, layer=1, neuron=64, source=source)
    assert not at.exception and "feature '64' does not exist" in at.error[0].value
    at = open_page("neuron", db, monkeypatch, model=model, layer=0, neuron=3, source=source)
    assert not at.exception and "reads layer 1 only" in at.error[0].value


def test_cache_page_lists_the_dictionary(sae_db, monkeypatch):
    db, model, folder = sae_db
    at = open_page("cache_page", db, monkeypatch)
    assert not at.exception
    assert any("Dictionaries" in h.value for h in at.subheader)


def test_compare_units_on_a_tiny_model(sae_db, viewer_db, tmp_path, capsys):
    """Every kind gets its seeded sample and every lens a number; the sample is the same on a second run (which
    computes nothing new) and differs between kinds' streams."""
    from analysis.__main__ import main
    from analysis.jobs.compare import sample_units

    db0, model, folder = sae_db
    db = tmp_path / "cmp.duckdb"
    shutil.copy(db0, db)
    corpus = str(viewer_db[0].parent / "docs.jsonl")
    ref = tmp_path / "ref.txt"
    ref.write_text("\n\n".join(TINY_TEXT * 20))
    ref = str(ref)
    args = ["compare-units", "--db", str(db), "--model", model, "--layer", "1", "--sae", str(folder), "--corpus",
            corpus, "--seq-len", "24", "--units", "4", "--n2g-units", "1", "--quiet", "--json", "--npmi-corpus", ref]
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out)
    assert [k["kind"] for k in first] == ["neurons", "sae", "basis", "random"]
    for k in first:
        assert len(k["units"]) == min(4, k["n_live"])
        assert all(u["token_lookup"] is not None for u in k["units"])
        assert sum(u["n2g_f1"] is not None for u in k["units"]) == min(1, len(k["units"]))
    with _store(db) as s:  # topic sets stored for every sampled unit (the tiny vocabulary may give no topic)
        model_id = s.catalog.model(model).model_id
        for k in first:
            for u in k["units"]:
                layer, index = 1, int(u["unit"].rsplit("#", 1)[-1].rsplit("N", 1)[-1])
                assert s.topics.sets(model_id, UnitId(k["source"], layer, index), "activation")
    basis = next(k for k in first if k["kind"] == "basis")
    assert basis["n_units"] == 32  # the tiny model's d_model
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out) == first
    assert sample_units(list(range(100)), 5, 0, "sae") != sample_units(list(range(100)), 5, 0, "basis")
    assert sample_units(list(range(100)), 5, 0, "sae") == sample_units(list(range(100)), 5, 0, "sae")


def test_interpretability_page(sae_db, viewer_db, tmp_path, monkeypatch):
    from analysis.__main__ import main

    db0, model, folder = sae_db
    db = tmp_path / "view.duckdb"
    shutil.copy(db0, db)
    import duckdb

    con = duckdb.connect(str(db))  # what other tests scored in the shared harvest is not a comparison
    con.execute("DELETE FROM baselines; DELETE FROM simulations; DELETE FROM n2g_graphs; DELETE FROM topic_sets")
    con.close()
    at = open_page("interpretability", db, monkeypatch)
    assert not at.exception and "No comparison yet" in at.info[0].value, (at.error, at.info)
    from analysis.sae.saelens import save_sae
    from tests.helpers import random_transcoder

    tc = save_sae(random_transcoder(32, 48, 4, layer=1), tmp_path / "tiny-transcoder")
    assert main(["compare-units", "--db", str(db), "--model", model, "--layer", "1", "--sae", str(folder),
                 "--transcoder", str(tc), "--corpus", str(viewer_db[0].parent / "docs.jsonl"), "--seq-len", "24",
                 "--units", "3", "--n2g-units", "0", "--lenses", "token-lookup", "--quiet"]) == 0
    at = open_page("interpretability", db, monkeypatch)
    assert not at.exception
    assert len(at.get("plotly_chart")) >= 2  # token-lookup score and density
    table = at.dataframe[0].value
    assert {"MLP neurons", "SAE features", "transcoder features", "residual basis"} <= set(table.columns)
    assert all(c != "–" for c in table["transcoder features"][:1])  # its token-lookup median is there
    assert any("Do features beat" in m.value for m in at.markdown)


def test_live_text_search_and_scores_on_features(sae_db, monkeypatch, tmp_path):
    """Live text shows the feature and the layer's strongest features; the search page lists features by
    statistic; the scores page shows feature scores under their own kind."""
    from analysis.__main__ import main

    db0, model, folder = sae_db
    db = tmp_path / "pages.duckdb"
    shutil.copy(db0, db)
    with _store(db) as s:
        source = s.catalog.dictionaries()[0].source
        run = s.runs.find(model, 1, source=source)
        rec = s.records.unit_record(run, UnitId(source, 1, 5))
    at = open_page("live", db, monkeypatch, model=model, layer=1, neuron=5, source=source,
               text="the cat sat on the mat")
    assert not at.exception
    assert any("L1/F5 on this text" in h.value for h in at.subheader)
    assert any("Features of layer 1" in h.value for h in at.subheader)
    at = open_page("search", db, monkeypatch, model=model)
    assert not at.exception
    assert main(["explain", "--db", str(db), "--model", model, "--layer", "1", "--source", source, "--neurons", "0-7",
                 "--quiet"]) == 0
    assert main(["score", "--db", str(db), "--model", model, "--layer", "1", "--source", source, "--neurons", "0-7",
                 "--quiet"]) == 0
    at = open_page("scores", db, monkeypatch)
    assert not at.exception
    assert "tiny-sae features" in at.radio[1].options
    at.radio[1].set_value(source).run()  # the neurons may have scores too (from other tests' writes)
    assert not at.exception
    assert any("tiny-sae features; 8 baselines" in c.value for c in at.caption)  # token-lookup: the units' baselines
    del rec
