"""busy_core.py in its shortest run, so that it never rots."""

import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).with_name("busy_core.py")


def test_shortest_run_prints_every_way_alone_and_beside_a_busy_core():
    done = subprocess.run([sys.executable, str(SCRIPT), "--rounds", "1", "--short"], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line for line in done.stdout.splitlines() if re.search(r"threads?.*, (alone|one core busy) ", line)]
    assert len(rows) == 6, done.stdout
    for row in rows:
        assert len(re.findall(r"[\d.]+ \([\d.]+-[\d.]+\)", row)) == 3, row
