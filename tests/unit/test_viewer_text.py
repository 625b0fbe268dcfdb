"""The viewer's text helpers: a graph query's tokens, a statistic's short number."""

from __future__ import annotations

from viewer.components.charts import short_number
from viewer.views.search import query_tokens


def test_a_graph_query_keeps_whitespace_tokens_and_escapes():
    assert query_tokens(" for| example") == [" for", " example"]
    assert query_tokens(" |\\n| the||") == [" ", "\n", " the"]  # a space, a newline; empty parts dropped
    assert query_tokens("a\\|b|\\t|c\\\\") == ["a|b", "\t", "c\\"]
    assert query_tokens("x\\") == ["x\\"] and query_tokens("\\q") == ["\\q"]  # not an escape: as typed
    assert query_tokens("") == query_tokens("|") == []


def test_short_number_fits_a_statistic_column():
    cases = {-0.0068: "-0.0068", -0.00123: "-0.0012", -0.000123: "-1.2e-4", 0.151: "0.151", 107.4: "107",
             -5.51: "-5.51", 12345.6: "1.2e+04", 0.0: "0", float("inf"): "inf", 1.5e-12: "1.5e-12"}
    assert {x: short_number(x) for x in cases} == cases
