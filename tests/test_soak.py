"""The chaos soak (``bench/soak.py``), short: 30 s of joins, graceful leaves, SIGKILLs and a broker restart
under a steady produce, on a broker of its own (it restarts it). The invariants must hold; the duplicates
are printed with their causes and only bounded generously (at-least-once: a kill re-delivers what was in
flight and what was handled since the last commit)."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.kafka
ROOT = Path(__file__).resolve().parents[1]


def test_a_short_soak_keeps_the_invariants(tmp_path):
    seed = random.randrange(1 << 30)
    cmd = [sys.executable, "-m", "bench.soak", "--seconds", "30", "--members", "3", "--seed", str(seed)]
    proc = subprocess.run(
        [*cmd, "--json", "--workdir", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=280
    )
    assert proc.stdout, proc.stderr[-5000:]
    summary = json.loads(proc.stdout)
    sys.path.insert(0, str(ROOT))
    from bench.soak import table

    print(f"\n{' '.join(cmd[1:])}\n{table(summary)}")
    if not summary["ok"]:  # what a CI run's output must hold to find the cause: the workdir is gone then
        print("events:", *summary["events"], sep="\n  ")
        for log in sorted(tmp_path.glob("m*.log")):
            lines = log.read_text().splitlines()
            said = [line for line in lines if "Connect to" not in line and " 0/s " not in line]
            print(f"-- {log.name}: its end, without reconnects and idle progress", *said[-15:], sep="\n")
    assert summary["broker_restarts"] == 1 and summary["kills"] >= 1 and summary["leaves"] >= 1
    assert summary["produce_failures"] == 0
    assert summary["lost"] == 0, summary["lost_examples"]
    assert summary["order_violations"] == 0, summary["order_examples"]
    assert summary["caught_up"] and summary["committed_equals_end"], (summary["committed"], summary["ends"])
    assert not summary["bad_exits"], summary["bad_exits"]
    assert summary["ok"] and proc.returncode == 0
    assert summary["duplicates"] <= summary["messages"] // 4, summary["duplicates_by_cause"]
