"""`needle check-backend` (needle.conformance.check) on deliberately broken backends.

Each broken backend is the NumPy backend with one fault, written to tmp_path as a module of
its own; the kit must name the faulty row with the right status (and no other row), print a
reproducer that shows the fault, and exit 1. The modules run in the kit's worker process, so
even the segfault runs through cli.main in this process.
"""

import re
import textwrap

import numpy as np
import pytest

import needle as ndl
from needle.apps import cli
from needle.backend_ndarray import ndarray_backend_numpy as nb_np, primitives
from needle.conformance import check, report
from needle.conformance.calls import Out

NUMPY = "needle.backend_ndarray.ndarray_backend_numpy"
HEADER = f"""
from {NUMPY} import *  # noqa: F403
from needle.backend_ndarray import ndarray_backend_numpy as _reference
import numpy as np
__device_name__ = "broken"
"""
FAULTS = {
    # wrong stride handling: the view read as if it were compact, from its offset
    "strides": """
def compact(a, out, shape, strides, offset):
    n = int(np.prod(shape))
    out.array[:] = a.array.take(offset + np.arange(n), mode="clip")
""",
    # off-by-one offset
    "offset": """
def compact(a, out, shape, strides, offset):
    _reference.compact(a, out, shape, strides, offset + 1)
""",
    # the reduced axis taken as the last one: (outer, inner, reduce) instead of (outer, reduce,
    # inner); every read stays inside the buffer, and inner 1 is right by chance
    "axis": """
def reduce_sum_axis(a, out, outer, reduce_size, inner):
    x = a.array[: outer * reduce_size * inner].reshape(outer, inner, reduce_size)
    out.array[:] = x.sum(axis=2).reshape(-1)
""",
    # a segfault on rows of 7 (a real one: reading address 0)
    "segfault": """
import ctypes
def reduce_max(a, out, reduce_size):
    if reduce_size == 7:
        ctypes.string_at(0)
    _reference.reduce_max(a, out, reduce_size)
""",
    "missing": "del ewise_exp\n",
    "hang": """
import time
def ewise_mul(a, b, out):
    time.sleep(600)
""",
}
ROWS = ["compact", "reduce_sum_axis", "reduce_max", "ewise_exp", "ewise_mul", "ewise_add"]


def kit(capsys, *argv):
    """cli.main on `needle check-backend argv`: (exit status, {row: status}, output)."""
    code = cli.main(["check-backend", *map(str, argv)])
    out, err = capsys.readouterr()
    statuses = dict(re.findall(r"^(\w+) +(PASS|FAIL|CRASH|MISSING|SKIP) ", out, re.M))
    return code, statuses, out + err


def broken(tmp_path, fault):
    path = tmp_path / f"broken_{fault}.py"
    path.write_text(HEADER + textwrap.dedent(FAULTS[fault]))
    return path


def row_text(out, row):
    """The lines of `row`'s entry: its status line and the indented lines under it."""
    match = re.search(rf"^{row} .*\n(?:    .*\n)*", out, re.M)
    assert match, (row, out)
    return match.group(0)


@pytest.mark.parametrize(
    "fault, row, status",
    [
        ("strides", "compact", "FAIL"),
        ("offset", "compact", "FAIL"),
        ("axis", "reduce_sum_axis", "FAIL"),
        ("segfault", "reduce_max", "CRASH"),
        ("missing", "ewise_exp", "MISSING"),
    ],
)
def test_each_fault_is_named(tmp_path, capsys, fault, row, status):
    code, statuses, out = kit(capsys, broken(tmp_path, fault), "--only", *ROWS[:-2],
                              "--dtypes", "float32,int64")  # fmt: skip
    assert code == 1, out
    assert statuses == {r: status if r == row else "PASS" for r in ROWS[:-2]}, out
    assert out.rstrip().endswith("FAILED"), out


def test_reproducers_show_the_fault(tmp_path, capsys):
    """The smallest failing case, with its view and the values at the worst element."""
    _, _, out = kit(capsys, broken(tmp_path, "offset"), "--only", "compact")
    entry = row_text(out, "compact")
    # one element at offset 2 of [1..5]: the fault reads 4 instead of 3, 2**22 ulp of 3
    assert 'case "one element, size-1 axes" in float32:' in entry, entry
    assert "compact(a, out, shape=(1, 1), strides=(5, 7), offset=2)" in entry, entry
    assert "a: 5 float32: [1.0, 2.0, 3.0, 4.0, 5.0]" in entry, entry
    assert "out[0]: expected 3.0, got 4.0 (must be equal)" in entry, entry
    assert "max abs error 1, 4.19e+06 ulp of float32; 1 of 1 elements differ" in entry, entry
    _, _, out = kit(capsys, broken(tmp_path, "axis"), "--only", "reduce_sum_axis")
    entry = row_text(out, "reduce_sum_axis")
    assert "reduce_sum_axis(a, out, outer=1, reduce_size=5, inner=3)" in entry, entry


