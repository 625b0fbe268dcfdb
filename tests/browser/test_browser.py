"""The real page in a real browser: Debian's chromium driven by Playwright against a served viewer."""

from __future__ import annotations

from analysis.types import MLP, UnitId

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.helpers import REPO
from viewer.site import main as site_main

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]

if not Path(CHROMIUM).exists():
    if os.environ.get("CI"):
        raise RuntimeError("chromium is missing: `make test` installs it (apt-get install chromium)")
    pytest.skip("chromium not installed (make test installs it)", allow_module_level=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(n2g_db):
    db, model = n2g_db  # the viewer_db harvest plus graphs for layer 1
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(REPO / "viewer" / "app.py"), "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true", "--", "--db", str(db)],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if urllib.request.urlopen(url + "/_stcore/health", timeout=2).status == 200:
                break
        except OSError:
            time.sleep(0.3)
    else:
        proc.kill()
        raise RuntimeError("the viewer did not start")
    yield url, db, model
    proc.terminate()
    proc.wait(timeout=20)


def _neuron_with_html_in_top_records(db: Path, model: str) -> int:
    from cache.store import open_store

    with open_store(db, read_only=True) as s:
        run = s.runs.find(model, 1)
        for n in range(128):
            rec = s.records.unit_record(run, UnitId(MLP, 1, n))
            texts = ["".join(r.tokens) for r in rec.most_positive_activation_records]
            if any("<script>alert(1)</script>" in t for t in texts) and any("<img src=x onerror" in t for t in texts):
                return n
    raise AssertionError("no neuron shows both HTML snippets")


def test_permalink_heatmap_and_escaping_in_chromium(server, tmp_path):
    from playwright.sync_api import sync_playwright

    url, db, model = server
    neuron = _neuron_with_html_in_top_records(db, model)
    link = f"{url}/?model={urllib.request.quote(model, safe='')}&layer=1&neuron={neuron}"
    dialogs = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1600})
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.goto(link)
        page.wait_for_selector(".hm .rec", timeout=60_000)
        heat = page.locator(".hm").first
        text = heat.inner_text()
        assert "<script>alert(1)</script>" in text  # shown as text...
        assert "<img src=x onerror=alert(2)>" in text
        assert page.locator(".hm script, .hm img").count() == 0  # ...never as markup
        assert page.locator(".hm .rec").count() == 30  # the default harvest's top 30
        assert page.locator(".hm .tok.max").count() == 30
        tip = page.locator(".hm .tok").first.get_attribute("title")
        assert tip and ("+" in tip or "-" in tip)
        shot = tmp_path / "neuron_page.png"
        page.screenshot(path=str(shot), full_page=False)
        assert shot.stat().st_size > 10_000
        shared = page.url  # what a user copies from the address bar
        assert f"neuron={neuron}" in shared and "layer=1" in shared
        other = browser.new_context().new_page()  # a colleague's fresh browser session
        other.goto(shared)
        other.wait_for_selector(".hm .rec", timeout=60_000)
        assert other.locator("h1").first.inner_text().strip().endswith(f"L1 · N{neuron}")
        browser.close()
    assert dialogs == []
    out = os.environ.get("NEURON_VIEWER_SCREENSHOTS")
    if out:
        shutil.copy(shot, Path(out) / "neuron_page.png")


def test_graph_tab_draws_in_chromium(server):
    """The pyvis graph draws on a canvas inside its iframe, with no markup from tokens and no dialogs."""
    from playwright.sync_api import sync_playwright

    from cache.store import open_store

    url, db, model = server
    with open_store(db, read_only=True) as s:
        run = s.runs.find(model, 1)
        unit = max(range(12), key=lambda u: len(s.graphs.get(run.run_id, UnitId(MLP, 1, u)).patterns))
    dialogs = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1600})
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.goto(f"{url}/?model={urllib.request.quote(model, safe='')}&layer=1&neuron={unit}&tab=graph")
        page.wait_for_selector("iframe", timeout=60_000)
        frame = page.frame_locator("iframe").first
        frame.locator("canvas").first.wait_for(timeout=30_000)
        assert frame.locator("img").count() == 0
        assert page.locator(".hm .rec").count() == 20  # held-out records, real and predicted
        browser.close()
    assert dialogs == []


