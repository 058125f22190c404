"""`needle bench`'s write-up: report.md (a summary and one table per workload, with each
backend's speed relative to PyTorch on the same device and to needle's cpu backend) and the
plots (matmul.png, elementwise.png, train.png)."""

from __future__ import annotations

import os
from typing import Any

from needle.apps.bench.harness import (
    LOAD_NOTE,
    TIMING_NOTE,
    UNRELIABLE,
    UNRELIABLE_NOTE,
    bar_chart,
    ci_cell,
    footnote,
    format_cell,
    legend,
    load_cell,
    machine_sentence,
    mark,
    markdown_table,
    percent,
)


def _times(ratio: float | None) -> str:
    return f"{ratio:.2f}x" if ratio else "—"


def _ratio(row: dict[str, Any], key: str, text) -> str:
    """A ratio column of `row`, marked when it is unreliable (harness.speed_ratio)."""
    ratio = row.get(key)
    return ("" if not ratio or row[f"{key}_reliable"] else UNRELIABLE) + text(ratio)


def render_workload(workload: dict[str, Any], backends: list[str]) -> list[str]:
    better = "higher is better" if workload["higher_is_better"] else "lower is better"
    timing = TIMING_NOTE.format(max_time=workload["max_time_s"], **workload)
    lines = [
        f"## {workload['title']}",
        "",
        f"{workload['unit']}, {better}. {workload['note']} {timing[0].upper()}{timing[1:]} "
        + LOAD_NOTE,
        "",
    ]
    rows = []
    for case in workload["cases"]:
        for i, name in enumerate(backends):
            row = case["results"][name]
            first, load = (case["name"], load_cell(case)) if i == 0 else ("", "")
            if row["status"] != "ok":
                detail = row["reason"] if row["status"] == "error" else ""
                rows.append([first, name, format_cell(row), detail, "", "", load])
                continue
            vs_torch = _ratio(row, "speed_vs_torch", percent) if name.startswith("needle") else ""
            vs_cpu = _ratio(row, "speed_vs_needle_cpu", _times)
            rows.append([first, name, format_cell(row), ci_cell(row), vs_torch, vs_cpu, load])
    lines += markdown_table(
        [
            "case",
            "backend",
            workload["unit"],
            "95% CI",
            "speed vs torch (same device)",
            "speed vs needle cpu",
            "load",
        ],
        rows,
        right_from=2,
    )
    return lines + footnote(workload) + [""]


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
            ratios = [_ratio(case["results"][n], "speed_vs_torch", percent) for n, _ in pairs]
            label = case["name"] if workload["key"] != "matmul" else f"matmul {case['name']}"
            rows.append([label, workload["unit"]] + cells + ratios)
    marked = any(UNRELIABLE in cell for row in rows for cell in row)
    return markdown_table(header, rows, right_from=2) + (["", UNRELIABLE_NOTE] if marked else [])


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
        hollow = False  # unreliable points: hollow markers
        for name in names:
            rows = [(c["params"]["m"], c["results"][name]) for c in square]
            points = [(m, row["value"], mark(row)) for m, row in rows if row["status"] == "ok"]
            if points:
                (line,) = ax.plot(*list(zip(*points))[:2], marker="o", label=name)
                bad = [(m, value) for m, value, flagged in points if flagged]
                hollow |= bool(bad)
                if bad:
                    ax.plot(*zip(*bad), "o", color=line.get_color(), mfc="white", ms=8)
        ax.set_xscale("log", base=2)
        ax.set(
            xlabel="matrix size n (n x n @ n x n)",
            ylabel="GFLOP/s",
            title=f"float32 matmul, {threads} thread(s)",
        )
        ax.grid(alpha=0.3)
        legend(ax, hollow, marker=True)
        written.append(_save(fig, plt, out, "matmul.png"))

    for key, filename, log in (
        ("elementwise", "elementwise.png", False),
        ("train", "train.png", True),
    ):
        if key not in by_key:
            continue
        workload = by_key[key]
        rows = {name: [c["results"][name] for c in workload["cases"]] for name in names}
        bar_chart(
            os.path.join(out, filename),
            f"{workload['title']}, {threads} thread(s)",
            [c["name"].split(",")[0] for c in workload["cases"]],
            {name: [r.get("value", 0.0) or 0.0 for r in rows[name]] for name in names},
            workload["unit"],
            log,
            unreliable={name: [bool(mark(r)) for r in rows[name]] for name in names},
        )
        written.append(filename)
    return written


def _save(fig, plt, out: str, filename: str) -> str:
    fig.tight_layout()
    fig.savefig(os.path.join(out, filename), dpi=110)
    plt.close(fig)
    return filename
