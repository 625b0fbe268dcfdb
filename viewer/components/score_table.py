"""One table of every score a unit's explanations have: a row per explanation, a column per scorer (each
simulator on each record set, then the embedding, detection, fuzz and output scorers' verdicts), each score with its
95 % interval; the unit's token-lookup baseline as the last row of the simulation columns; output-side explanations
(explainer ``output-…``) in their own group; and a flag where the scorers disagree about which explanation is best.
Every text is escaped here."""

from __future__ import annotations

import html
import json
from dataclasses import dataclass

from analysis.scorers import CHANCE, HEADLINE, SCORERS

METRIC_LABEL = {"auroc": "AUROC", "balanced_accuracy": "bal. acc.", "correlation": "r"}
GROUPS = (("input", "what it fires on (input side)"), ("output", "what it does (output side)"))

STYLE = """<style>
.scoretab {font-family: sans-serif; font-size: 13px; margin: 4px 0 10px 0;}
.scoretab h4 {font-size: 14px; margin: 8px 0 4px 0; font-weight: 600;}
.scoretab .wrap {overflow-x: auto;}
.scoretab table {border-collapse: collapse; width: 100%;}
.scoretab th, .scoretab td {border-bottom: 1px solid #e6e6e6; padding: 4px 6px; vertical-align: top; text-align: left;}
.scoretab th {font-weight: 600; background: #fafafa;}
.scoretab th .sub, .scoretab td .sub {display: block; font-weight: normal; color: #777; font-size: 11.5px;}
.scoretab td.num {font-variant-numeric: tabular-nums;}
.scoretab td.num b, .scoretab td.num .ci, .scoretab td.num .noci {white-space: nowrap;}
.scoretab td.num b {font-weight: 700;}
.scoretab .ci {color: #666;}
.scoretab .noci {color: #999; font-style: italic;}
.scoretab .err {color: #b00020;}
.scoretab .none {color: #bbb;}
.scoretab tr.base td {background: #f5f5f5; color: #555;}
.scoretab .flag {color: #8a4b00; font-size: 12px;}
.scoretab .disagree {background: #fff4e0; border-left: 3px solid #e08a00; padding: 5px 8px; margin-top: 6px;}
</style>"""


@dataclass(frozen=True)
class Column:
    """One scorer of the table: a simulator on a record set, or a scorer's verdicts of one set of params."""

    key: tuple
    label: str
    metric: str
    """"correlation" for simulations, else the scorer's headline metric (``analysis.scorers.HEADLINE``)."""
    chance: float


@dataclass(frozen=True)
class Cell:
    score: float | None
    lo: float | None
    hi: float | None
    error: str | None = None


def side(explainer: str) -> str:
    """'output' for an output-side explanation (what the unit does downstream), else 'input'."""
    return "output" if explainer.startswith("output-") else "input"


def fmt_ci(score: float | None, lo: float | None, hi: float | None, digits: int = 2) -> str:
    """``0.62 [0.41, 0.80]``; ``0.62 (no interval)`` for a score stored before intervals were kept."""
    if score is None:
        return "—"
    if lo is None or hi is None:
        return f"{score:.{digits}f} (no interval)"
    return f"{score:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def _params(p: dict) -> str:
    return json.dumps(p, sort_keys=True)


def _who(params: dict) -> str:
    from viewer.components.explanations import endpoint

    return endpoint(params) or ", ".join(f"{k}={v}" for k, v in sorted(params.items()))[:40]


def grid(rows: list, verdicts: dict) -> tuple[list[Column], dict[str, dict[tuple, Cell]]]:
    """(columns, explanation id -> column key -> Cell) of ``rows`` ((StoredExplanation, [StoredSimulation])) and
    ``verdicts`` (explanation id -> [cache.scorer_results.StoredScore], newest first per scorer)."""
    cells: dict[str, dict[tuple, Cell]] = {e.explanation_id: {} for e, _s in rows}
    sims, scores = {}, {}
    for e, simulations in rows:
        for s in simulations:
            key = ("simulation", s.simulator, s.scoring_set, _params(s.params))
            sims.setdefault((s.simulator, s.scoring_set), {})[key] = s.params
            cells[e.explanation_id].setdefault(key, Cell(s.score, s.lo, s.hi, s.error))
        for v in verdicts.get(e.explanation_id, []):
            key = ("scorer", v.scorer, _params(v.params))
            scores.setdefault(v.scorer, {})[key] = (v.params, v.metric)
            cells[e.explanation_id].setdefault(key, Cell(v.score, v.lo, v.hi, v.error))  # the newest first
    columns = []
    for (simulator, scoring_set), variants in sorted(sims.items()):
        for key, params in sorted(variants.items()):
            who = f" · {_who(params)}" if len(variants) > 1 else ""
            columns.append(Column(key, f"{simulator} · {scoring_set}{who}", "correlation", 0.0))
    for scorer in sorted(scores, key=lambda x: (SCORERS.index(x) if x in SCORERS else len(SCORERS), x)):
        variants = scores[scorer]
        for key, (params, metric) in sorted(variants.items()):
            who = f" · {_who(params)}" if len(variants) > 1 else ""
            metric = metric or HEADLINE.get(scorer, "")
            columns.append(Column(key, f"{scorer}{who}", metric, CHANCE.get(metric, 0.5)))
    return columns, cells


