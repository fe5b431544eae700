#!/usr/bin/env python3
"""The benchmarks as a table for the README: ``python bench/report.py out.json [--json F] [--png F]``.

``out.json`` is pytest-benchmark's output (``pytest bench --benchmark-only --benchmark-json=out.json``).
Prints a markdown table (benchmark, msgs/s, ratio to its ceiling, target, met?); ``--json`` saves the rows,
``--png`` a bar chart of the ratios (needs matplotlib; without it the chart is skipped with a message),
``--markdown`` the table. bench/conftest.py prints the same table at the end of a benchmark run.

The targets are printed, never asserted: a benchmark that misses one still passes.
"""

from __future__ import annotations

import argparse
import json
import operator
import sys
from pathlib import Path
from typing import Any

# key: (what is compared, comparison, threshold, how the table says it)
TARGETS: dict[str, tuple[str, str, float, str]] = {
    "fc_key": ("ratio", ">=", 0.60, ">= 60% of ceiling"),
    "fc_batch": ("ratio", ">=", 0.90, ">= 90% of ceiling"),
    "fc_io_64": ("ratio", ">=", 0.97, ">= 97% of I/O ceiling"),
    "fc_io_1024": ("ratio", ">=", 0.80, ">= 80% of I/O ceiling"),
    "engine": ("msgs_per_s", ">=", 2_000_000, ">= 2M msgs/s (cython)"),
    "rss": ("ratio", "<=", 1.20, "peak within 20%"),
    "first_message": ("overhead_s", "<", 1.0, "overhead < 1 s"),
}
OPS = {">=": operator.ge, "<=": operator.le, "<": operator.lt, ">": operator.gt}

# The table's order; rows of other keys follow in the order they ran.
ORDER = [
    "ceiling",
    "ceiling_default_backoff",
    "fc_key",
    "fc_key_cli",
    "fc_partition",
    "fc_unordered",
    "fc_batch",
    "peer_handwritten",
    "peer_aiokafka",
    "peer_aioconsumer",
    "peer_arroyo",
    "peer_pyrallel_key_hash",
    "peer_pyrallel_unordered",
    "io_64",
    "fc_io_64",
    "peer_arroyo_io_64",
    "peer_pyrallel_io_64",
    "io_1024",
    "fc_io_1024",
    "fc_io_1024_cli",
    "first_message",
    "rss",
]
BASIS_NAMES = {"ceiling": "ceiling", "io_64": "I/O ceiling", "io_1024": "I/O ceiling"}


def load(path: str | Path) -> list[dict[str, Any]]:
    """The benchmarks of a pytest-benchmark JSON file: dicts with at least ``name`` and ``extra_info``."""
    with open(path) as fh:
        return json.load(fh)["benchmarks"]


