"""`needle check-backend`: a module that claims the primitive table, against the NumPy reference.

    needle check-backend needle.backend_ndarray.ndarray_backend_numpy
    needle check-backend ./ndarray_backend_cpu.cpython-311-x86_64-linux-gnu.so
    needle check-backend my_backend.py --only compact reduce_sum --dtypes float32 --bench

MODULE_OR_PATH is an importable module name or a .py, .so or .pyd file. Every row of the
table runs the conformance suite's cases (needle.conformance.cases) in each dtype the module
holds (--dtypes: some of them) and is reported PASS, FAIL (the smallest failing case as a
reproducer: the call, its arrays, expected and got at the worst element, the largest error in
ulps), CRASH (a signal, an exit or no progress in --timeout seconds: the case it was in),
MISSING (a core row the module lacks) or SKIP (an optional row it leaves to the table's
fallback, which then runs the cases over its core rows; or no dtype of the run). The module
runs in a child process (worker.py), restarted after a crash, so a crash ends one row only.
A course-layout module (Array(size) of float32, no DTYPES: COURSE_API.md section 5) is tested
in float32 on the rows it has; the core rows of needle's table that the course's lacks are
listed as MISSING but fail nothing. --bench adds each passing row's time on its largest case
and its speed relative to needle's cpu backend. Exit status: 0 all pass, 1 a row failed,
crashed or is missing, 2 a usage error (bad arguments, a module that does not import).
"""

from __future__ import annotations

import argparse
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

from needle.backend_ndarray import primitives

TABLE = primitives.TABLE
# The course's backend module table (COURSE_API.md section 5), by the names of its rows here
# (the same names and parameter orders): a course-layout module is held to these.
COURSE_ROWS = frozenset(
    ["to_numpy", "from_numpy", "fill", "compact", "ewise_setitem", "scalar_setitem"]
    + [f"ewise_{op}" for op in ("add", "mul", "div", "maximum", "eq", "ge", "log", "exp", "tanh")]
    + [f"scalar_{op}" for op in ("add", "mul", "div", "power", "maximum", "eq", "ge")]
    + ["matmul", "reduce_max", "reduce_sum"]
)
DEFAULT_TIMEOUT = 60.0  # s without progress: the largest case takes < 1 s on the NumPy backend
# Importing needle and the module takes ~1 s, 3 s on a loaded machine: --timeout 2 must not
# turn that into a hang.
IMPORT_TIMEOUT = 60.0
FAILING = ("FAIL", "CRASH", "MISSING")


class UsageError(Exception):
    """Bad arguments or a module that does not import: one line, exit status 2."""


