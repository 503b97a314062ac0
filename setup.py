"""Builds jrnn's compiled recurrence (``jrnn/csrc/``) against jaxlib's XLA FFI headers.

The extension is optional: without a C++ compiler (GCC) the install still succeeds and jrnn runs
every layer on its pure-JAX path (``jrnn.methods.compiled.available()`` is then False). It is
built for a baseline CPU of its architecture, so a wheel runs on any machine of it: x86-64-v2
(SSE4.2) on x86-64, where the loops over time are compiled again for AVX2 and AVX-512 and the
widest one that the CPU has is taken when the library loads; the compiler's default on other
architectures (NEON on aarch64). ``JRNN_ISA`` forces a narrower set (see
``jrnn.methods.compiled``).
"""

import importlib.util
import os
import platform

from setuptools import Extension, setup

jaxlib = importlib.util.find_spec("jaxlib")
include = os.path.join(jaxlib.submodule_search_locations[0], "include") if jaxlib else ""
baseline = ["-march=x86-64-v2"] if platform.machine() == "x86_64" else []

setup(
    ext_modules=[
        Extension(
            "jrnn._recurrence",
            sources=["jrnn/csrc/recurrence.cc"],
            depends=["jrnn/csrc/common.h", "jrnn/csrc/loops.h"],
            include_dirs=[include],
            # -Wno-psabi: the 64-byte vectors stay inside the library, whose ABI they would change
            extra_compile_args=["-std=c++17", "-O3", *baseline, "-Wno-psabi"],
            language="c++",
            optional=True,
        )
    ]
)
