"""What `make setup` runs to move an old checkout's data (`python -m analysis.config`), in a process of its own."""

import os
import subprocess
import sys

from tests.helpers import old_checkout


def test_make_setup_step_moves_the_old_layout(tmp_path):
    """What `make setup` runs (`python -m analysis.config`), in a process of its own."""
    old = old_checkout(tmp_path)
    env = {**os.environ, "NEURON_VIEWER_HOME": str(tmp_path / "data")}
    out = subprocess.run([sys.executable, "-m", "analysis.config", str(old)], env=env, capture_output=True,
                         text=True, check=True)
    assert "moved demo.duckdb" in out.stdout
    assert (tmp_path / "data" / "demo.duckdb").read_bytes() == b"db"
