"""The README's python blocks run as written, in order, in one namespace."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_readme_python_blocks_run(capsys):
    blocks = python_blocks(README.read_text())
    assert len(blocks) >= 4
    namespace: dict = {}
    with warnings.catch_warnings():
        # the 12-structure smoke fit may well be worse than trivial: that is what it reports
        from tradens.models import FitWarning

        warnings.simplefilter("ignore", FitWarning)
        for block in blocks:
            exec(compile(block, str(README), "exec"), namespace)
    assert len(namespace["frames"]) == 12 and len(namespace["species"]) == 19
    assert namespace["features"].values.shape[1] == 16 * 7
    out = capsys.readouterr().out
    assert "5-fold" not in out and "3-fold CV" in out and "trivial" in out
