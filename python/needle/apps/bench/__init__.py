"""`needle bench`: needle's devices against PyTorch, written up as tables, JSON and plots.

    needle bench --quick                          every device; the cpu ones: 2-5 min on 2 cores
    needle bench --threads 1 --out runs/bench-1t  the full sweep on one thread
    needle bench --devices cpu,cuda               needle and PyTorch on those devices only

Workloads: a float32 matmul sweep (square sizes and rectangular cases), elementwise and
reduction throughput, the eager overhead of one tiny op, and one training step (zero_grad,
forward, loss, backward, SGD update) of an MLP 784-512-512-10, ResNet-9 and a 2-layer LSTM
language model. Each measurement warms up, synchronises the device, runs enough calls per
repeat to outlast the clock's noise, interleaves the libraries' repeats in rounds until each
median's 95% confidence interval is within ±5% (or --max-time-per-case; wider rows are marked
unreliable, ≈) and reports the median with that interval. Every library gets the same threads.

It writes, in --out: report.md (one table per workload, with each backend's speed relative
to PyTorch on the same device and to needle's cpu backend), results.json (raw timings and the
machine: CPU, GPU, threads, versions, commit) and PNG plots when matplotlib is installed.

The package: harness (timing, threads, backends, running, the machine; the scripts in
benchmarks/ are configurations of it), workloads (what `needle bench` and those scripts
measure), report (report.md and the plots), step_profile (where a training step spends its time).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time

from needle.apps.arguments import nonnegative_float, positive_int
from needle.apps.bench.harness import (
    discover_backends,
    load_average,
    machine_info,
    run_benchmarks,
    run_pinned,
    set_threads,
    threads_pinned,
    unlisted_devices,
)
from needle.apps.bench.report import render_report, render_summary, write_plots
from needle.apps.bench.workloads import PRESETS, WORKLOADS, build_workloads

SCHEMA = "needle-bench/1"


def _sizes(text: str) -> str:
    for size in text.split(","):
        positive_int(size)
    return text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`needle bench`'s options (cli.py adds them to its `bench` subcommand)."""
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smaller sweeps and fewer repeats: 2-5 minutes on 2 cores (cpu devices)",
    )
    parser.add_argument(
        "--devices",
        default=None,
        help="comma-separated: cpu, cuda, cpu_numpy, webgpu, needle:cpu, torch:mps ... "
        "(default: every available needle and PyTorch device)",
    )
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="threads for every library (default: all cores)",
    )
    parser.add_argument(
        "--out", default=os.path.join("runs", "bench"), help="output folder (default: runs/bench)"
    )
    parser.add_argument(
        "--workloads",
        default=",".join(WORKLOADS),
        help=f"comma-separated subset of {', '.join(WORKLOADS)}",
    )
    parser.add_argument(
        "--sizes",
        type=_sizes,
        default=None,
        help="square matmul sizes, comma-separated (overrides the preset)",
    )
    parser.add_argument(
        "--repeats",
        type=positive_int,
        default=None,
        help="the least repeats per measurement (overrides the preset; see --max-time-per-case)",
    )
    parser.add_argument(
        "--max-time-per-case",
        type=nonnegative_float,
        default=None,
        help="seconds of rounds per case until each median's 95%% confidence interval is within "
        "±5%%; a row still wider is reported unreliable (default 10; 0: --repeats rounds only)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    # Test budget: tiny arrays and models, so the whole pipeline runs in seconds.
    parser.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)


def _as_argv(args: argparse.Namespace) -> list[str]:
    """The options of `args` as command-line arguments, for the re-executed process."""
    argv = []
    for flag in ("quick", "no_progress", "tiny", "debug"):
        if getattr(args, flag, False):
            argv.append("--" + flag.replace("_", "-"))
    options = ("devices", "threads", "out", "workloads", "sizes", "repeats", "max_time_per_case")
    for option in options:
        value = getattr(args, option)
        if value is not None and not (option == "workloads" and value == ",".join(WORKLOADS)):
            argv += ["--" + option.replace("_", "-"), str(value)]
    return argv


def run(args: argparse.Namespace) -> int:
    """`needle bench`: measure, then write report.md, results.json and the plots in --out."""
    threads = args.threads or os.cpu_count() or 1
    if threads < 1:
        raise SystemExit("needle bench: --threads must be at least 1")
    try:  # before measuring, so an unwritable --out does not cost a whole run
        os.makedirs(args.out, exist_ok=True)
    except OSError as error:
        raise SystemExit(
            f"needle bench: cannot create --out {args.out}: {error.strerror}"
        ) from None
    if not threads_pinned(threads):
        # NumPy's BLAS took its thread count from the environment when it loaded: run the
        # benchmark in a fresh process whose environment gives every library `threads`.
        args.threads = threads
        return run_pinned(threads, [sys.executable, "-m", "needle", "bench"] + _as_argv(args))

    keys = [k.strip() for k in args.workloads.split(",") if k.strip()]
    unknown = sorted(set(keys) - set(WORKLOADS))
    if unknown:
        raise SystemExit(
            f"needle bench: unknown workload(s) {', '.join(unknown)}; choose from "
            f"{', '.join(WORKLOADS)}"
        )
    mode = "tiny" if args.tiny else ("quick" if args.quick else "full")
    preset = dict(PRESETS[mode])
    if args.sizes:
        preset["sizes"] = [int(s) for s in args.sizes.split(",")]
    if args.repeats is not None:
        preset["repeats"] = preset["train_repeats"] = max(1, args.repeats)
    if args.max_time_per_case is not None:
        preset["max_time"] = args.max_time_per_case
    try:
        backends = discover_backends(args.devices)
    except ValueError as error:
        raise SystemExit(f"needle bench: {error}") from None
    if not backends:
        raise SystemExit("needle bench: no devices selected")

    used_threads = set_threads(threads)
    workloads = build_workloads(preset, keys)
    print(
        f"needle bench ({mode}): {', '.join(b.name for b in backends if b.available)} on "
        f"{threads} thread(s); writing to {args.out}",
        flush=True,
    )
    started, load_start = time.perf_counter(), load_average()
    measured = run_benchmarks(
        workloads, backends, pause=preset["pause"], progress=not args.no_progress
    )
    results = {
        "schema": SCHEMA,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "needle bench " + " ".join(_as_argv(args)),
        "mode": mode,
        "seconds": round(time.perf_counter() - started, 1),
        "machine": machine_info(backends, used_threads, load_start),
        "backends": [
            {
                "name": b.name,
                "library": b.library,
                "device": b.device,
                "hardware": b.hardware,
                "available": b.available,
                "reason": b.reason or None,
            }
            for b in backends
        ],
        "not_measured": unlisted_devices(backends),
        "workloads": measured,
    }
    os.makedirs(args.out, exist_ok=True)
    results["plots"] = write_plots(results, args.out)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    with open(os.path.join(args.out, "report.md"), "w") as f:
        f.write(render_report(results))
    print("\n".join(render_summary(results)))
    plots = (
        f", {', '.join(results['plots'])}"
        if results["plots"]
        else " (install matplotlib for the plots)"
    )
    print(
        f"done in {results['seconds']:.0f} s: wrote {os.path.join(args.out, 'report.md')}, "
        f"results.json{plots}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="needle bench", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
