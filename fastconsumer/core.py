"""Picks the compiled core, or its pure-Python twin when the extension is absent or not wanted.

``fastconsumer._core_c`` (Cython, ``_core_c.pyx``) and ``fastconsumer._core_py`` behave the same; the twin
runs where the extension was not built, or when ``FASTCONSUMER_NO_EXTENSIONS=1`` asks for it. Type checkers
are pointed at the twin, so ``impl.Scheduler`` and the rest have their real types (``_core_c.pyi`` mirrors
them).
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import TYPE_CHECKING

from fastconsumer import _core_py

__all__ = ["IMPLS", "NO_EXTENSIONS", "core_impl", "impl"]

NO_EXTENSIONS = os.environ.get("FASTCONSUMER_NO_EXTENSIONS") == "1"

#: The cores that can run here, by the name ``core_impl()`` gives them.
IMPLS: dict[str, ModuleType] = {"python": _core_py}
if not NO_EXTENSIONS:
    try:
        from fastconsumer import _core_c
    except ImportError:  # not built: the twin behaves the same, only slower
        pass
    else:
        IMPLS["cython"] = _core_c

if TYPE_CHECKING:
    from fastconsumer import _core_py as impl
else:
    #: The core in use (tests replace it to run a consumer on either).
    impl = IMPLS.get("cython", _core_py)


def core_impl() -> str:
    """``"cython"`` or ``"python"``: which core the consumers created from now on use."""
    return "cython" if impl.__name__ == "fastconsumer._core_c" else "python"
