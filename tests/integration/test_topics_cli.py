"""Word-pool topics for real: the embedded model with the Lee corpus, and the CLI on a real harvest (JSON, resume,
the viewer's pages)."""

from __future__ import annotations

import numpy as np
import pytest

from analysis.topics import TopicConfig, count_cooccurrences, topic_score, topics_for_units
from analysis.types import MLP, UnitId
from analysis.words import is_pool_word
from tests.helpers import PAGES


def test_embedded_model_topics(embedded_smollm2):
    """One real end-to-end run: SmolLM2 hi-i, the Lee corpus statistics (small and fast to count)."""
    from analysis.corpus import load_corpus

    corpus = load_corpus("lee-background")
    stats = count_cooccurrences([d.text for d in corpus.documents], corpus.info.corpus_id, min_count=3,
                                progress=False)
    out = topics_for_units(embedded_smollm2, 29, [0, 1], "hi-i", stats, TopicConfig(tau=900))
    assert len(out) == 4
    for r in out:
        assert len(r.pool.words) > 10 and all(is_pool_word(w) for w in r.pool.words)
        for t in r.topics:
            assert len(t.words) == 10 and t.optimal and -1 <= t.score <= 1
            assert t.score == pytest.approx(topic_score(t.words, stats, eps=TopicConfig().eps))


