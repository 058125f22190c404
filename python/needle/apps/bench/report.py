"""`needle bench`'s write-up: report.md (a summary and one table per workload, with each
backend's speed relative to PyTorch on the same device and to needle's cpu backend) and the
plots (matmul.png, elementwise.png, train.png)."""

from __future__ import annotations

import os
from typing import Any

from needle.apps.bench.harness import (
    bar_chart,
    format_cell,
    format_value,
    machine_sentence,
    markdown_table,
    percent,
)


def _times(ratio: float | None) -> str:
    return f"{ratio:.2f}x" if ratio else "—"


def render_workload(workload: dict[str, Any], backends: list[str]) -> list[str]:
    better = "higher is better" if workload["higher_is_better"] else "lower is better"
    lines = [
        f"## {workload['title']}",
        "",
        (
            f"{workload['unit']}, {better}. {workload['note']} Median of "
            f"{workload['repeats']} repeat(s) after {workload['warmup']} warm-up call(s); spread: "
            "half the interquartile range of the repeats, relative to the median."
        ),
        "",
    ]
    rows = []
    for case in workload["cases"]:
        for i, name in enumerate(backends):
            row = case["results"][name]
            first = case["name"] if i == 0 else ""
            if row["status"] != "ok":
                detail = row["reason"] if row["status"] == "error" else ""
                rows.append([first, name, format_cell(row), detail, "", ""])
                continue
            vs_torch = percent(row.get("speed_vs_torch")) if name.startswith("needle") else ""
            rows.append(
                [
                    first,
                    name,
                    format_value(row["value"]),
                    f"±{row['spread'] * 50:.0f}%",
                    vs_torch,
                    _times(row.get("speed_vs_needle_cpu")),
                ]
            )
    lines += markdown_table(
        [
            "case",
            "backend",
            workload["unit"],
            "spread",
            "speed vs torch (same device)",
            "speed vs needle cpu",
        ],
        rows,
        right_from=2,
    )
    return lines + [""]


def render_summary(results: dict[str, Any]) -> list[str]:
    """The headline cases, one column per backend, plus needle's speed relative to PyTorch."""
    names = [b["name"] for b in results["backends"]]
    available = {b["name"] for b in results["backends"] if b["available"]}
    pairs = [
        (b["name"], f"torch {b['hardware']}")
        for b in results["backends"]
        if b["library"] == "needle"
        and b["name"] in available
        and f"torch {b['hardware']}" in available
    ]
    header = ["workload", "unit"] + names + [f"{n} vs {t}" for n, t in pairs]
    rows = []
    for workload in results["workloads"]:
        for case in workload["cases"]:
            if not case["headline"]:
                continue
            cells = [format_cell(case["results"][n]) for n in names]
            ratios = [percent(case["results"][n].get("speed_vs_torch")) for n, _ in pairs]
            label = case["name"] if workload["key"] != "matmul" else f"matmul {case['name']}"
            rows.append([label, workload["unit"]] + cells + ratios)
    return markdown_table(header, rows, right_from=2)


def render_report(results: dict[str, Any]) -> str:
    machine = results["machine"]
    lines = [
        "# needle bench",
        "",
        (
            f"{results['created']}, `{results['command']}` ({results['mode']} mode), needle "
            f"{machine['versions']['needle']} at commit {machine['commit']}."
        ),
        "",
        machine_sentence(machine),
        "",
        (
            "Speeds compare median times: 86% means 86% of PyTorch's speed on the same device "
            "(PyTorch takes 0.86x the time); 22x means 22 times needle cpu's speed."
        ),
        "",
    ]
    missing = [b for b in results["backends"] if not b["available"]]
    missing += results.get("not_measured", [])
    for b in missing:
        lines.append(f"- {b['name']}: {b['reason']}")
    if missing:
        lines.append("")
    lines += ["## Summary", ""] + render_summary(results) + [""]
    names = [b["name"] for b in results["backends"]]
    for workload in results["workloads"]:
        lines += render_workload(workload, names)
    if results.get("plots"):
        lines += ["## Plots", ""] + [f"![{p}]({p})" for p in results["plots"]] + [""]
    return "\n".join(lines)


# ---- plots -----------------------------------------------------------------------------
def write_plots(results: dict[str, Any], out: str) -> list[str]:
    """matmul.png (GFLOP/s against size), elementwise.png and train.png (time per step); []
    without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written = []
    names = [b["name"] for b in results["backends"] if b["available"]]
    by_key = {w["key"]: w for w in results["workloads"]}
    threads = results["machine"]["threads"]["requested"]

    if "matmul" in by_key:
        square = [
            c
            for c in by_key["matmul"]["cases"]
            if c["params"]["m"] == c["params"]["n"] == c["params"]["p"]
        ]
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for name in names:
            points = [
                (c["params"]["m"], c["results"][name]["value"])
                for c in square
                if c["results"][name]["status"] == "ok"
            ]
            if points:
                ax.plot(*zip(*points), marker="o", label=name)
        ax.set_xscale("log", base=2)
        ax.set(
            xlabel="matrix size n (n x n @ n x n)",
            ylabel="GFLOP/s",
            title=f"float32 matmul, {threads} thread(s)",
        )
        ax.grid(alpha=0.3)
        ax.legend()
        written.append(_save(fig, plt, out, "matmul.png"))

    for key, filename, log in (
        ("elementwise", "elementwise.png", False),
        ("train", "train.png", True),
    ):
        if key not in by_key:
            continue
        workload = by_key[key]
        series = {
            name: [c["results"][name].get("value", 0.0) or 0.0 for c in workload["cases"]]
            for name in names
        }
        bar_chart(
            os.path.join(out, filename),
            f"{workload['title']}, {threads} thread(s)",
            [c["name"].split(",")[0] for c in workload["cases"]],
            series,
            workload["unit"],
            log,
        )
        written.append(filename)
    return written


def _save(fig, plt, out: str, filename: str) -> str:
    fig.tight_layout()
    fig.savefig(os.path.join(out, filename), dpi=110)
    plt.close(fig)
    return filename
