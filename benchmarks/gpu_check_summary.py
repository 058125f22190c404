"""The facts and the verdicts of benchmarks/gpu_check.sh (the first run on a GPU machine).

    python benchmarks/gpu_check_summary.py machine OUT/machine.json
    python benchmarks/gpu_check_summary.py summary OUT [--dry-run]

machine: what the machine has (GPU, driver, CUDA, nvcc, compute-sanitizer, Python, the commit,
the packages needle needs to build, test and benchmark), as JSON and printed. It only reports:
a missing tool or package is a line in it, never an error, and it needs nothing but Python.

summary: reads what gpu_check.sh left in OUT (steps.tsv, pytest's JUnit files in tests/, the
sanitizer's log, bench_cuda.json, bench/results.json) and writes OUT/summary.md: each step's
status (pass, fail or skipped) with the reason, then the numbers against issue 21's targets:
SGEMM at 4096 at least 0.7x cuBLAS's speed, the MLP step at most 2x PyTorch CUDA's time, no
compute-sanitizer errors; ResNet-9's step against PyTorch's is reported without a target.
Exit status 1 when a step failed; a target missed is reported, not an exit status.
"""

from __future__ import annotations

import argparse
import csv
import importlib.metadata
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any

# Distribution -> what needs it. cmake and ninja may come from the system instead of PyPI.
PACKAGES = {
    "numpy": "needle",
    "tqdm": "needle",
    "scikit-build-core": "the build",
    "nanobind": "the build",
    "cmake": "the build",
    "ninja": "the build (else make)",
    "pytest": "the tests",
    "hypothesis": "the tests",
    "torch": "the tests and the benchmarks",
    "matplotlib": "needle bench's plots",
    "wgpu": "the webgpu device",
}
SGEMM_SIZE, SGEMM_TARGET = 4096, 0.7  # needle at least 70% of cuBLAS's speed at 4096
MLP_TARGET = 2.0  # needle's MLP step at most twice PyTorch's time
UNSUPPORTED = "Device not supported"  # compute-sanitizer's words for a GPU it cannot watch


# ---- machine ------------------------------------------------------------------------------
def _run(command: list[str], timeout: float = 20) -> str | None:
    """The command's stdout (stderr when stdout is empty), None when it cannot run."""
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    return (result.stdout or result.stderr).strip()


def find_tool(name: str) -> str | None:
    """`name` on PATH, else in the CUDA toolkit's usual places (as CMakeLists.txt looks)."""
    homes = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    candidates = [shutil.which(name)] + [os.path.join(h, "bin", name) for h in homes if h]
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        tool = shutil.which(name) if name in ("cmake", "ninja") else None
        return f"system ({tool})" if tool else None


