"""Builds the ``fastconsumer._core_c`` extension from its ``.pyx`` on ``pip install .``.

``fastconsumer/_core_py.py`` is its pure-Python twin: with ``FASTCONSUMER_NO_EXTENSIONS=1`` nothing is
compiled and the twin runs.
"""

import os

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class BuildExt(build_ext):
    """Also drops the compiled core next to its sources.

    ``python -m fastconsumer`` run from a checkout imports the package from the checkout, not from
    site-packages; without its own copy of the extension it would quietly fall back to the pure-Python core.
    """

    def run(self) -> None:
        super().run()
        if not self.inplace:
            self.copy_extensions_to_source()


def extensions():
    if os.environ.get("FASTCONSUMER_NO_EXTENSIONS") == "1":
        return []
    from Cython.Build import cythonize

    return cythonize(
        [Extension("fastconsumer._core_c", ["fastconsumer/_core_c.pyx"])],
        build_dir="build",  # the generated C stays out of the package folder
        language_level=3,
        compiler_directives={"boundscheck": False, "wraparound": False, "cdivision": True},
    )


setup(ext_modules=extensions(), cmdclass={"build_ext": BuildExt})
