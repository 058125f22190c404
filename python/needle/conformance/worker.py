"""The process `needle check-backend` runs a module in (check.py starts it and reads it).

    python -m needle.conformance.worker --fd N TARGET

It imports TARGET (a module name or a .py/.so/.pyd path), writes what the module has on file
descriptor N (one JSON object a line, so the module's own prints go elsewhere), reads the
rows to run from stdin (a JSON list of {"row", "dtypes"}) and runs each row's conformance
cases (cases.py, those of the suite) against the NumPy reference, announcing each case
before it calls the module, so that a crash or a hang is pinned on that case by the parent.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.machinery
import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np

from needle.backend_ndarray import ndarray_backend_numpy as nb_np, primitives
from needle.conformance import report
from needle.conformance.calls import call
from needle.conformance.cases import Backend, Case, cases, reference

TABLE = primitives.TABLE
SUFFIXES = (".py", *importlib.machinery.EXTENSION_SUFFIXES)


# ---- loading ----------------------------------------------------------------------------
def load(target: str):
    """The module `target` names: a path to a .py or compiled file, else an importable name."""
    path = Path(target)
    if not path.is_file():
        if target.endswith(SUFFIXES) or os.sep in target:
            raise ImportError(f"no such file: {target}")
        return importlib.import_module(target)
    if not target.endswith(SUFFIXES):
        raise ImportError(f"{target} is not a .py file or a compiled module ({SUFFIXES[-1]})")
    for loaded in list(sys.modules.values()):  # needle's own cpu module, say: initialised once
        file = getattr(loaded, "__file__", None)
        if file and os.path.exists(file) and os.path.samefile(file, path):
            return loaded
    name = path.name.split(".")[0]  # a compiled module's PyInit_<name> names it
    if name in sys.modules:  # numpy.py, say: loading it would replace what the kit runs on
        raise ImportError(f"a module named {name} is imported already: rename {path.name}")
    sys.path.insert(0, str(path.parent.resolve()))  # its siblings import as they would
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {target}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def course_layout(mod) -> bool:
    """The course's module table (COURSE_API.md section 5): float32 only, `Array(size)`
    taking no dtype, no DTYPES."""
    if hasattr(mod, "DTYPES"):
        return False
    try:
        mod.Array(1, "float32")
    except TypeError:
        return True
    return False


class CourseArray:
    """A course Array (float32, without .dtype) as the table's Arrays are."""

    dtype = "float32"

    def __init__(self, handle):
        self.handle = handle

    @property
    def size(self) -> int:
        return self.handle.size

    def ptr(self) -> int:
        return self.handle.ptr()


class CourseModule:
    """A course-layout module seen through the table's conventions: `Array(size, dtype)` makes
    its float32 Array (a comparison's out too: the course writes 1.0 and 0.0 in float32), and
    its rows are called positionally in the table's order (a compiled course module names no
    parameters, so calls by keyword would fail)."""

    def __init__(self, mod):
        self._mod = mod

    def Array(self, size: int, dtype: str = "float32") -> CourseArray:
        return CourseArray(self._mod.Array(size))

    def __getattr__(self, name: str):
        fn = getattr(self._mod, name)
        prim = TABLE.get(name)
        if prim is None or not callable(fn):
            return fn

        def positional(*args, **kwargs):
            bound = (*args, *(kwargs[n] for n in prim.param_names[len(args) :]))
            return fn(*(a.handle if isinstance(a, CourseArray) else a for a in bound))

        return positional


class MissingRow(AttributeError):
    """A fallback reached a row the module lacks (an AttributeError, so that getattr with a
    default, as primitives.resolve uses, still sees an absent optional row)."""


class Recording:
    """`mod` with the table's rows it was asked for recorded in order (what a fallback used)."""

    def __init__(self, mod):
        self._mod, self.used = mod, []

    def __getattr__(self, name: str):
        try:
            value = getattr(self._mod, name)
        except AttributeError:
            if name in TABLE:
                raise MissingRow(name) from None
            raise
        if name in TABLE and name not in self.used:
            self.used.append(name)
        return value


