"""Run ``python -m analysis`` with the harvest's writer killed (SIGKILL, by itself) in the middle of a layer's write:
after the ``$KILL_AT_WRITE``-th layer's rows are inserted and before its transaction commits (0: never). For the
fault tests and ``bench/scale.py``: a kill at an exact point inside the write, which a timed signal cannot hit.

    KILL_AT_WRITE=1 python -m bench.kill_in_write harvest --db ... --model ...
"""

from __future__ import annotations

import os
import signal
import sys

from analysis.__main__ import main
from cache.records import RecordRepo

_written = [0]
_real = RecordRepo._write_layer


def _write_then_die(self, cur, *args):
    _real(self, cur, *args)  # the layer's rows are in the open transaction, not committed
    _written[0] += 1
    if _written[0] == int(os.environ.get("KILL_AT_WRITE", "0")):
        os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    RecordRepo._write_layer = _write_then_die
    sys.exit(main(sys.argv[1:]))