def machine_facts(repo: Path) -> dict[str, Any]:
    facts: dict[str, Any] = {
        "python": f"{platform.python_version()} ({sys.executable})",
        "platform": platform.platform(),
        "cores": os.cpu_count(),
        "packages": {name: package_version(name) for name in PACKAGES},
    }
    facts["missing"] = [f"{n} ({PACKAGES[n]})" for n, v in facts["packages"].items() if v is None]
    smi = _run(["nvidia-smi"]) if shutil.which("nvidia-smi") else None
    query = "--query-gpu=name,driver_version,memory.total,compute_cap"
    gpus = _run(["nvidia-smi", query, "--format=csv,noheader"]) if smi else None
    facts["gpus"] = gpus.splitlines() if gpus else []
    cuda = re.search(r"CUDA Version:\s*([\d.]+)", smi or "")
    facts["driver_cuda"] = cuda.group(1) if cuda else None
    for tool in ("nvcc", "compute-sanitizer"):
        path = find_tool(tool)
        version = _run([path, "--version"]) if path else None
        release = re.findall(r"(?:release|[Vv]ersion) ([\w.]+)", version or "")
        facts[tool] = f"{release[-1] if release else '?'} ({path})" if path else None
    commit = _run(["git", "-C", str(repo), "rev-parse", "HEAD"])
    dirty = _run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"])
    facts["commit"] = (commit or "unknown") + ("-dirty" if dirty else "")
    try:
        import torch

        facts["torch"] = f"{torch.__version__} (CUDA {torch.version.cuda})"
        facts["torch_gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception as error:  # not installed, or a broken install: a fact, not a failure
        facts["torch"] = f"not importable: {type(error).__name__}: {error}"
    return facts


# ---- steps --------------------------------------------------------------------------------
def read_steps(out: Path) -> list[dict[str, str]]:
    """steps.tsv: one row per step, name, rc ("skipped" or an exit status), seconds, limit,
    note (gpu_check.sh's record() writes it)."""
    path = out / "steps.tsv"
    if not path.exists():
        return []
    fields = ["name", "rc", "seconds", "limit", "note"]
    with open(path, newline="") as f:
        return [dict(zip(fields, row)) for row in csv.reader(f, delimiter="\t") if row]


def junit_counts(path: Path) -> dict[str, int] | None:
    """Passed, failed (failures and errors) and skipped tests of a pytest --junitxml file."""
    try:
        root = ElementTree.parse(path).getroot()
    except (OSError, ElementTree.ParseError):
        return None
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    total = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors")}
    skipped = sum(int(s.get("skipped", 0)) for s in suites)
    failed = total["failures"] + total["errors"]
    return {"passed": total["tests"] - failed - skipped, "failed": failed, "skipped": skipped}


def sanitizer_errors(log: Path) -> int | None:
    """The errors compute-sanitizer's "ERROR SUMMARY" counts (None without that line, or when
    the sanitizer could not attach to the GPU at all)."""
    text = log.read_text(errors="replace") if log.exists() else ""
    found = re.findall(r"ERROR SUMMARY: (\d+) error", text)
    return int(found[-1]) if found and UNSUPPORTED not in text else None


def last_line(out: Path, name: str) -> str:
    """The last line a step wrote (its error, most often), shortened for a table cell."""
    log = out / "logs" / f"{name}.log"
    lines = log.read_text(errors="replace").split("\n") if log.exists() else []
    last = next((line.strip() for line in reversed(lines) if line.strip()), "(nothing)")
    last = last.replace("|", "/")  # a table cell
    return (last[:157] + "...") if len(last) > 160 else last


def step_verdict(step: dict[str, str], out: Path) -> tuple[str, str]:
    """(pass | fail | skipped, the reason or the numbers) of one row of steps.tsv."""
    name, rc, note = step["name"], step["rc"], step["note"]
    if rc == "skipped":
        return "skipped", note
    details = [note] if note else []
    status = "pass" if rc == "0" else "fail"
    if rc in ("124", "137"):
        details.append(f"timed out after {step['limit']} s")
    elif rc != "0":
        details.append(f"exit status {rc}; logs/{name}.log ends: {last_line(out, name)}")
    counts = junit_counts(out / "tests" / f"{name}.xml")
    if counts is not None:
        details.append("{passed} passed, {failed} failed, {skipped} skipped".format(**counts))
        if counts["passed"] == 0:
            status, details = "fail", details + ["no test passed"]
    elif name.startswith("tests") and status == "pass":
        status, details = "fail", details + ["no JUnit results"]
    if name == "sanitizer":
        log = out / "logs" / "sanitizer.log"
        if log.exists() and UNSUPPORTED in log.read_text(errors="replace"):
            # Seen on GPU machines under gVisor: the tool, not needle, cannot run there.
            return "skipped", f"compute-sanitizer cannot run here: {UNSUPPORTED!r} in the log"
        errors = sanitizer_errors(log)
        if errors is None:
            status, details = "fail", details + ["no ERROR SUMMARY in logs/sanitizer.log"]
        else:
            details.append(f"{errors} memcheck error(s)")
            status = "fail" if errors else status
    results = {
        "bench-cuda": "bench_cuda.json",
        "bench-half-gemm": "bench_half_gemm.json",
        "bench": "bench/results.json",
    }.get(name)
    if results and not (out / results).exists() and status == "pass":
        status, details = "fail", details + [f"no {results}; the log ends: {last_line(out, name)}"]
    return status, "; ".join(details)


# ---- targets ------------------------------------------------------------------------------
def _load(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _workload(results: dict[str, Any] | None, key: str) -> list[dict[str, Any]]:
    """The cases of workload `key` in a needle bench results.json or bench_cuda.json."""
    if results is None:
        return []
    runs = results.get("results", [results])  # bench_cuda.json: one entry per thread count
    return [c for r in runs for w in r.get("workloads", []) if w["key"] == key for c in w["cases"]]


def _medians(case: dict[str, Any], device: str) -> tuple[float, float] | None:
    """needle's and torch's median seconds on `device` in one case (None unless both ran)."""
    rows = case["results"]
    needle, torch = rows.get(f"needle {device}", {}), rows.get(f"torch {device}", {})
    if needle.get("status") == torch.get("status") == "ok":
        return needle["median_s"], torch["median_s"]
    return None


def targets(out: Path, device: str, steps: dict[str, str]) -> list[tuple[str, str, str]]:
    """(target, measured, met | missed | not measured) for issue 21's three targets."""
    rows = []
    bench_cuda = _load(out / "bench_cuda.json")
    squares = [c for c in _workload(bench_cuda, "matmul") if len(set(c["params"].values())) == 1]
    at = next((c for c in squares if c["params"]["n"] == SGEMM_SIZE), None)
    at = at or max(squares, key=lambda c: c["params"]["n"], default=None)
    times = _medians(at, device) if at else None
    name = f"SGEMM {SGEMM_SIZE}: needle >= {SGEMM_TARGET}x cuBLAS's speed (TF32 off)"
    if times is None:
        rows.append((name, "no result", "not measured"))
    else:
        speed, n = times[1] / times[0], at["params"]["n"]
        rows.append((name, f"{speed:.2f}x at {n}", "met" if speed >= SGEMM_TARGET else "missed"))
    mlps = [(c, _medians(c, device)) for c in _workload(bench_cuda, "train")]
    measured = [(c["params"]["batch"], t[0] / t[1]) for c, t in mlps if t is not None]
    name = f"MLP step: needle <= {MLP_TARGET}x PyTorch's time"
    if not measured:
        rows.append((name, "no result", "not measured"))
    else:
        text = ", ".join(f"{ratio:.2f}x at batch {batch}" for batch, ratio in measured)
        met = all(ratio <= MLP_TARGET for _, ratio in measured)
        rows.append((name, text, "met" if met else "missed"))
    errors = sanitizer_errors(out / "logs" / "sanitizer.log")
    name = "compute-sanitizer memcheck: 0 errors"
    if errors is None:
        rows.append((name, steps.get("sanitizer", "not run"), "not measured"))
    else:
        rows.append((name, f"{errors} error(s)", "missed" if errors else "met"))
    return rows


def train_rows(out: Path, device: str) -> list[str]:
    """needle bench's training steps on `device` against PyTorch's, as table rows."""
    rows = []
    for case in _workload(_load(out / "bench" / "results.json"), "train"):
        times = _medians(case, device)
        if times is not None:
            needle, torch = times[0] * 1e3, times[1] * 1e3
            rows.append(f"| {case['name']} | {needle:.2f} | {torch:.2f} | {needle / torch:.2f}x |")
    return rows


def summary(out: Path, device: str, dry_run: bool) -> tuple[str, int]:
    """summary.md's text and the exit status (1 when a step failed)."""
    machine = _load(out / "machine.json") or {}
    verdicts = {s["name"]: step_verdict(s, out) for s in read_steps(out)}
    failed = [name for name, (status, _) in verdicts.items() if status == "fail"]
    title = "dry run: cpu stands in for cuda, small sizes" if dry_run else f"on {device}"
    lines = [f"# needle GPU check ({title})", ""]
    fact = {k: "not found" if v is None else v for k, v in machine.items()}
    fact.setdefault("gpus", [])
    gpus = "; ".join(fact["gpus"]) or "none (no nvidia-smi, or it lists no GPU)"
    lines += [
        f"- GPU: {gpus}; the driver's CUDA: {fact.get('driver_cuda', 'not found')}",
        f"- nvcc {fact.get('nvcc')}; compute-sanitizer {fact.get('compute-sanitizer')}",
        f"- commit {fact.get('commit')}",
        f"- Python {fact.get('python')}; torch {fact.get('torch')}",
        f"- missing packages: {', '.join(machine.get('missing', [])) or 'none'}",
        "",
        "| step | status | seconds | limit | details |",
        "| --- | --- | ---: | ---: | --- |",
    ]
    for step in read_steps(out):
        status, details = verdicts[step["name"]]
        lines.append(
            f"| {step['name']} | {status} | {step['seconds']} | {step['limit']} | {details} |"
        )
    lines += ["", "## Targets (issue 21)", ""]
    if dry_run:
        lines += ["A dry run measures the CPU: these verdicts test the summary, not a GPU.", ""]
    lines += ["| target | measured | verdict |", "| --- | --- | --- |"]
    states = {n: f"{status}: {details}" for n, (status, details) in verdicts.items()}
    lines += [f"| {t} | {m} | {v} |" for t, m, v in targets(out, device, states)]
    train = train_rows(out, device)
    if train:
        lines += ["", f"## Training steps (needle bench), {device}", ""]
        lines += [
            "| step | needle ms | torch ms | needle / torch |",
            "| --- | ---: | ---: | ---: |",
        ]
        lines += train
    verdict = f"FAIL: {', '.join(failed)}" if failed else "PASS: no step failed"
    files = "logs in logs/, JUnit files in tests/, bench_cuda.json, bench/report.md"
    lines += ["", f"**{verdict}.** Files: {files}.", ""]
    return "\n".join(lines), 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    machine = commands.add_parser("machine", help="write the machine's facts as JSON")
    machine.add_argument("path")
    report = commands.add_parser("summary", help="write OUT/summary.md")
    report.add_argument("out")
    report.add_argument("--device", default="cuda")
    report.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "machine":
        facts = machine_facts(Path(__file__).resolve().parents[1])
        Path(args.path).write_text(json.dumps(facts, indent=1))
        for key, value in facts.items():
            print(f"{key}: {value}")
        return 0
    text, status = summary(Path(args.out), args.device, args.dry_run)
    (Path(args.out) / "summary.md").write_text(text)
    print(text)
    return status


if __name__ == "__main__":
    sys.exit(main())
