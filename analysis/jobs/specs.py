"""Layer and unit specs as the CLI and the pages take them ('all', '0-3,7', '3,5,8'), parsed and checked."""

from __future__ import annotations

from analysis.types import UserError


def parse_layers(spec: str, n_layers: int) -> list[int]:
    """'all', '5', '0,5,10' or '0-3,7' -> sorted layer list, checked against the model."""
    return _parse_spec(spec, n_layers, "--layers", "use 'all', a list like 0,5,10 or a range like 0-3",
                       f"the model has layers 0..{n_layers - 1}", allow_all=True)


def parse_units(spec: str, n: int, what: str = "neurons", allow_all: bool = False) -> list[int]:
    """'0-99', '3,5,8', '7' (or 'all' where allowed) -> sorted unit indices in 0..n-1."""
    return _parse_spec(spec, n, "--neurons", "use a list like 3,5,8 or a range like 0-99",
                       f"{what} go from 0 to {n - 1}", allow_all)


def _parse_spec(spec: str, n: int, flag: str, usage: str, bounds: str, allow_all: bool) -> list[int]:
    if allow_all and spec.strip().lower() == "all":
        return list(range(n))
    out: set[int] = set()
    try:
        for part in spec.split(","):
            part = part.strip()
            if "-" in part:
                a, b = part.split("-")
                out.update(range(int(a), int(b) + 1))
            elif part:
                out.add(int(part))
    except ValueError:
        raise UserError(f"{flag} {spec!r}: {usage}") from None
    if not out or any(not 0 <= i < n for i in out):
        raise UserError(f"{flag} {spec!r}: {bounds}")
    return sorted(out)


def fmt_layers(layers: list[int]) -> str:
    """Sorted layers as a spec: runs of three or more as a range (``[0, 1, 2, 5]`` -> ``'0-2,5'``)."""
    runs: list[list[int]] = []
    for x in layers:
        if runs and x == runs[-1][-1] + 1:
            runs[-1].append(x)
        else:
            runs.append([x])
    return ",".join(f"{r[0]}-{r[-1]}" if len(r) > 2 else ",".join(map(str, r)) for r in runs)
