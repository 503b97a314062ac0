"""Every notebook runs top to bottom; the data notebooks also run without the shared data."""

from __future__ import annotations

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
PATHS = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
# Notebooks that read ../shared/data (or JRNN_DATA_DIR) and fall back to built-in data without it;
# the character model's fallback (Python's own docs) costs as much as its real run, so it is left
# to the run without data.
FALLBACKS = [p for p in PATHS if p.name.startswith(("03_", "05_"))]
CELL_TIMEOUT = 300  # seconds


def execute(path: Path):
    """Run a notebook in a fresh ``python3`` kernel of this interpreter, from ``notebooks/``."""
    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    )
    return client.execute()


def test_all_notebooks_are_found_and_stored_without_outputs():
    assert [p.name[:3] for p in PATHS] == ["01_", "02_", "03_", "04_", "05_", "06_", "07_", "08_"]
    for path in PATHS:
        notebook = nbformat.read(path, as_version=4)
        nbformat.validate(notebook)
        code = [cell for cell in notebook.cells if cell.cell_type == "code"]
        assert all(not cell.outputs and cell.execution_count is None for cell in code), path.name


@pytest.mark.slow
@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.stem)
def test_notebook_runs(path):
    execute(path)


@pytest.mark.slow
@pytest.mark.parametrize("path", FALLBACKS, ids=lambda p: p.stem)
def test_notebook_runs_without_shared_data(path, tmp_path, monkeypatch):
    monkeypatch.setenv("JRNN_DATA_DIR", str(tmp_path / "no-data-here"))
    notebook = execute(path)
    printed = "".join(
        output.get("text", "")
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
    )
    assert "not found under" in printed and "built-in set" in printed
