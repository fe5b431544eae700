"""Builds the ``fastconsumer._core_c`` extension from its ``.pyx``; everything else is in ``pyproject.toml``.

``fastconsumer/_core_py.py`` is its pure-Python twin: with ``FASTCONSUMER_NO_EXTENSIONS=1`` nothing is
compiled and the wheel is pure Python (``py3-none-any``, the fallback for platforms without a binary wheel).

From a checkout, ``pip install -e .`` builds the extension next to its sources, so ``python -m fastconsumer``
run there uses the compiled core; ``pip install .`` puts it in site-packages only.
"""

import os

from setuptools import Extension, setup


def extensions():
    if os.environ.get("FASTCONSUMER_NO_EXTENSIONS") == "1":
        return []
    from Cython.Build import cythonize

    return cythonize(
        [Extension("fastconsumer._core_c", ["fastconsumer/_core_c.pyx"])],
        build_dir="build",  # the generated C stays out of the package folder (and out of the sdist)
        language_level=3,
        compiler_directives={"boundscheck": False, "wraparound": False, "cdivision": True},
    )


setup(ext_modules=extensions())