def test_a_crash_ends_its_row_only(tmp_path, capsys):
    """The segfault is reported with its case and arguments; the rows after it still run."""
    rows = ("reduce_max", "ewise_add")
    code, statuses, out = kit(capsys, broken(tmp_path, "segfault"), "--only", *rows,
                              "--dtypes", "float32")  # fmt: skip
    assert code == 1 and statuses == {"reduce_max": "CRASH", "ewise_add": "PASS"}, out
    entry = row_text(out, "reduce_max")
    assert 'crashed (signal 11, SIGSEGV) in case "0 rows of 7" in float32:' in entry, entry
    assert "reduce_max(a, out, reduce_size=7)" in entry, entry


def test_a_hang_is_a_crash_after_the_timeout(tmp_path, capsys):
    code, statuses, out = kit(capsys, broken(tmp_path, "hang"), "--only", "ewise_mul",
                              "ewise_add", "--dtypes", "float32", "--timeout", "2")  # fmt: skip
    assert code == 1 and statuses == {"ewise_mul": "CRASH", "ewise_add": "PASS"}, out
    assert 'hung (no progress in 2 s) in case "size 0" in float32' in out, out


def test_the_numpy_backend_passes_every_row(capsys):
    """The whole table in every dtype (about 4 s): the kit agrees with the suite's verdict."""
    code, statuses, out = kit(capsys, NUMPY)
    assert code == 0, out
    assert set(statuses) == set(primitives.TABLE), out
    # its optional rows left to the fallbacks pass through them
    skipped = {n for n, s in statuses.items() if s == "SKIP"}
    assert skipped == {n for n in primitives.OPTIONAL if not hasattr(nb_np, n)}, out
    assert set(statuses.values()) <= {"PASS", "SKIP"}, out


@pytest.mark.skipif(not ndl.cpu().enabled(), reason="needle's cpu backend is not built")
def test_the_cpu_backend_passes_by_name_and_by_path(capsys):
    rows = ["compact", "ewise_setitem", "reduce_sum", "matmul", "softmax_rows"]
    cpu = "needle.backend_ndarray.ndarray_backend_cpu"
    code, statuses, out = kit(capsys, cpu, "--only", *rows)
    assert code == 0 and statuses == dict.fromkeys(rows, "PASS"), out
    # its .so by path: the module already loaded is the one checked (not initialised twice)
    code, statuses, out = kit(capsys, ndl.cpu().mod.__file__, "--only", "compact")
    assert code == 0 and statuses == {"compact": "PASS"}, out


COURSE_MODULE = '''
"""The course's module layout: float32 only, Array(size), rows taking positional arguments
only (as a compiled module's unnamed parameters), comparisons writing 1.0 and 0.0."""
import numpy as np

__device_name__ = "course"


class Array:
    def __init__(self, size):
        self.array = np.empty(size, dtype=np.float32)

    @property
    def size(self):
        return self.array.size

    def ptr(self):
        return self.array.ctypes.data


def _view(a, shape, strides, offset):
    return np.lib.stride_tricks.as_strided(a.array[offset:], shape, [s * 4 for s in strides])


def _set(out, x):
    out.array[:] = x


def to_numpy(a, shape, strides, offset, /):
    return _view(a, shape, strides, offset).copy()


def from_numpy(a, out, /):
    _set(out, a.flatten())


def fill(out, val, /):
    _set(out, val)


def compact(a, out, shape, strides, offset, /):
    _set(out, _view(a, shape, strides, offset).flatten())


def ewise_setitem(a, out, shape, strides, offset, /):
    _view(out, shape, strides, offset)[...] = a.array.reshape(shape)


def scalar_setitem(size, val, out, shape, strides, offset, /):
    _view(out, shape, strides, offset)[...] = val


def matmul(a, b, out, m, n, p, /):
    _set(out, (a.array[: m * n].reshape(m, n) @ b.array[: n * p].reshape(n, p)).reshape(-1))


def reduce_max(a, out, size, /):
    _set(out, a.array.reshape(-1, size).max(axis=1))


def reduce_sum(a, out, size, /):
    _set(out, a.array.reshape(-1, size).sum(axis=1))


BINARY = dict(add=np.add, mul=np.multiply, div=np.divide, maximum=np.maximum,
              eq=np.equal, ge=np.greater_equal)
for op, f in BINARY.items():
    globals()["ewise_" + op] = lambda a, b, out, /, f=f: _set(out, f(a.array, b.array))
    globals()["scalar_" + op] = lambda a, v, out, /, f=f: _set(out, f(a.array, np.float32(v)))
for op, f in dict(log=np.log, exp=np.exp, tanh=np.tanh).items():
    globals()["ewise_" + op] = lambda a, out, /, f=f: _set(out, f(a.array))


def scalar_power(a, v, out, /):
    _set(out, a.array ** np.float32(v))
'''