def inventory(mod, course: bool) -> dict[str, Any]:
    dtypes = ["float32"] if course else list(primitives.backend_dtypes(mod))
    return {
        "kind": "inventory",
        "device": str(getattr(mod, "__device_name__", "unnamed: no __device_name__")),
        "file": str(getattr(mod, "__file__", "") or ""),
        "layout": "course" if course else "needle",
        "dtypes": dtypes,
        "array": callable(getattr(mod, "Array", None)),
        "rows": [n for n in TABLE if callable(getattr(mod, n, None))],
    }


# ---- running a row ----------------------------------------------------------------------
class Run:
    """The rows of one module: each case announced, run, compared; one result per row."""

    def __init__(self, subject, course: bool, dtypes, send: Callable[[dict], None], bench):
        self.subject, self.course, self.send, self.bench = subject, course, send, bench
        self.backend = Backend("checked", subject, tuple(dtypes))

    def implementation(self, mod, prim):
        """(how, function): the module's own row, else the table's fallback on a Recording."""
        own = getattr(mod, prim.name, None)
        if own is not None:
            return "own", own, None
        recording = Recording(mod)
        return "fallback", lambda **kw: prim.fallback(recording, **kw), recording

    def row(self, name: str, dtypes: list[str]) -> dict[str, Any]:
        prim = TABLE[name]
        how, impl, recording = self.implementation(self.subject, prim)
        result: dict[str, Any] = {"kind": "result", "row": name, "via": how, "cases": 0}
        failures: list[tuple[int, list[str]]] = []
        try:
            for dtype in dtypes:
                for case in cases(prim, self.backend, dtype):
                    result["cases"] += 1
                    failure = self.case(prim, case, dtype, impl)
                    if failure is not None:
                        failures.append((report.elements(case.args), failure))
        except MissingRow as missing:
            result.update(status="SKIP", needs=str(missing))
            return result
        result["uses"] = recording.used if recording else []
        result["failed"] = len(failures)
        if failures:  # the smallest failing case (the first of the smallest)
            result.update(status="FAIL", detail=min(failures, key=lambda f: f[0])[1])
        else:
            result["status"] = "PASS" if how == "own" else "SKIP"
            if self.bench is not None:
                result["bench"] = self.bench(self, prim, dtypes)
        return result

    def case(self, prim, case: Case, dtype: str, impl) -> list[str] | None:
        """None if `case` passes, else its reproducer and what went wrong."""
        lines = report.reproducer(prim, case.args, dtype, self.course)
        self.send({"kind": "case", "row": prim.name, "dtype": dtype, "label": case.label,
                   "call": lines})  # fmt: skip
        with np.errstate(all="ignore"):
            want = call(
                nb_np, prim.name, *case.args, dtype=dtype, impl=reference(prim, self.backend)
            )
            try:
                got = call(self.subject, prim.name, *case.args, dtype=dtype, impl=impl)
            except MissingRow:
                raise
            except Exception as error:  # the module's own error: a failure of this case
                return report.headline(case, dtype) + lines + [f"raised {_said(error)}"]
            wrong = report.mismatch(got, want, case.tol(dtype), prim, dtype, case.args, self.course)
        return None if wrong is None else report.headline(case, dtype) + lines + wrong


def _said(error: Exception) -> str:
    """An exception in one line: its type and message (a SyntaxError's file and line too)."""
    return f"{type(error).__name__}: {error}".splitlines()[0]


# ---- the protocol -----------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="needle.conformance.worker")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--bench", action="store_true")
    parser.add_argument("target")
    args = parser.parse_args(argv)
    channel = os.fdopen(args.fd, "w", buffering=1)

    def send(message: dict) -> None:
        channel.write(json.dumps(message) + "\n")

    try:
        mod = load(args.target)
        course = course_layout(mod) if callable(getattr(mod, "Array", None)) else False
    except Exception as error:
        send({"kind": "error", "message": f"cannot import {args.target}: {_said(error)}"})
        return 2
    found = inventory(mod, course)
    send(found)
    jobs = json.loads(sys.stdin.readline() or "[]")
    subject = CourseModule(mod) if course else mod
    bench = None
    if args.bench:
        from needle.conformance import speed

        bench = speed.bench
    run = Run(subject, course, found["dtypes"], send, bench)
    for job in jobs:
        send(run.row(job["row"], job["dtypes"]))
    send({"kind": "done"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
