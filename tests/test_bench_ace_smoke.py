"""The ACE benchmark script runs (tiny size) and reports sane numbers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_ace.py"


def test_bench_ace_quick(tmp_path):
    output = tmp_path / "ace.json"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--output", str(output)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(output.read_text())
    cases = data["cases"]
    assert {c["nu_max"] for c in cases} == {3, 4}
    for case in cases:
        assert case["time_s"] > 0 and case["features_per_atom"] > 0
    # nu <= 4 has more features than nu <= 3 at the same K
    by_nu = {c["nu_max"]: c["features_per_atom"] for c in cases}
    assert by_nu[4] > by_nu[3]
