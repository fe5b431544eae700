"""Picks the compiled core, or its pure-Python twin when the extension is absent or not wanted."""

from __future__ import annotations

import os
from types import ModuleType

impl: ModuleType
if os.environ.get("FASTCONSUMER_NO_EXTENSIONS") == "1":
    from fastconsumer import _pycore as impl
else:
    try:
        from fastconsumer import _core as impl
    except ImportError:  # not built: the twin behaves the same, only slower
        from fastconsumer import _pycore as impl


def core_impl() -> str:
    """``"cython"`` or ``"python"``: which core the consumers created from now on use."""
    return "cython" if impl.__name__ == "fastconsumer._core" else "python"