def test_glance_header_and_a_list_page_in_chromium(server):
    """The top of a unit page says what it does; a list opens from its shared URL with its notes and links."""
    from playwright.sync_api import sync_playwright

    from analysis.__main__ import main

    url, db, model = server
    for n, note in ((2, "fires after <b>tags</b>"), (5, "a second one")):
        assert main(["list", "add", "browser picks", "--db", str(db), "--model", model, "--layer", "1",
                     "--neuron", str(n), "--note", note]) == 0
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1600})
        page.goto(f"{url}/?model={urllib.request.quote(model, safe='')}&layer=1&neuron=2")
        page.wait_for_selector(".hm .rec", timeout=60_000)
        glance = page.locator(".glance").first.inner_text()
        assert "N2G F1" in glance and "FIRES ON" in glance.upper() and "density" in glance
        page.locator(".glance a", has_text="graph").first.click()  # a card opens its tab
        page.wait_for_selector("iframe", timeout=60_000)
        assert "tab=graph" in page.url
        page.goto(f"{url}/lists?list={urllib.request.quote('browser picks')}")
        page.get_by_text("fires after <b>tags</b>").wait_for(timeout=60_000)  # the note, as text
        assert page.locator("[data-testid='stMain'] b:text('tags')").count() == 0
        links = page.locator("a[href*='neuron=']")
        assert links.count() >= 2
        page.goto(f"{url}/" + links.first.get_attribute("href").removeprefix("./"))  # (links open a new tab)
        page.wait_for_selector(".hm .rec", timeout=60_000)
        assert page.locator("h1").first.inner_text().strip().endswith("L1 · N2")
        browser.close()


def test_static_site_opens_offline_in_chromium(server, tmp_path):
    """A list exported as a static site opens from the folder with no network request at all."""
    import zipfile

    from playwright.sync_api import sync_playwright

    from analysis.__main__ import main

    _url, db, model = server
    assert main(["list", "add", "offline", "--db", str(db), "--model", model, "--layer", "1", "--neuron", "3",
                 "--note", "see the <script> records"]) == 0
    assert main(["list", "add", "offline", "--db", str(db), "--model", model, "--layer", "0", "--neuron", "1"]) == 0
    assert site_main(["--list", "offline", "--db", str(db), "--out", str(tmp_path / "offline.zip"), "--quiet"]) == 0
    with zipfile.ZipFile(tmp_path / "offline.zip") as z:
        z.extractall(tmp_path / "unzipped")
    index = tmp_path / "unzipped" / "offline" / "index.html"
    requests = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page()
        page.on("request", lambda r: requests.append(r.url))
        page.goto(index.as_uri())
        assert page.locator("a[href^='units/']").count() == 2
        page.locator("a[href^='units/']").first.click()
        page.wait_for_selector(".hm .rec")
        assert page.locator(".hm .rec").count() >= 20 and page.locator(".hist .bar").count() > 3
        assert "see the <script> records" in page.inner_text("body") and page.locator("body script").count() == 0
        page.get_by_text("all units").click()
        page.wait_for_selector("a[href^='units/']")
        browser.close()
    assert requests and all(u.startswith("file://") for u in requests), [u for u in requests if "file:" not in u]


def test_prompt_page_in_chromium(server):
    """The Prompt page on a text holding a script tag: the tokens show as text, no dialog; its graph draws, and a
    click on a unit opens that unit's page."""
    from playwright.sync_api import sync_playwright

    url, _db, model = server
    text = "<script>alert(1)</script> Paris is the capital of"
    dialogs = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        context = browser.new_context(viewport={"width": 1400, "height": 4000})
        page = context.new_page()
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.goto(f"{url}/prompt?model={urllib.request.quote(model, safe='')}&text={urllib.request.quote(text)}"
                  "&first=1&graph=1")
        page.wait_for_selector("iframe", timeout=120_000)
        assert page.locator(".units a[href*='neuron=']").count() >= 10
        assert page.locator("[data-testid='stMain'] script, .units img").count() == 0
        handle = page.locator("iframe").first
        handle.content_frame.locator("canvas").first.wait_for(timeout=30_000)
        frame = handle.element_handle().content_frame()
        box = handle.bounding_box()
        at = frame.evaluate("() => { const p = network.canvasToDOM(network.getPositions([0])[0]); "
                            "const r = document.querySelector('#mynetwork canvas').getBoundingClientRect(); "
                            "return {x: p.x + r.left, y: p.y + r.top}; }")
        with context.expect_page(timeout=30_000) as opened:
            page.mouse.click(box["x"] + at["x"], box["y"] + at["y"])
        unit_page = opened.value
        unit_page.locator("h1", has_text=" · L").first.wait_for(timeout=60_000)  # (its layer may not be harvested)
        assert "neuron=" in unit_page.url and unit_page.url.startswith(url + "/?")
        browser.close()
    assert dialogs == []


