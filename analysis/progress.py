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