def test_cli_topics_json_is_checkable_resumes_and_shows(tmp_path, monkeypatch, capsys):
    """On a real harvest of a tiny model (whole-word vocabulary) with a tiny reference corpus: every stored topic
    is the brute-force optimum of its star (recomputed from the JSON's NPMI matrix), its score is its mean pairwise
    NPMI; a second run computes nothing; the neuron page's topics tab and Search show them."""
    import itertools
    import json

    from analysis.__main__ import main
    from tests.helpers import TINY_TEXT, tiny_model_folder

    model = str(tiny_model_folder(tmp_path / "words", "llama", vocab_size=700))
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"title": f"d{i}", "text": " ".join(TINY_TEXT[i % 4:] + TINY_TEXT[:i % 4])})
                            + "\n" for i in range(24)))
    db = tmp_path / "t.duckdb"
    assert main(["harvest", "--model", model, "--corpus", str(docs), "--db", str(db), "--layers", "1",
                 "--seq-len", "24", "--quiet"]) == 0
    ref = tmp_path / "ref.txt"
    ref.write_text("\n\n".join(TINY_TEXT * 40))
    args = ["topics", "--db", str(db), "--model", model, "--layer", "1", "--neurons", "0-5", "--k", "3",
            "--tau", "700", "--corpus", str(ref), "--min-count", "2", "--mode", "hi-c,hi-i,activation,lo-c"]
    assert main(args + ["--json"]) == 0
    out = json.loads(capsys.readouterr().out)["results"]
    assert {r["mode"] for r in out} == {"hi-c", "hi-i", "activation", "lo-c"} and len(out) == 4 * 6 * 2
    solved = 0
    for r in out:
        assert (r["topics"] == []) == (r["reason"] is not None)
        for t in r["topics"]:
            star = r["stars"][t["star"]]
            w = np.array(star["npmi"])
            idx = [star["words"].index(x) for x in t["words"]]
            assert t["score"] == pytest.approx(np.mean([w[a, b] for a, b in itertools.combinations(idx, 2)]))
            best = max(sum(w[a, b] for a, b in itertools.combinations(c, 2))
                       for c in itertools.combinations(range(len(star["words"])), 3))
            assert t["score"] * 3 == pytest.approx(best) and t["optimal"]
            # each word's mean NPMI with the other two (stored in place of the star's matrix)
            assert t["contrib"] == pytest.approx([(w[i, idx].sum() - w[i, i]) / 2 for i in idx], abs=1e-6)
            assert all(x.isalpha() and len(x) >= 3 for x in t["words"])
            solved += 1
    assert solved > 0
    assert main(args) == 0
    assert "topics: 48 unit-polarities" in capsys.readouterr().err
    # stars are stored without their matrices (the JSON's come from the statistics); a row stored before that
    # (matrix kept, no contributions) reads its contributions from the star's matrix
    import duckdb

    con = duckdb.connect(str(db))
    assert con.execute("SELECT count(*) FROM topic_stars WHERE npmi IS NOT NULL").fetchone()[0] == 0
    r = next(r for r in out if r["topics"] and r["mode"] == "hi-c")
    t = r["topics"][0]
    star = r["stars"][t["star"]]
    where = f"unit = {r['neuron']} AND mode = 'hi-c' AND polarity = '{r['polarity']}'"
    con.execute(f"UPDATE topic_stars SET npmi = ? WHERE {where} AND star = {t['star']}",
                [[x for row in star["npmi"] for x in row]])
    con.execute(f"UPDATE topics SET contrib = NULL WHERE {where}")
    con.close()
    from cache.store import open_store

    with open_store(db, read_only=True) as s:
        model_id = s.con.execute("SELECT model_id FROM topic_sets LIMIT 1").fetchone()[0]
        old = next(ts for ts in s.topics.sets(model_id, UnitId(MLP, 1, r["neuron"]), "hi-c")
                   if ts.polarity == r["polarity"])
    assert old.topics[0].contrib == pytest.approx(t["contrib"], abs=1e-6)
    assert all(sum(r["dropped"].values()) + len(r["pool"]) == r["n_tokens"] for r in out)
    assert {r["params"]["corpus"] for r in out} == {f"ref.txt@{out[0]['params']['corpus'].split('@')[1]}"}
    # an activation pool is never scored by NPMI over the text the activations came from
    assert main(["topics", "--db", str(db), "--model", model, "--layer", "1", "--neurons", "0-5", "--corpus",
                 str(docs), "--mode", "activation", "--quiet"]) == 2
    assert "holds the same text" in capsys.readouterr().err
    assert main(["topics", "--db", str(db), "--model", model, "--layer", "9"]) == 2  # no such layer
    assert "does not exist" in capsys.readouterr().err
    # with a neuron mode, the lo-* modes take the residual dimensions that exist (d_model 32, d_mlp 48); alone, a
    # range past them is refused
    few = ["topics", "--db", str(db), "--model", model, "--layer", "1", "--neurons", "30-33", "--k", "3", "--tau",
           "700", "--corpus", str(ref), "--min-count", "2", "--quiet"]
    assert main(few + ["--mode", "hi-i,lo-i"]) == 0
    con = duckdb.connect(str(db), read_only=True)
    assert dict(con.execute("SELECT mode, list(DISTINCT unit ORDER BY unit) FROM topic_sets WHERE unit >= 30 "
                            "GROUP BY mode").fetchall()) == {"hi-i": [30, 31, 32, 33], "lo-i": [30, 31]}
    con.close()
    assert main(few + ["--mode", "lo-i"]) == 2
    assert "lo-i takes residual dimensions 0..31" in capsys.readouterr().err
    # the viewer
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("NEURON_VIEWER_DB", str(db))
    unit = next(r["neuron"] for r in out if r["mode"] == "hi-c" and r["topics"])
    at = AppTest.from_file(str(PAGES / "neuron.py"),
                           default_timeout=60)
    for k, v in dict(model=model, layer=1, neuron=unit, tab="topics").items():
        at.query_params[k] = str(v)
    at.run()
    assert not at.exception and not at.error
    body = "".join(h.proto.body for h in at.html)
    word = next(r for r in out if r["mode"] == "hi-c" and r["neuron"] == unit and r["topics"])["topics"][0]["words"][0]
    assert 'class="chip"' in body and f">{word}</span>" in body
    assert len(at.get("plotly_chart")) == 1 and 'class="hist"' in body  # topics vs random sets; the histogram
    assert any("vs random sets" in m.value for m in at.markdown)
    assert any("ref.txt" in c.value and "words" in c.value for c in at.caption)
    at = AppTest.from_file(str(PAGES / "search.py"),
                           default_timeout=60)
    at.query_params["model"] = model
    at.query_params["topic"] = word
    at.run()
    assert not at.exception
    assert any(word in " ".join(df.value.get("topic", [])) for df in at.dataframe)
