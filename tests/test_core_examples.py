"""The core examples run and print what they promise."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run(name: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_soap_quickstart():
    out = run("soap_quickstart.py")
    assert "TR-SOAP K = 16:  112 features per atom" in out
    difference = float(out.strip().splitlines()[-1].split("=")[-1])
    assert difference < 1e-12


def test_ace_convergence_example():
    out = run("ace_convergence.py", "--structures", "6")
    rows = [line.split() for line in out.splitlines() if line.strip().split()[0].isdigit()]
    full_rows = [float(r[3]) for r in rows if r[1] == "full"]
    assert full_rows == sorted(full_rows, reverse=True)
