"""Makes ``v4_cache/`` (a DuckDB database export) and ``v4_expected.json``: a cache written by the code of commit c666aaa (schema
version 4, before units named their source), and what that code exported and rendered from it.

Run once, from a checkout of that commit, with this repository's venv:
    git worktree add /tmp/v4 c666aaa && cd /tmp/v4 && PYTHONPATH=. ../main/.venv/bin/python \
        ../main/tests/data/make_v4_cache.py ../main/tests/data
tests/test_migration.py migrates a copy with today's code and checks the exports and pages are unchanged.
"""

from __future__ import annotations

import json
import random
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(out: Path) -> None:
    from streamlit.testing.v1 import AppTest

    from analysis.__main__ import main as cli
    from helpers import TINY_TEXT, tiny_model_folder

    tmp = Path(tempfile.mkdtemp())
    model = str(tiny_model_folder(tmp / "model", "gpt2"))
    corpus = tmp / "docs.jsonl"
    rng = random.Random(7)
    with open(corpus, "w") as f:
        for i in range(24):
            f.write(json.dumps({"title": f"d{i}", "text": " ".join(rng.choice(TINY_TEXT) for _ in range(10))}) + "\n")
    ref = tmp / "ref.txt"
    ref.write_text("\n".join(" ".join(rng.choice(TINY_TEXT) for _ in range(30)) for _ in range(300)))
    db = out / "v4_cache.duckdb"
    db.unlink(missing_ok=True)
    base = ["--db", str(db), "--model", model]
    assert cli(["harvest", *base, "--corpus", str(corpus), "--layers", "0,1", "--seq-len", "24", "--quiet"]) == 0
    assert cli(["explain", *base, "--layer", "1", "--neurons", "0-3", "--explainer", "token-lookup", "--quiet"]) == 0
    assert cli(["score", *base, "--layer", "1", "--neurons", "0-3", "--simulator", "token-lookup", "--quiet"]) == 0
    assert cli(["n2g", *base, "--layer", "1", "--neurons", "0-3", "--quiet"]) == 0
    assert cli(["topics", *base, "--layer", "1", "--neurons", "0-3", "--corpus", str(ref), "--min-count", "2",
                "--tau", "200", "--mode", "hi-c,hi-i,activation,lo-c", "--quiet"]) == 0
    expected: dict = {"model": model, "exports": {}, "pages": {}}
    import contextlib
    import io

    for layer, neuron in [(0, 5), (1, 2)]:
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            assert cli(["export", *base, "--layer", str(layer), "--neuron", str(neuron), "--compact"]) == 0
        expected["exports"][f"{layer}/{neuron}"] = json.loads(buf.getvalue())
    import os

    os.environ["NEURON_VIEWER_DB"] = str(db)
    views = Path.cwd() / "viewer" / "views"  # the checkout being run (the old code)
    for name, params in PAGES:
        at = AppTest.from_file(str(views / f"{name}.py"), default_timeout=60)
        for k, v in dict(params, model=model).items():
            at.query_params[k] = str(v)
        at.run()
        assert not at.exception, at.exception
        expected["pages"][page_key(name, params)] = page_text(at)
    (out / "v4_expected.json").write_text(json.dumps(expected, indent=1, ensure_ascii=False))
    # committed as DuckDB's own export (schema.sql + parquet): a fraction of the file's size
    import shutil

    import duckdb

    shutil.rmtree(out / "v4_cache", ignore_errors=True)
    con = duckdb.connect(str(db))
    con.execute(f"EXPORT DATABASE '{out / 'v4_cache'}' (FORMAT PARQUET)")
    con.close()
    db.unlink()
    shutil.rmtree(Path(str(db) + ".topics"), ignore_errors=True)


PAGES = [("neuron", {"layer": 1, "neuron": 2, "tab": t}) for t in ("top", "quantiles", "random", "explanations",
                                                                   "graph", "topics")] + \
        [("neuron", {"layer": 0, "neuron": 5, "tab": "top"}), ("scores", {}), ("search", {"token": " the"})]


def page_key(name: str, params: dict) -> str:
    return name + "?" + "&".join(f"{k}={v}" for k, v in sorted(params.items()))


def page_text(at) -> dict:
    """What a page shows, element by element (titles, markdown, captions, metrics, tables, HTML)."""
    def frame(df) -> list:
        return [[str(v) for v in row] for row in df.astype(str).values.tolist()]

    return {"title": [t.value for t in at.title], "markdown": [m.value for m in at.markdown],
            "caption": [c.value for c in at.caption], "metric": [(m.label, m.value) for m in at.metric],
            "html": [h.proto.body for h in at.html], "dataframe": [frame(d.value) for d in at.dataframe],
            "error": [e.value for e in at.error], "info": [i.value for i in at.info]}


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent))  # tests/helpers.py (run as a script from the old commit's checkout)
    main(Path(sys.argv[1]).resolve())
