"""The README's library example runs as written (on random data)."""

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_library_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks, "README has no python example"
    x = torch.randn(16, 1, 28, 28)
    y = torch.randint(0, 10, (16,))
    scope = {"loader": [(x, y)] * 3}
    exec(blocks[0], scope)
    assert set(scope["angles"]) == set(scope["rule"].tap_names)
    assert scope["loss"].isfinite()


def test_ci_runs_the_readme_test_command():
    commands = re.findall(r"^python3 -m venv .*pytest.*$", README.read_text(), re.M)
    assert len(commands) == 1
    ci = (README.parent / ".ci" / "run").read_text().splitlines()
    assert commands[0] in ci
