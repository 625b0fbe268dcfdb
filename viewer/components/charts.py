"""The activation histogram as a static SVG: drawn the same on the page and in exported pages (no script); the
numbers shown above it."""

from __future__ import annotations

import math

from analysis.types import UnitStats


def short_number(x: float, width: int = 7) -> str:
    """``x`` in at most ``width`` characters where it can be (3 significant digits, fewer if they do not fit, then
    a compact exponent): a statistic's column on the unit page holds about 7 (-0.00123 -> -0.0012, -1.2e-4)."""
    for text in (f"{x:.3g}", f"{x:.2g}"):
        if len(text) <= width:
            return text
    mantissa, exponent = f"{x:.1e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def _bars(stats: UnitStats) -> list[tuple[float, float, int]]:
    """(low edge, high edge, tokens) of the non-empty finite bins of the harvest's log-scale grid."""
    out = []
    for (a, b), c in zip(stats.hist_edges, stats.hist_counts):
        lo, hi = (a, b) if a <= b else (b, a)
        if c and abs(hi) != float("inf") and abs(lo) != float("inf"):
            out.append((lo, hi, c))
    return out


def _ticks(lo: float, hi: float, n: int = 6) -> list[float]:
    """About ``n`` round values in [lo, hi]."""
    raw = (hi - lo) / max(n, 1)
    step = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1.0
    step *= next(m for m in (1, 2, 5, 10) if step * m >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def histogram_html(stats: UnitStats, log_y: bool = True, height: int = 190) -> str:
    """Bars on the harvest's log-scale bins (4 per octave) at their true widths on a linear activation axis;
    token counts on a log (or linear) axis; hovering a bar shows its bin and count. Plain HTML and CSS (no SVG,
    which st.html's sanitiser drops; no script), so it draws the same on the page and in exported files."""
    bars = _bars(stats)
    if not bars:
        return "<p>no tokens</p>"
    x0, x1 = min(lo for lo, _h, _c in bars), max(hi for _l, hi, _c in bars)
    peak = max(c for *_e, c in bars)
    f = (lambda c: math.log10(c)) if log_y else float
    y_top = math.log10(peak) * 1.05 if log_y else peak * 1.05
    X = lambda v: 100 * (v - x0) / max(x1 - x0, 1e-12)
    Y = lambda c: 100 * max(f(c), 0) / max(y_top, 1e-12)
    parts = []
    yticks = [10 ** k for k in range(0, int(math.log10(peak)) + 1)] if log_y else _ticks(0, peak, 4)
    for t in yticks:
        parts.append(f'<div class="yt" style="bottom:{Y(t) if t > 0 else 0:.2f}%"><span>{t:,.0f}</span></div>')
    for lo, hi, c in bars:
        h = Y(c) if not log_y or c > 1 else 0.8
        parts.append(f'<div class="bar" title="[{lo:.4g}, {hi:.4g}): {c:,} tokens" style="left:{X(lo):.3f}%;'
                     f'width:max({X(hi) - X(lo):.3f}%, 1px);height:{h:.2f}%"></div>')
    xt = "".join(f'<span style="left:{X(t):.2f}%">{t:g}</span>' for t in _ticks(x0, x1))
    return f"""<style>.hist{{font-family:sans-serif;font-size:11px;color:#444;margin:4px 0 12px 0}}
.hist .plot{{position:relative;height:{height}px;margin-left:58px;border-bottom:1px solid #555}}
.hist .bar{{position:absolute;bottom:0;background:#ff7a00}} .hist .bar:hover{{background:#b03000}}
.hist .yt{{position:absolute;left:0;right:0;border-top:1px solid #eee}}
.hist .yt span{{position:absolute;right:100%;margin-right:6px;transform:translateY(-50%)}}
.hist .xt{{position:relative;height:16px;margin-left:58px}} .hist .xt span{{position:absolute;transform:translateX(-50%)}}
.hist .lab{{text-align:center;color:#666}}</style>
<div class="hist"><div class="plot">{"".join(parts)}</div><div class="xt">{xt}</div>
<div class="lab">activation · tokens per bin{" (log scale)" if log_y else ""} · hover a bar for its count</div></div>"""
