"""The README's code examples run as written."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _example(name: str) -> str:
    match = re.search(rf"<!-- example: {name} .*?-->\n```python\n(.*?)```", README.read_text(), re.DOTALL)
    assert match is not None, f"README has no example block {name!r}"
    return match.group(1)


def test_the_interventions_example_runs_and_every_intervention_fires(tmp_path, capsys):
    script = tmp_path / "example.py"
    script.write_text(_example("interventions"))
    runpy.run_path(str(script), run_name="__main__")
    lines = capsys.readouterr().out.splitlines()
    fired = " ".join(lines)
    for name in ("hare_tortoise", "reset", "shrink_perturb"):
        assert f"interventions/{name}" in fired, name
    assert lines[-1].startswith("1000 ")
