"""Sphinx configuration of jrnn's documentation site.

Build: ``python -m sphinx -W --keep-going -n docs build/docs`` (the ``docs`` extra; see README),
strict, as ``tests/test_docs.py`` builds it. The API reference comes from the docstrings
(autodoc, Google style through napoleon); the notebooks (``docs/notebooks`` links to
``notebooks/``) are rendered by myst-nb as they are stored, without running them:
``-D nb_execution_mode=auto`` runs the ones stored without outputs, to render their plots.
"""

import importlib

project = "jrnn"
author = "jrnn authors"
copyright = "jrnn authors"

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
]

exclude_patterns = ["notebooks/README.md", "**/.ipynb_checkpoints"]

# Markdown pages and notebooks: $...$ math, and anchors for the headings that links point at.
myst_enable_extensions = ["dollarmath"]
myst_heading_anchors = 3
nb_execution_mode = "off"
nb_execution_timeout = 600
nb_execution_raise_on_error = True

# Each object is documented once, in the module that defines it; a package's re-exports are links
# to there (``jrnn.LSTM`` to ``jrnn.nn.LSTM``: see _resolve_reexport).
autodoc_default_options = {"members": True, "undoc-members": True, "ignore-module-all": True}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True  # NamedTuple fields: autodoc lists them already

# A strict build (-n) resolves every cross-reference; jrnn's own must resolve, while the types of
# the libraries it builds on have no pages here (no inventories are fetched: the build runs
# offline).
nitpick_ignore_regex = [
    (r"py:.*", r"(jax|jaxlib|jnp|np|numpy|optax|orbax|flax|nnx|torch|typer|rich)(\..*)?"),
    (r"py:.*", r"(typing|collections|types|pathlib|os|io|enum|dataclasses|functools)\..*"),
    (r"py:class", r"<typer\.models\..*>"),  # typer's option defaults, shown in CLI signatures
]
# References that the docstrings are yet to fix: module constants and a type alias (documented
# once a `#:` comment above the assignment describes them), private functions (no page: write
# them as ``literals``), and three first lines that napoleon reads as "type: description".
# Remove an entry with its fix.
nitpick_ignore = [
    *[("py:data", name) for name in ("RNN_TANH", "RNN_RELU", "LSTM", "GRU", "MIN_GRU", "MIN_LSTM")],
    ("py:data", "METHODS"),
    ("py:func", "_scan_ahead"),
    ("py:func", "_meta_digest"),
    ("py:data", "TUNABLES"),
    ("py:class", "PathType"),
    ("py:data", "TASKS"),
    ("py:data", "jrnn.training.tasks.TASKS"),
    ("py:data", "CELLS"),
    ("py:data", "Batch"),
    ("py:data", "jrnn.training.batches.Batch"),
    ("py:data", "BUCKET_QUANTILES"),
    ("py:data", "ENVIRONMENT"),
    ("py:data", "LAUNCHERS"),
    ("py:class", "The metrics written"),
    ("py:class", "The weights as the spec's params"),
    ("py:class", "Flax's protocol"),
]

html_theme = "sphinx_book_theme"
html_title = "jrnn"
html_theme_options = {"show_toc_level": 2}


def _resolve_reexport(app, env, node, contnode):
    """Resolves a reference to a name that a module re-exports or imports (``jrnn.LSTM.apply``,
    or ``Stats`` in a module that imports it) as one to the name of the module that defines
    the object, where it is documented (``jrnn.nn.LSTM.apply``)."""
    if node.get("refdomain") != "py":
        return None
    target = node["reftarget"]
    for name in (target, f"{node.get('py:module')}.{target}"):
        canonical = _canonical(name)
        if canonical and canonical != name:
            domain = env.get_domain("py")
            return domain.resolve_xref(
                env, node["refdoc"], app.builder, node["reftype"], canonical, node, contnode
            )
    return None


def _canonical(name):
    """``module.attribute.rest`` with the attribute's own module and name in its place, or None
    where ``module.attribute`` is not a class or function of an importable module."""
    parts = name.split(".")
    for i in range(len(parts) - 1, 0, -1):
        try:
            module = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        obj = getattr(module, parts[i], None)
        if not hasattr(obj, "__module__") or not hasattr(obj, "__qualname__"):
            return None
        return ".".join([obj.__module__, obj.__qualname__, *parts[i + 1 :]])
    return None


def setup(app):
    app.connect("missing-reference", _resolve_reexport)
