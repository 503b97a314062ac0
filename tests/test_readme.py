"""The README's examples run as written: the ```python blocks of its "Adding a cell" and "Flax"
sections."""

from __future__ import annotations

import re
from pathlib import Path

import jax

README = Path(__file__).resolve().parents[1] / "README.md"


def _section(title: str) -> str:
    """The text under heading ``title`` (any level) up to the next heading of any level."""
    text = README.read_text(encoding="utf-8")
    start = re.search(rf"^#+ {re.escape(title)}\n", text, flags=re.M).end()
    end = re.search(r"^#+ ", text[start:], flags=re.M)
    return text[start : start + end.start() if end else None]


def test_adding_a_cell_examples_run_and_print_the_shapes_they_claim(capsys):
    blocks = re.findall(r"```python\n(.*?)```", _section("Adding a cell"), flags=re.S)
    assert len(blocks) == 2
    namespace: dict = {}
    with jax.numpy_rank_promotion("allow"):  # as a user runs it, without the suite's strict mode
        for block in blocks:
            exec(compile(block, str(README), "exec"), namespace)
    printed = capsys.readouterr().out.splitlines()
    claimed = [re.search(r"# (\(.*\))$", line).group(1)
               for block in blocks for line in block.splitlines() if "print(" in line]  # fmt: skip
    assert printed == claimed


def test_flax_example_runs(capsys):
    (block,) = re.findall(r"```python\n(.*?)```", _section("Flax"), flags=re.S)
    with jax.numpy_rank_promotion("allow"):
        exec(compile(block, str(README), "exec"), {})
    loss = float(capsys.readouterr().out.split(":")[1])
    assert loss < 1.2  # from log 5 = 1.61
