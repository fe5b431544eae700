"""Every test that takes ``impl`` runs once per core: the compiled one and its pure-Python twin."""

import os

import pytest

from fastconsumer import _pycore, core

IMPLS = {"python": _pycore}
if os.environ.get("FASTCONSUMER_NO_EXTENSIONS") != "1":
    # Not a skip: a checkout whose extension did not build must fail here, not quietly test the twin twice.
    from fastconsumer import _core

    IMPLS["cython"] = _core


@pytest.fixture(params=sorted(IMPLS))
def impl(request, monkeypatch):
    """The core module under test; consumers created in the test use it."""
    monkeypatch.setattr(core, "impl", IMPLS[request.param])
    return IMPLS[request.param]
