"""The documentation site (docs/): a strict Sphinx build, as the README builds it.

Strict: any warning fails the build (``-W``), and so does a cross-reference that resolves to
nothing (``-n``). The reference must also hold every public class and function of every module
it documents, which autodoc can skip without a warning (a ``jax.custom_vjp`` is no function).
"""

from __future__ import annotations

import importlib
import pathlib
import pkgutil
import re
import subprocess
import sys

import pytest

import jrnn

DOCS = pathlib.Path(__file__).parents[1] / "docs"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    strict = ["-W", "--keep-going", "-n", "-q"]
    command = [sys.executable, "-m", "sphinx", *strict, str(DOCS), str(out)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-6000:]
    return out


@pytest.mark.slow
def test_the_index_leads_to_the_api_reference_and_the_notebooks(site):
    index = (site / "index.html").read_text()
    for page in ("getting-started", "api/index", "api/nn", "notebooks/01_the_chapter_in_code"):
        assert f'href="{page}.html"' in index
    notebook = (site / "notebooks/01_the_chapter_in_code.html").read_text()
    assert "cell_input" in notebook  # rendered by myst-nb, code cells and all


def _documented_modules():
    pages = DOCS.glob("api/*.rst")
    return [m for page in pages for m in re.findall(r"automodule:: (\S+)", page.read_text())]


def test_the_reference_has_a_section_for_every_public_module():
    modules = {
        m.name
        for m in pkgutil.walk_packages(jrnn.__path__, "jrnn.")
        if not any(part.startswith("_") for part in m.name.split("."))
    }
    assert modules | {"jrnn"} == set(_documented_modules())


@pytest.mark.slow
def test_the_reference_documents_every_public_class_and_function(site):
    pages = "".join(page.read_text() for page in site.glob("api/*.html"))
    documented = set(re.findall(r'<dt class="sig sig-object py" id="([^"]+)"', pages))
    missing = [
        f"{module}.{name}"
        for module in _documented_modules()
        for name, obj in vars(importlib.import_module(module)).items()
        if not name.startswith("_")
        and callable(obj)
        and getattr(obj, "__module__", None) == module
        and f"{module}.{name}" not in documented
    ]
    assert not missing
    assert "jrnn.nn.LSTM.apply" in documented  # inherited from a private base
    top = re.findall(r">jrnn\.(\w+)(?:\(\))?</span>", (site / "api/jrnn.html").read_text())
    assert set(jrnn.__all__) <= set(top) | {name.removeprefix("jrnn.") for name in documented}
