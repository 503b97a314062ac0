"""Builds jrnn's compiled recurrence (``jrnn/csrc/``) against jaxlib's XLA FFI headers.

The extension is optional: without a C++ compiler the install still succeeds and jrnn runs every
layer on its pure-JAX path (``jrnn.kernel.available()`` is then False). It is compiled for the
machine that builds it (``-march=native``).
"""

import importlib.util
import os

from setuptools import Extension, setup

jaxlib = importlib.util.find_spec("jaxlib")
include = os.path.join(jaxlib.submodule_search_locations[0], "include") if jaxlib else ""

setup(
    ext_modules=[
        Extension(
            "jrnn._recurrence",
            sources=["jrnn/csrc/recurrence.cc"],
            depends=["jrnn/csrc/common.h"],
            include_dirs=[include],
            extra_compile_args=["-std=c++17", "-O3", "-march=native"],
            language="c++",
            optional=True,
        )
    ]
)
