"""Progress of long jobs: bars with tqdm's interface, shown by whoever runs the job."""

from __future__ import annotations

import sys


class Progress:
    """How a job shows progress: bars with tqdm's interface (``update(n)``, ``close()``). The CLI's writes tqdm
    bars to stderr; the viewer passes its own."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled

    def bar(self, total: int, desc: str, unit: str = "it", initial: int = 0, **kwargs):
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit=unit, initial=initial, disable=not self.enabled, **kwargs)

    def note(self, text: str) -> None:
        """A one-line message about the job (warnings, what was skipped)."""
        print(text, file=sys.stderr)


def fmt_seconds(s: float) -> str:
    return f"{s / 3600:.1f} h" if s >= 5400 else f"{s / 60:.0f} min" if s >= 90 else f"{s:.0f} s"


def fmt_bytes(b: float) -> str:
    """Decimal units (1 GB = 10^9 bytes), as ``--max-memory`` reads them."""
    return (f"{b / 1e12:.1f} TB" if b >= 1e12 else f"{b / 1e9:.1f} GB" if b >= 1e9 else f"{b / 1e6:.0f} MB"
            if b >= 1e6 else f"{b / 1e3:.0f} kB")