def test_live_ablation_and_steering_in_chromium(server):
    """The ablation heatmap and the side-by-side steered generation draw in a real browser, escaped."""
    from playwright.sync_api import sync_playwright

    url, _db, model = server
    q = urllib.request.quote(model, safe="")
    dialogs = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1600})
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.goto(f"{url}/live?model={q}&layer=1&neuron=3&ablate=zero&text="
                  + urllib.request.quote("Paris <script>alert(1)</script> is in France."))
        page.get_by_text("predictions after token").wait_for(timeout=60_000)
        page.wait_for_function("document.querySelectorAll('.hm .rec').length >= 2", timeout=30_000)  # (drawn async)
        assert page.locator(".hm .rec").count() == 2 and page.locator(".hm script").count() == 0
        page.goto(f"{url}/steer?model={q}&layer=1&neuron=3&how=clamp&k=30&new=8&go=1&prompt="
                  + urllib.request.quote("The <img src=x onerror=alert(3)> capital"))
        page.get_by_text("generated tokens the same").wait_for(timeout=60_000)
        page.wait_for_function("document.body.innerText.split('onerror=alert(3)').length >= 3", timeout=30_000)
        main = page.locator("[data-testid='stMain']").first
        assert main.inner_text().count("<img src=x onerror=alert(3)>") >= 2 and main.locator("img").count() == 0
        browser.close()
    assert dialogs == []


def test_score_boxes_from_quartiles_draw_in_chromium(tmp_path):
    """The Scores page's boxes from the store's quartiles (past 3,000 scores) draw in Chromium, whether or not
    any box has outliers (plotly draws nothing when the first box's points are empty)."""
    import plotly.graph_objects as go
    from playwright.sync_api import sync_playwright

    from cache.scores import ScoreBox, ScoreTrace
    from viewer.components.scores import box

    def trace(outliers: bool) -> ScoreTrace:
        return ScoreTrace(("a", "sim"), 9000, None, [
            ScoreBox(layer, 3000, 0.2, 0.4, 0.6, 0.0, 0.9, [(UnitId(MLP, layer, 7), 1.2)] if outliers and layer else [])
            for layer in range(3)])

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page()
        for outliers in (False, True):
            html = tmp_path / f"boxes-{outliers}.html"
            html.write_text(go.Figure(box(trace(outliers), "a → sim")).to_html(include_plotlyjs=True))
            page.goto(html.as_uri())
            page.wait_for_selector("g.trace.boxes path.box", state="attached", timeout=30_000)
            assert page.locator("g.trace.boxes path.box").count() == 3
            assert page.locator("g.trace.boxes path.point").count() == (2 if outliers else 0)
        browser.close()


def test_compare_page_scores_with_intervals_in_chromium(server, tmp_path):
    """The Compare page draws both units' score tables, every stored interval visible as text."""
    from playwright.sync_api import sync_playwright

    from analysis.__main__ import main
    from cache.store import open_store

    url, db, model = server
    args = ["--db", str(db), "--model", model, "--layer", "1", "--neurons", "0-1", "--quiet"]
    assert main(["explain", *args, "--explainer", "token-lookup"]) == 0
    assert main(["score", *args, "--simulator", "token-lookup"]) == 0  # the baselines, with intervals
    assert main(["score", *args, "--scorer", "embedding"]) == 0
    expected = []
    with open_store(db, read_only=True) as s:
        run = s.runs.find(model, 1).run_id
        for n in (0, 1):
            ids = [e.explanation_id for e in s.explanations.of_unit(run, UnitId(MLP, 1, n))]
            shown = [v for vs in s.scorer_results.of_explanations(ids).values() for v in vs]
            shown += [b for b in s.explanations.baselines(run, UnitId(MLP, 1, n)) if b.score is not None]
            assert any(v.lo is not None for v in shown)
            expected.append([f"{v.score:.2f} [{v.lo:.2f}, {v.hi:.2f}]" for v in shown])
    q = urllib.request.quote(model, safe="")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1500, "height": 1800})
        page.goto(f"{url}/compare?a_model={q}&a_layer=1&a_neuron=0&b_model={q}&b_layer=1&b_neuron=1")
        page.wait_for_selector(".scoretab table", timeout=60_000)
        tables = page.locator(".scoretab")
        assert tables.count() == 2
        for i, want in enumerate(expected):
            assert tables.nth(i).is_visible()
            text = tables.nth(i).inner_text()
            assert "token-lookup baseline" in text and "embedding" in text and "chance 0.5" in text
            assert all(w in text for w in want), (want, text)
        tables.first.scroll_into_view_if_needed()
        shot = tmp_path / "compare_page.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
        browser.close()
    out = os.environ.get("NEURON_VIEWER_SCREENSHOTS")
    if out:
        shutil.copy(shot, Path(out) / "compare_page.png")
