"""Benchmarks report messages (or operations) per second; the table at the end sets the cores side by side."""

import os

import pytest

from fastconsumer import _pycore, core

IMPLS = {"python": _pycore}
if os.environ.get("FASTCONSUMER_NO_EXTENSIONS") != "1":
    from fastconsumer import _core

    IMPLS["cython"] = _core

QUICK = os.environ.get("CI") == "true" or os.environ.get("FASTCONSUMER_BENCH_QUICK") == "1"
RATES: dict = {}


@pytest.fixture(params=sorted(IMPLS))
def impl(request, monkeypatch):
    monkeypatch.setattr(core, "impl", IMPLS[request.param])
    return IMPLS[request.param]


def record(benchmark, name, impl_name, items):
    """Per-second rate from the benchmark's best round, kept for the table and in the JSON output."""
    rate = items / benchmark.stats.stats.min
    benchmark.extra_info["per_second"] = round(rate)
    RATES.setdefault(name, {})[impl_name] = rate


def pytest_terminal_summary(terminalreporter):
    if not RATES:
        return
    tr = terminalreporter
    tr.section("fastconsumer rates (best round)")
    tr.write_line(f"{'benchmark':<34}{'python /s':>14}{'cython /s':>14}{'cython/python':>15}")
    for name, rates in RATES.items():
        py, cy = rates.get("python"), rates.get("cython")
        ratio = f"{cy / py:.1f}x" if py and cy else "-"
        tr.write_line(f"{name:<34}{py or 0:>14,.0f}{cy or 0:>14,.0f}{ratio:>15}")