class Hung(Exception):
    """No message from the worker within the timeout."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="needle check-backend", description=__doc__.split("\n\n")[0])
    parser.add_argument("target", metavar="MODULE_OR_PATH")
    parser.add_argument("--dtypes", help="comma-separated dtypes (default: all it holds)")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="these rows of the table")
    parser.add_argument("--bench", action="store_true", help="speed relative to needle's cpu")
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="S",
        help=f"a case running longer is a crash (default {DEFAULT_TIMEOUT:g})",
    )
    return parser


def _names(args) -> tuple[list[str], list[str] | None]:
    rows = list(dict.fromkeys(n for item in args.only or TABLE for n in item.split(",") if n))
    unknown = [n for n in rows if n not in TABLE]
    if unknown:
        raise UsageError(f"no row {', '.join(unknown)} in the primitive table")
    dtypes = None if args.dtypes is None else [d for d in args.dtypes.split(",") if d]
    if dtypes is not None and not set(dtypes) <= set(primitives.DTYPES):
        bad = sorted(set(dtypes) - set(primitives.DTYPES))
        raise UsageError(
            f"unknown dtype {', '.join(bad)} (the table's: {', '.join(primitives.DTYPES)})"
        )
    return rows, dtypes


# ---- the worker process -------------------------------------------------------------------
class Worker:
    """worker.py on the target in a child process: JSON messages on a pipe of their own, its
    stdout and stderr (the module's prints, a crash's last words) in a temporary file."""

    def __init__(self, target: str, bench: bool, timeout: float):
        read_fd, write_fd = os.pipe()
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - open as long as the worker runs
        command = [sys.executable, "-m", "needle.conformance.worker", "--fd", str(write_fd)]
        self.proc = subprocess.Popen(
            command + (["--bench"] if bench else []) + [target],
            stdin=subprocess.PIPE,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            pass_fds=(write_fd,),
        )
        os.close(write_fd)
        self.fd, self.buffer, self.timeout = read_fd, b"", timeout
        self.imported = False  # until then, IMPORT_TIMEOUT at least

    def send(self, jobs: list[dict]) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(jobs).encode() + b"\n")
            self.proc.stdin.close()
        except BrokenPipeError:  # it died already: messages() ends and end() says how
            pass

    def messages(self) -> Iterator[dict[str, Any]]:
        while True:
            while b"\n" in self.buffer:
                line, self.buffer = self.buffer.split(b"\n", 1)
                yield json.loads(line)
            limit = self.timeout if self.imported else max(self.timeout, IMPORT_TIMEOUT)
            ready, _, _ = select.select([self.fd], [], [], limit)
            if not ready:
                raise Hung
            chunk = os.read(self.fd, 1 << 16)
            if not chunk:
                return
            self.buffer += chunk

    def end(self, hung: bool) -> tuple[str, str | None]:
        """Stop the worker: how it ended, and the last line it printed (or None)."""
        if hung:
            self.proc.kill()
        code = self.proc.wait()
        os.close(self.fd)
        self.log.seek(0)
        printed = [ln for ln in self.log.read().decode(errors="replace").splitlines() if ln]
        self.log.close()
        if hung:
            how = f"hung (no progress in {self.timeout:g} s)"
        elif code < 0:
            how = f"crashed (signal {-code}, {signal.Signals(-code).name})"
        else:
            how = f"exited with status {code}"
        return how, (printed[-1][:200] if printed else None)


# ---- the run ------------------------------------------------------------------------------
class Check:
    """The rows of one run, their results printed in table order as they come."""

    def __init__(self, args, rows: list[str], dtypes: list[str] | None):
        self.args, self.rows, self.dtypes = args, rows, dtypes
        self.results: dict[str, tuple[str, list[str], bool]] = {}  # status, lines, counts
        self.jobs: list[dict] | None = None
        self.printed = 0
        self.course = False

    def plan(self, found: dict[str, Any]) -> None:
        """The jobs for the worker; MISSING and dtype-less rows decided here."""
        self.course = found["layout"] == "course"
        held = [d for d in found["dtypes"] if self.dtypes is None or d in self.dtypes]
        if not held:
            raise UsageError(f"the module holds none of {', '.join(self.dtypes or [])} "
                             f"(it holds {', '.join(found['dtypes'])})")  # fmt: skip
        where = found["file"] or self.args.target
        print(f"module: {where} (device {found['device']}, {found['layout']} layout)\n"
              f"dtypes: {', '.join(held)}")  # fmt: skip
        self.jobs = []
        for name in self.rows:
            prim = TABLE[name]
            dtypes = [d for d in held if d in prim.dtypes]
            if prim.core and name not in found["rows"]:
                counts = not self.course or name in COURSE_ROWS
                note = "" if counts else " (needle's table only: not the course's, fails nothing)"
                self.results[name] = ("MISSING", [f"a core row: {prim.signature}{note}"], counts)
            elif not dtypes:
                taken = ", ".join(prim.dtypes)
                self.results[name] = ("SKIP", [f"no dtype of this run (it takes {taken})"], False)
            else:
                self.jobs.append({"row": name, "dtypes": dtypes})

    def record(self, message: dict[str, Any]) -> None:
        """A row's result (the worker runs the jobs in order: it is the first left)."""
        assert self.jobs and self.jobs[0]["row"] == message["row"], (self.jobs, message)
        self.jobs.pop(0)
        lines = describe(message)
        self.results[message["row"]] = (message["status"], lines, message["status"] in FAILING)

    def crashed(self, how: str, printed: str | None, case: dict | None) -> None:
        assert self.jobs
        name = self.jobs[0]["row"]
        if case is None or case["row"] != name:
            lines = [f"{how} before its first case"]
        else:
            lines = [f'{how} in case "{case["label"]}" in {case["dtype"]}:'] + case["call"]
        lines += [f"its last output: {printed}"] if printed else []
        self.results[name] = ("CRASH", lines, True)
        self.jobs.pop(0)

    def flush(self) -> None:
        while self.printed < len(self.rows) and self.rows[self.printed] in self.results:
            name = self.rows[self.printed]
            status, lines, _ = self.results[name]
            print(f"{name:<24} {status:<8} {lines[0]}")
            for line in lines[1:]:
                print(f"    {line}")
            self.printed += 1
        sys.stdout.flush()

    def summary(self, seconds: float) -> int:
        statuses = [self.results[n][0] for n in self.rows]
        failed = sum(counts for _, _, counts in self.results.values())
        counts = ", ".join(f"{statuses.count(s)} {s.lower()}" for s in
                           ("PASS", "FAIL", "CRASH", "MISSING", "SKIP"))  # fmt: skip
        verdict = "FAILED" if failed else "OK"
        rows = f"{len(self.rows)} row{'s' if len(self.rows) != 1 else ''}"
        print(f"{rows}: {counts} in {seconds:.1f} s: {verdict}")
        return 1 if failed else 0


