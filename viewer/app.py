"""The viewer: page config and navigation only.

Run: ``streamlit run viewer/app.py -- --db PATH`` (else $NEURON_VIEWER_DB, else the demo cache).
A unit's page is the root URL with ``?model=<name>&layer=<L>&neuron=<N>`` (plus ``&source=<dictionary>`` for
units that are not MLP neurons). Pages are thin: they read through ``viewer/resources.py`` and hand data to
``viewer/components/``; the viewer writes only through the job functions (``analysis/jobs/``).
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

HERE = Path(__file__).resolve().parent

st.set_page_config(page_title="Neuron viewer", page_icon=":material/neurology:", layout="wide")
nav = st.navigation([
    st.Page(HERE / "views" / "neuron.py", title="Neuron", icon=":material/neurology:", default=True),
    st.Page(HERE / "views" / "prompt.py", title="Prompt", icon=":material/psychology_alt:", url_path="prompt"),
    st.Page(HERE / "views" / "live.py", title="Live text", icon=":material/keyboard:", url_path="live"),
    st.Page(HERE / "views" / "steer.py", title="Steering", icon=":material/tune:", url_path="steer"),
    st.Page(HERE / "views" / "search.py", title="Search", icon=":material/search:", url_path="search"),
    st.Page(HERE / "views" / "compare.py", title="Compare", icon=":material/compare_arrows:", url_path="compare"),
    st.Page(HERE / "views" / "lists.py", title="Lists", icon=":material/list:", url_path="lists"),
    st.Page(HERE / "views" / "scores.py", title="Scores", icon=":material/insights:", url_path="scores"),
    st.Page(HERE / "views" / "interpretability.py", title="Interpretability", icon=":material/balance:",
            url_path="interpretability"),
    st.Page(HERE / "views" / "cache_page.py", title="Cache", icon=":material/storage:", url_path="cache"),
])
nav.run()