def test_a_course_layout_module_is_checked_in_float32(tmp_path, capsys):
    """Its rows pass (called positionally, comparisons in float32); the core rows of needle's
    table that the course lacks are listed as MISSING without failing the run; optional rows
    run through their fallbacks over its rows, or are skipped when those need a missing row."""
    path = tmp_path / "course_backend.py"
    path.write_text(COURSE_MODULE)
    code, statuses, out = kit(capsys, path)
    assert code == 0, out
    assert "(device course, course layout)\ndtypes: float32\n" in out, out
    assert {n for n, s in statuses.items() if s == "PASS"} == check.COURSE_ROWS, out
    missing = {n for n, s in statuses.items() if s == "MISSING"}
    assert missing == set(primitives.CORE) - check.COURSE_ROWS, out
    assert "ewise_sub(a, b, out) (needle's table only: not the course's, fails nothing)" in out
    assert statuses["reduce_sum_axis"] == "SKIP" and "over compact, reduce_sum" in out, out
    assert "not run: it needs ewise_sub, missing" in row_text(out, "softmax_rows"), out
    # a course row it lacks fails the run
    path.write_text(COURSE_MODULE + "del reduce_sum\n")
    code, statuses, out = kit(capsys, path, "--only", "reduce_sum", "ewise_sub")
    assert code == 1 and statuses == {"reduce_sum": "MISSING", "ewise_sub": "MISSING"}, out


def test_course_rows_are_rows_of_the_table():
    assert set(primitives.TABLE) > check.COURSE_ROWS
    assert all(primitives.TABLE[n].core for n in check.COURSE_ROWS)


@pytest.mark.skipif(not ndl.cpu().enabled(), reason="needle's cpu backend is not built")
def test_bench_gives_each_row_a_speed_relative_to_cpu(capsys):
    code, _, out = kit(capsys, NUMPY, "--only", "ewise_add", "matmul", "--bench")
    assert code == 0, out
    ratios = re.findall(r"^(\w+) +PASS .*; [\d.e+-]+ (?:ms|us) on (.*) \(([\d.]+)x cpu's speed\)$",
                        out, re.M)  # fmt: skip
    assert [(r, case) for r, case, _ in ratios] == [
        ("ewise_add", "size 70001"),
        ("matmul", "130x257 @ 257x131"),
    ], out
    assert all(float(x) > 0 for _, _, x in ratios), out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["no_such_module_xyz"], "cannot import no_such_module_xyz: ModuleNotFoundError"),
        (["missing_file.py"], "cannot import missing_file.py: ImportError: no such file"),
        ([NUMPY, "--only", "compactt"], "no row compactt in the primitive table"),
        ([NUMPY, "--dtypes", "float128"], "unknown dtype float128"),
        (["needle.autograd"], "needle.autograd has no Array class"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(capsys, argv, message):
    code, _, out = kit(capsys, *argv)
    assert code == 2 and out.count("\n") == 1 and message in out, out


def test_mismatch_measures_errors_in_ulps():
    prim = primitives.TABLE["ewise_add"]
    args = (np.zeros(3), np.zeros(3), Out(3))
    want = np.array([1.0, 2.0, np.nan], dtype=np.float32)
    got = want.copy()
    got[1] = np.nextafter(np.nextafter(got[1], 3), 3)  # 2 ulp above 2.0
    tol = {"rtol": 1e-7, "atol": 0.0}
    assert report.mismatch(got, want, tol, prim, "float32", args) == [
        "out[1]: expected 2.0, got 2.0000005 (must be within rtol 1e-07, atol 0)",
        "max abs error 4.77e-07, 2 ulp of float32; 1 of 3 elements differ",
    ]
    # exact: NaN equals NaN and -0.0 equals 0.0, as the suite's assert_array_equal
    assert report.mismatch(-np.zeros(2), np.zeros(2), None, prim, "float64", args) is None
    # 16-bit floats bitwise: -0.0 is not 0.0 there
    half = np.zeros(2, dtype=np.float16)
    assert report.mismatch(-half, half, None, prim, "float16", args)[0].startswith("out[0]")
    # a NaN where the reference has a number is the worst element
    got = want.copy()
    got[0], got[1] = np.nan, 2.5
    assert report.mismatch(got, want, tol, prim, "float32", args)[0].startswith("out[0]: expected")


def test_help_lists_check_backend(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert "check-backend" in capsys.readouterr().out