def build_rows(benchmarks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per Kafka/I/O measurement (``extra_info["key"]``), then one per engine or core benchmark
    (``extra_info["bench"]``, its cores side by side). Ratios are recomputed from the basis rows when they
    are present, so a file edited by hand or merged from runs stays consistent."""
    keyed: dict[str, dict[str, Any]] = {}
    cores: dict[str, dict[str, Any]] = {}
    for b in benchmarks:
        info = b.get("extra_info") or {}
        if "sweep" in info:
            continue  # sweep_rows(): a table of its own
        if "key" in info:
            keyed[info["key"]] = info
        elif "bench" in info and "per_second" in info:
            entry = cores.setdefault(info["bench"], {"kind": info.get("kind", "core")})
            entry[info.get("impl", "?")] = info["per_second"]

    rows = []
    for key in sorted(keyed, key=lambda k: ORDER.index(k) if k in ORDER else len(ORDER)):
        rows.append(_keyed_row(key, keyed[key], keyed))
    for name, entry in cores.items():
        rows.append(_core_row(name, entry))
    for row in rows:
        _judge(row)
    return rows


def _keyed_row(key: str, info: dict[str, Any], keyed: dict[str, dict[str, Any]]) -> dict[str, Any]:
    row: dict[str, Any] = {
        "key": key,
        "row": info.get("label", key),
        "msgs_per_s": info.get("msgs_per_s"),
        "msgs_per_s_incl_join": info.get("msgs_per_s_incl_join"),
        "ratio": info.get("ratio"),
        "ratio_incl_join": info.get("ratio_incl_join"),
        "ratio_to": BASIS_NAMES.get(info.get("basis", ""), info.get("basis")),
        "messages": info.get("messages"),
    }
    if "committed_to_end" in info:  # the framework peers (bench/peers.py)
        row.update(
            {k: info.get(k) for k in ("keeps_key_order", "committed_to_end", "read_to_end", "end_messages")},
            committed_messages=info.get("committed_messages"),
        )
    basis = keyed.get(info.get("basis") or "")
    if basis and basis.get("msgs_per_s") and row["msgs_per_s"]:
        row["ratio"] = row["msgs_per_s"] / basis["msgs_per_s"]
        base_incl = basis.get("msgs_per_s_incl_join") or basis["msgs_per_s"]
        if row["msgs_per_s_incl_join"]:
            row["ratio_incl_join"] = row["msgs_per_s_incl_join"] / base_incl
    if key == "first_message":
        row.update(
            overhead_s=info["overhead_s"],
            value=f"first message {info['fastconsumer_s']:.3f} s, bare consumer {info['bare_s']:.3f} s",
            ratio_text=f"{info['overhead_s']:+.3f} s",
        )
    elif key == "rss":
        first, last = info["rss_first"], info["rss_last"]
        row.update(
            ratio=last["vmhwm_kb"] / first["vmhwm_kb"],
            value=(
                f"peak RSS {first['vmhwm_kb'] / 1024:.0f} MB after {_count(first['messages'])}, "
                f"{last['vmhwm_kb'] / 1024:.0f} MB after {_count(last['messages'])}"
            ),
        )
        if first.get("pass_peak_kb") and last.get("pass_peak_kb"):
            row["value"] += (
                f" (peak of the first read {first['pass_peak_kb'] / 1024:.0f} MB, "
                f"of the last {last['pass_peak_kb'] / 1024:.0f} MB)"
            )
        row["ratio_text"] = f"{row['ratio']:.2f}x"
    return row


def _core_row(name: str, entry: dict[str, Any]) -> dict[str, Any]:
    py, cy = entry.get("python"), entry.get("cython")
    return {
        "key": entry["kind"],
        "row": f"{name}, cython core" if cy else f"{name}, python core",
        "msgs_per_s": cy or py,
        "msgs_per_s_incl_join": None,
        "ratio": cy / py if cy and py else None,
        "ratio_to": "python core",
    }


def _judge(row: dict[str, Any]) -> None:
    target = TARGETS.get(row["key"])
    row["target"] = target[3] if target else ""
    row["met"] = None
    if target:
        metric, op, threshold, _ = target
        value = row.get(metric)
        if value is not None:
            row["met"] = bool(OPS[op](value, threshold))


def _count(n: int) -> str:
    if n >= 1_000_000 and n % 100_000 == 0:
        return f"{n / 1_000_000:g}M"
    if n >= 1_000 and n % 1_000 == 0:
        return f"{n // 1_000:g}k"
    return f"{n:,}"


def _ratio_text(row: dict[str, Any]) -> str:
    if row.get("ratio_text"):
        return row["ratio_text"]
    if row["key"] in BASIS_NAMES:
        return f"(the {BASIS_NAMES[row['key']]})"
    ratio = row.get("ratio")
    if ratio is None:
        return "-"
    if row.get("ratio_to") == "python core":
        return f"{ratio:.1f}x python"
    text = f"{ratio:.1%} of {row['ratio_to']}" if ratio < 0.1 else f"{ratio:.0%} of {row['ratio_to']}"
    if row.get("ratio_incl_join") is not None and row.get("ratio_to") == "ceiling":
        text += f" ({row['ratio_incl_join']:.0%} incl. join)"
    return text


def _committed_text(row: dict[str, Any]) -> str:
    """A framework peer's "committed to end" cell: yes, or no with how far it committed and read."""
    if row.get("committed_to_end") is None:
        return ""
    if row["committed_to_end"]:
        return "yes"
    end = row.get("end_messages") or 0
    text = f"**no** ({row.get('committed_messages') or 0:,} of {end:,}"
    if row.get("read_to_end") is False:
        text += f"; read {row.get('messages') or 0:,} in the time budget"
    return text + ")"


def markdown(rows: list[dict[str, Any]]) -> str:
    """The table; with framework peer rows (bench/peers.py) in it, two more columns: whether the row keeps
    per-key order and whether its group's committed offsets reached the topic's end after the run."""
    peers = any(row.get("committed_to_end") is not None for row in rows)
    head = "| benchmark | msgs/s | msgs/s incl. join | ratio | target | met? |"
    rule = "|---|--:|--:|---|---|:-:|"
    if peers:
        head += " key order | committed to end |"
        rule += ":-:|---|"
    lines = [head, rule]
    for row in rows:
        rate = row.get("value") or (f"{row['msgs_per_s']:,.0f}" if row.get("msgs_per_s") else "-")
        incl = f"{row['msgs_per_s_incl_join']:,.0f}" if row.get("msgs_per_s_incl_join") else ""
        met = {True: "yes", False: "**no**", None: ""}[row["met"]]
        line = f"| {row['row']} | {rate} | {incl} | {_ratio_text(row)} | {row['target']} | {met} |"
        if peers:
            order = {True: "yes", False: "no", None: ""}[row.get("keeps_key_order")]
            line += f" {order} | {_committed_text(row)} |"
        lines.append(line)
    return "\n".join(lines)


def header(benchmarks: list[dict[str, Any]]) -> str:
    """What was measured: the topic's size and whether it was the quick mode."""
    for b in benchmarks:
        info = b.get("extra_info") or {}
        if info.get("topic_messages"):
            mode = "full mode"
            if info.get("quick"):
                mode = "quick mode: too few messages for the rates to mean much"
            return (
                f"Topic of {info['topic_messages']:,} messages of {info.get('message_size', 100)} bytes in "
                f"{info.get('partitions', 4)} partitions, {info.get('keys', 0):,} keys ({mode}); "
                f"msgs/s from first message to last, and from making the client (group join included)."
            )
    return ""


def save_json(
    rows: list[dict[str, Any]], path: str | Path, benchmarks_file: dict[str, Any] | None = None
) -> None:
    doc: dict[str, Any] = {"rows": rows}
    if benchmarks_file:
        doc["datetime"] = benchmarks_file.get("datetime")
        doc["machine_info"] = benchmarks_file.get("machine_info")
        doc["commit_info"] = benchmarks_file.get("commit_info")
    Path(path).write_text(json.dumps(doc, indent=2) + "\n")


def save_png(rows: list[dict[str, Any]], path: str | Path) -> bool:
    """A horizontal bar per row that has a ratio to a ceiling, the target as a tick; False without
    matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(
            f"matplotlib is not installed: no chart written to {path} (pip install matplotlib)",
            file=sys.stderr,
        )
        return False
    bars = [r for r in rows if r.get("ratio") is not None and r.get("ratio_to") in ("ceiling", "I/O ceiling")]
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(bars) + 1.5))
    labels = [r["row"] + (" [vs I/O ceiling]" if r["ratio_to"] == "I/O ceiling" else "") for r in bars]
    values = [100 * r["ratio"] for r in bars]
    colors = ["#4c72b0" if r["key"].startswith("fc_") else "#999999" for r in bars]
    ax.barh(range(len(bars)), values, color=colors)
    for i, r in enumerate(bars):
        ax.text(values[i] + 1, i, f"{r['msgs_per_s']:,.0f}/s", va="center", fontsize=8)
        target = TARGETS.get(r["key"])
        if target and target[0] == "ratio":
            ax.plot([100 * target[2]] * 2, [i - 0.4, i + 0.4], color="#c44e52", linewidth=2)
    ax.set_yticks(range(len(bars)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("% of the ceiling measured in the same session (red: target)")
    ax.set_xlim(0, max([110.0, *[v + 25 for v in values]]))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


SWEEP_TARGET = 0.90  # of each row's ideal


def sweep_rows(benchmarks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The look-ahead sweep's rows (bench/test_sweep.py), ordered by ordering, partitions, then keys."""
    rows = []
    for b in benchmarks:
        info = b.get("extra_info") or {}
        if "sweep" in info and info.get("msgs_per_s"):
            rows.append({**info["sweep"], "msgs_per_s": info["msgs_per_s"], "vmhwm_kb": info.get("vmhwm_kb")})
    for row in rows:
        row["ratio"] = row["msgs_per_s"] / row["ideal"]
    orderings = ["key", "partition", "unordered"]
    return sorted(
        rows, key=lambda r: (orderings.index(r["ordering"]), r["skewed"], r["partitions"], r["keys"])
    )


def sweep_markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        f"| ordering | data | lanes | ideal msgs/s | msgs/s | of ideal (target {SWEEP_TARGET:.2f}) "
        "| peak RSS |",
        "|---|---|--:|--:|--:|--:|--:|",
    ]
    for r in rows:
        met = "" if r["ratio"] >= SWEEP_TARGET else " **no**"
        rss = f"{r['vmhwm_kb'] / 1024:.0f} MB" if r.get("vmhwm_kb") else "-"
        lanes = f"{r['lanes']:,}" if r["ordering"] != "unordered" else "-"
        lines.append(
            f"| {r['ordering']} | {r['shape']} | {lanes} | {r['ideal']:,.0f} | {r['msgs_per_s']:,.0f} | "
            f"{r['ratio']:.2f}{met} | {rss} |"
        )
    return "\n".join(lines)


