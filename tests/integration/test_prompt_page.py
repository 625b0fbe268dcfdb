"""The Prompt page (start from a prompt) with Streamlit's AppTest, on a real harvest of the tiny GPT-2 (layers 0
and 1 harvested, layer 2 not: its units rank raw)."""

from __future__ import annotations

import re
from urllib.parse import urlencode


from tests.helpers import all_html, open_page

XSS = "<script>alert(1)</script> Paris is the capital of"


def _tags(body: str) -> set[str]:
    return {t.lower() for t in re.findall(r"<\s*([a-zA-Z][a-zA-Z0-9]*)", body)}


def test_prompt_page_explains_the_prediction(viewer_db, monkeypatch):
    db, model = viewer_db
    at = open_page("prompt", db, monkeypatch, model=model, text="Paris is the capital of")
    assert not at.exception, at.exception
    assert not at.error
    assert any(m.value.startswith("#### Explaining `") and "the model's top prediction" in m.value
               for m in at.markdown)
    body = all_html(at)
    assert body.count('href="./?model=') >= 3 * 3  # units at the token, for and against, each linking to its page
    assert "no harvest of its layer" in body or "L2/N" not in body  # layer 2 has no harvest: said, not a crash
    assert "2 in the database" in at.info[0].value  # the report's note: layer 2 ranks raw
    assert any("agree" in m.value and "Spearman" in m.value for m in at.markdown)
    table = at.dataframe[0].value
    assert list(table.columns)[-3:] == ["estimate", "real", "agrees"] and len(table) > 3
    assert len(at.get("plotly_chart")) == 2  # what fires, what causes
    assert at.query_params["text"] == "Paris is the capital of" and at.query_params["model"] == model


def test_prompt_page_escapes_the_text(viewer_db, monkeypatch):
    db, model = viewer_db
    at = open_page("prompt", db, monkeypatch, model=model, text=XSS, first="1")
    assert not at.exception, at.exception
    body = all_html(at)
    assert "<script" not in body.lower() and "&lt;" in body
    assert _tags(body) <= {"style", "table", "tr", "th", "td", "a", "span", "code", "div"}
    for chart in at.get("plotly_chart"):  # axis and hover texts are pseudo-HTML in plotly: escaped
        spec = chart.proto.spec
        assert "<script" not in spec and "&lt;" in spec
    assert all("<script" not in m.value for m in at.markdown)


def test_prompt_page_options_and_graph(viewer_db, monkeypatch):
    db, model = viewer_db
    at = open_page("prompt", db, monkeypatch, model=model, text="Paris is the capital of", target=" France",
                   contrast=" Paris", position=2, at=1, graph="1")
    assert not at.exception, at.exception
    explaining = next(m.value for m in at.markdown if m.value.startswith("#### Explaining"))
    assert "the token asked for" in explaining and "after position 2" in explaining and "against" in explaining
    assert at.selectbox(key="prompt_at").value == 1 and at.selectbox(key="prompt_position").value == 2
    [frame] = [e for e in at.main if getattr(e, "type", "") == "iframe"]
    assert "vis.DataSet" in frame.proto.srcdoc and "unitUrls" in frame.proto.srcdoc
    assert "<script>alert" not in frame.proto.srcdoc
    assert any("graph (JSON)" in b.label for b in at.get("download_button"))
    at.toggle(key="prompt_graph").set_value(False).run()
    assert not at.exception and "graph" not in at.query_params
    assert not [e for e in at.main if getattr(e, "type", "") == "iframe"]


def test_prompt_page_bad_input_gets_messages(viewer_db, monkeypatch):
    db, model = viewer_db
    at = open_page("prompt", db, monkeypatch, model=model, text="Paris is the capital of")
    at.text_area(key="prompt_text").set_value("   ").run()
    assert not at.exception and "Type or paste a prompt" in at.info[0].value
    at = open_page("prompt", db, monkeypatch, model=model, text="Paris is nice. " * 100)
    assert not at.exception and "at most 256" in at.warning[0].value
    at = open_page("prompt", db, monkeypatch, model=model, text="Paris", target="")
    assert not at.exception
    at = open_page("prompt", db, monkeypatch, model=model, text="Paris is the capital of", position=99)
    assert not at.exception and at.selectbox(key="prompt_position").value == -1  # out of range: the last token
    at = open_page("prompt", db, monkeypatch, model=model, text="Paris is the capital of", sae="sae:nothing@0")
    assert not at.exception
    at = open_page("prompt", db, monkeypatch, model="no-such-model", text="Paris")
    assert not at.exception and at.title[0].value == "Prompt"


def test_prompt_page_takes_transcoder_features(transcoder_db, monkeypatch):
    db, model, _folder, tc = transcoder_db
    at = open_page("prompt", db, monkeypatch, model=model, text="Paris is the capital of")
    assert not at.exception, at.exception
    assert not at.error
    picked = at.multiselect(key=f"prompt_sae:{model}")
    assert picked.value == [tc.source]  # chosen by default, as any dictionary
    assert any("transcoder" in o and "L1 MLP in → out" in o for o in picked.options), picked.options
    assert urlencode({'source': tc.source}) in all_html(at)  # its features listed, linking to their pages
    at = open_page("prompt", db, monkeypatch, model=model, text="Paris is the capital of", sae="tiny-tc")
    assert not at.exception and at.multiselect(key=f"prompt_sae:{model}").value == [tc.source]  # by its bare name
    at = open_page("prompt", db, monkeypatch, model=model, text="Paris is the capital of", sae="sae:nothing@0")
    assert not at.exception and any("'sae:nothing@0' is not a dictionary" in w.value for w in at.warning)


def test_transcoder_feature_weights_say_where_it_reads_and_writes(transcoder_db, monkeypatch):
    """(The unit page a prompt's feature links to.) Its weights tab names both sites."""
    db, model, _folder, tc = transcoder_db
    at = open_page("neuron", db, monkeypatch, model=model, layer=1, neuron=5, source=tc.source, tab="tokens & weights")
    assert not at.exception, at.exception
    at.toggle(key="weights_on").set_value(True).run()
    assert not at.exception and not at.error
    assert any("reads mlp_input, writes mlp_out of layer 1" in c.value and "pre-MLP norm gain" in c.value
               for c in at.caption), [c.value for c in at.caption]
    text = " ".join(m.value for m in at.markdown)
    assert "nearest features" in text and "neurons it reads most" in text and "L0/N" in text and "L1/N" not in text