def describe(result: dict[str, Any]) -> list[str]:
    """A worker's result as the lines printed under its row."""
    fallback = result["via"] == "fallback"
    over = f" (over {', '.join(result['uses'])})" if result.get("uses") else ""
    via = f"left to the table's fallback{over}: " if fallback else ""
    if "needs" in result:
        return [f"left to the table's fallback, not run: it needs {result['needs']}, missing"]
    if result["status"] == "FAIL":
        head = f"{via}{result['failed']} of {result['cases']} cases fail; the smallest:"
        return [head, *result["detail"]]
    n = result["cases"]
    line = f"{via}{n} case{'s pass' if n != 1 else ' passes'}"
    bench = result.get("bench")
    if bench:
        ratio = bench["cpu_seconds"] and bench["cpu_seconds"] / bench["seconds"]
        speed = f"{ratio:.2f}x cpu's speed" if ratio else "no time on cpu"
        line += f"; {_duration(bench['seconds'])} on {bench['case']} ({speed})"
    return [line]


def _duration(seconds: float) -> str:
    return f"{seconds * 1e3:.3g} ms" if seconds >= 1e-3 else f"{seconds * 1e6:.3g} us"


def _run_worker(check: Check) -> None:
    """One worker: the inventory, then the jobs left, until they end or it crashes."""
    worker = Worker(check.args.target, check.args.bench, check.args.timeout)
    try:
        case, hung = _read(worker, check)
    except BaseException:  # a usage error, Ctrl-C: the worker goes too
        worker.end(hung=True)
        raise
    how, printed = worker.end(hung)
    if check.jobs is None:
        last = f" (its last output: {printed})" if printed else ""
        raise UsageError(f"{check.args.target} {how} while importing{last}")
    if check.jobs:
        check.crashed(how, printed, case)
        check.flush()


def _read(worker: Worker, check: Check) -> tuple[dict | None, bool]:
    """The worker's messages until it is done, ends or hangs: (its last case, hung)."""
    case = None
    try:
        for message in worker.messages():
            kind = message["kind"]
            if kind == "error":
                raise UsageError(message["message"])
            if kind == "inventory":
                worker.imported = True
                if check.jobs is None:
                    if not message["array"]:
                        raise UsageError(f"{check.args.target} has no Array class: not a backend")
                    check.plan(message)
                    check.flush()
                worker.send(check.jobs or [])
            elif kind == "case":
                case = message
            elif kind == "result":
                check.record(message)
                check.flush()
            elif kind == "done":
                break
    except Hung:
        return case, True
    return case, False


def run(args) -> int:
    rows, dtypes = _names(args)
    start = time.perf_counter()
    check = Check(args, rows, dtypes)
    while check.jobs is None or check.jobs:
        _run_worker(check)
    check.flush()
    return check.summary(time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except UsageError as error:
        print(f"needle check-backend: {error}", file=sys.stderr)
        return 2