def bests(eids: list[str], columns: list[Column], cells: dict) -> dict[Column, str]:
    """Each column's best explanation of ``eids`` (its highest score), for the columns that scored at least two of
    them and have one best (a tie at the top picks none: as cache/scores.py counts)."""
    out = {}
    for c in columns:
        scored = [(cells[e][c.key].score, e) for e in eids if c.key in cells[e] and cells[e][c.key].score is not None]
        top = max((v for v, _e in scored), default=None)
        winners = [e for v, e in scored if v == top]
        if len(scored) >= 2 and len(winners) == 1:
            out[c] = winners[0]
    return out


def disagreement(eids: list[str], columns: list[Column], cells: dict) -> dict[Column, str] | None:
    """The columns' best explanations when two or more columns that each scored two or more of ``eids`` (and have
    one best) pick different ones, else None."""
    b = bests(eids, columns, cells)
    return b if len(b) >= 2 and len(set(b.values())) > 1 else None


def _cell(c: Cell | None, best: bool) -> str:
    if c is None:
        return '<td class="num none">—</td>'
    if c.score is None:
        why = html.escape(c.error or "no score", quote=True)
        return f'<td class="num"><span class="err" title="{why}">failed</span></td>'
    v = f"{c.score:.2f}"
    v = f"<b>{v}</b>" if best else v
    ci = (f' <span class="ci">[{c.lo:.2f}, {c.hi:.2f}]</span>' if c.lo is not None and c.hi is not None else
          ' <span class="noci" title="scored before intervals were kept">no interval</span>')
    return f'<td class="num">{v}{ci}</td>'


def _header(c: Column) -> str:
    metric = METRIC_LABEL.get(c.metric, c.metric.replace("_", " "))
    if c.key[0] == "simulation":
        tip = "correlation of the simulated activations with the real ones on these records (chance 0)"
        sub = f"simulation r · chance {c.chance:g}"
    else:
        tip = f"{c.key[1]} scorer: {c.metric.replace('_', ' ')} (chance {c.chance:g})"
        sub = f"{metric} · chance {c.chance:g}"
    return (f'<th title="{html.escape(tip, quote=True)}">{html.escape(c.label)}'
            f'<span class="sub">{html.escape(sub)}</span></th>')


def _label(explainer: str) -> str:
    from viewer.components.explanations import TINY

    return f"{explainer} (tiny offline)" if explainer == TINY["explainer"] else explainer


def score_table_html(rows: list, verdicts: dict, baselines: list = ()) -> str:
    """Every explanation of ``rows`` with every score (see the module doc), grouped by side, as one HTML block."""
    columns, cells = grid(rows, verdicts)
    shown = [e for name, _t in GROUPS for e, _s in rows if side(e.explainer) == name]
    number = {e.explanation_id: i + 1 for i, e in enumerate(shown)}
    text = {e.explanation_id: e.text for e, _s in rows}
    base = {b.scoring_set: b for b in baselines if b.error is None and b.score is not None}
    out = [STYLE, '<div class="scoretab">']
    for name, title in GROUPS:
        group = [e for e, _s in rows if side(e.explainer) == name]
        if not group:
            continue
        eids = [e.explanation_id for e in group]
        cols = [c for c in columns if any(c.key in cells[i] for i in eids)]
        best = bests(eids, cols, cells)
        out.append(f"<h4>{html.escape(title)}</h4>")
        out.append('<div class="wrap"><table><tr><th>#</th><th>explanation</th>' + "".join(_header(c) for c in cols)
                   + "</tr>")
        for e in group:
            flag = f'<span class="flag"> flagged: {html.escape(e.degenerate)}</span>' if e.degenerate else ""
            out.append(f"<tr><td>{number[e.explanation_id]}</td><td>{html.escape(e.text)}{flag}"
                       f'<span class="sub">{html.escape(_label(e.explainer))}</span></td>'
                       + "".join(_cell(cells[e.explanation_id].get(c.key), best.get(c) == e.explanation_id)
                                 for c in cols) + "</tr>")
        if name == "input" and base:
            row, shown = [], set()
            for c in cols:
                b = base.get(c.key[2]) if c.key[0] == "simulation" and c.key[1] != "n2g" else None
                row.append(_cell(Cell(b.score, b.lo, b.hi), False) if b else "<td></td>")
                shown |= {c.key[2]} if b else set()
            rest = ", ".join(f"r on {k}: {fmt_ci(b.score, b.lo, b.hi)}" for k, b in sorted(base.items())
                             if k not in shown)
            out.append('<tr class="base"><td></td><td title="token-lookup predicts each token\'s mean activation and '
                       'ignores any explanation: the score an explanation has to beat">token-lookup baseline'
                       f'<span class="sub">no explanation{html.escape(f" · {rest}" if rest else "")}</span></td>'
                       + "".join(row) + "</tr>")
        out.append("</table></div>")
        if not cols:
            out.append('<div class="sub none">not scored yet</div>')
        if (d := disagreement(eids, cols, cells)) is not None:
            said = "; ".join(f"{html.escape(c.label)} ({html.escape(METRIC_LABEL.get(c.metric, c.metric))}): "
                             f"#{number[e]} <i>{html.escape(text[e][:60])}</i>" for c, e in d.items())
            out.append(f'<div class="disagree">⚠ the scorers disagree about the best explanation: {said}</div>')
    out.append("</div>")
    return "".join(out)