def save_sweep_png(rows: list[dict[str, Any]], path: str | Path) -> bool:
    """Throughput against distinct keys, a panel per ordering, a line per partition count, each with its
    ideal dashed beside it; the skewed topics as separate markers. False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"matplotlib is not installed: no picture written to {path}", file=sys.stderr)
        return False
    orderings = [o for o in ("key", "partition", "unordered") if any(r["ordering"] == o for r in rows)]
    fig, axes = plt.subplots(1, len(orderings), figsize=(5 * len(orderings), 4.2), sharey=True, squeeze=False)
    colors = {1: "#4c72b0", 4: "#dd8452", 16: "#55a868"}
    for ax, ordering in zip(axes[0], orderings, strict=True):
        mine = [r for r in rows if r["ordering"] == ordering]
        for partitions in sorted({r["partitions"] for r in mine if not r["skewed"]}):
            line = sorted((r for r in mine if r["partitions"] == partitions and not r["skewed"]), key=_keys)
            color = colors.get(partitions, None)
            keys = [r["keys"] for r in line]
            label = f"{partitions} partitions"
            ax.plot(keys, [r["msgs_per_s"] for r in line], "o-", color=color, label=label)
            ax.plot(keys, [r["ideal"] for r in line], "--", color=color, alpha=0.6)
        for r in (r for r in mine if r["skewed"]):
            ax.plot([r["keys"]], [r["msgs_per_s"]], "D", color="#c44e52", label=r["shape"])
            ax.plot([r["keys"]], [r["ideal"]], "x", color="#c44e52")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"ordering {ordering}")
        ax.set_xlabel("distinct keys")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("msgs/s, 1 ms handler, concurrency 64 (dashed, x: ideal)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _keys(row: dict[str, Any]) -> int:
    return int(row["keys"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("benchmark_json", help="pytest-benchmark output (--benchmark-json)")
    parser.add_argument("--json", metavar="FILE", help="save the rows as JSON")
    parser.add_argument("--png", metavar="FILE", help="save a bar chart (needs matplotlib)")
    parser.add_argument("--markdown", metavar="FILE", help="save the markdown table")
    parser.add_argument("--sweep-png", metavar="FILE", help="save the look-ahead sweep's picture")
    args = parser.parse_args(argv)
    with open(args.benchmark_json) as fh:
        doc = json.load(fh)
    benchmarks = doc.get("benchmarks", [])
    rows = build_rows(benchmarks)
    swept = sweep_rows(benchmarks)
    if not rows and not swept:
        print(f"{args.benchmark_json}: no fastconsumer benchmark rows", file=sys.stderr)
        return 1
    text = markdown(rows) if rows else ""
    intro = header(benchmarks)
    if intro and rows:
        text = intro + "\n\n" + text
    if swept:
        text = (text + "\n\n" if text else "") + sweep_markdown(swept)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")
    if args.json:
        save_json(rows, args.json, doc)
    if args.png:
        save_png(rows, args.png)
    if args.sweep_png:
        save_sweep_png(swept, args.sweep_png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
