"""What `needle check-backend` says of a failing case: the call as a reproducer (arguments'
shapes, strides, offsets and values) and where the result is furthest from the reference.

The comparison is the conformance suite's (tests/backends/test_conformance.py `compare`):
exact cases bitwise (-0.0 equals 0.0, NaN equals NaN; 16-bit floats by their bit patterns),
the others within the case's rtol and atol, NaN and infinities where the reference has them.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

from needle.backend_ndarray import primitives
from needle.conformance.calls import Out

ARRAY_KINDS = ("array", "index", "numpy", "out", "inout")
SHOWN = 16  # arrays up to this many elements are printed whole, longer ones by their ends


def elements(args) -> int:
    """How large a case is: its arrays' elements, together."""
    return sum(a.size if isinstance(a, (Out, np.ndarray)) else 0 for a in args)


def _values(x: np.ndarray) -> str:
    """[v0, v1, ...] in full up to SHOWN elements, else the first and last three."""
    flat = np.asarray(x).reshape(-1)
    shown = (
        [str(v) for v in flat]
        if flat.size <= SHOWN
        else [*(str(v) for v in flat[:3]), "...", *(str(v) for v in flat[-3:])]
    )
    return f"[{', '.join(shown)}]"


def _out_dtype(prim, param, arg, dtype: str, course: bool) -> str:
    if arg.dtype is not None:
        return arg.dtype
    own = prim.out_dtype if param.kind == "out" and prim.out_dtype else dtype
    return "float32" if course else own  # the course writes comparisons in float32


def _describe(prim, param, arg, dtype: str, course: bool) -> str:
    if param.kind in ("out", "inout"):
        held = _out_dtype(prim, param, arg, dtype, course)
        init = "" if arg.init is None else f" holding {_values(np.asarray(arg.init).astype(held))}"
        return f"{arg.size} {held}{init}"
    held = primitives.INDEX_DTYPE if param.kind == "index" else dtype
    x = np.asarray(arg).astype(primitives.numpy_dtype(held))
    return f"{x.size} {held}: {_values(x)}"


def _scalar(arg) -> str:
    if isinstance(arg, (tuple, list)):
        return repr(tuple(int(v) for v in arg))
    return repr(float(arg)) if isinstance(arg, (float, np.floating)) else repr(arg)


def reproducer(prim, args, dtype: str, course: bool = False) -> list[str]:
    """The call, arrays by name, then each array: its size, dtype and values."""
    shown = [
        p.name if p.kind in ARRAY_KINDS else f"{p.name}={_scalar(a)}"
        for p, a in zip(prim.params, args)
    ]
    lines = [f"{prim.name}({', '.join(shown)})"]
    for p, a in zip(prim.params, args):
        if p.kind in ARRAY_KINDS:
            lines.append(f"  {p.name}: {_describe(prim, p, a, dtype, course)}")
    return lines


def headline(case, dtype: str) -> list[str]:
    return [f'case "{case.label}" in {dtype}:']


# ---- where a result differs ---------------------------------------------------------------
def differs(got: np.ndarray, want: np.ndarray, tol: dict | None) -> np.ndarray:
    """Elements outside the tolerance (tol None: not equal), as the suite's compare sees them."""
    if want.dtype.name in primitives.HALFS:
        if tol is None:  # bit patterns: NaN payloads and signed zeros count
            return got.view(np.uint16) != want.view(np.uint16)
        got, want = got.astype(np.float32), want.astype(np.float32)
    if want.dtype.kind not in "fc":
        return got != want
    both_nan = np.isnan(got) & np.isnan(want)
    if tol is None:
        return ~((got == want) | both_nan)
    a, e = got.astype(np.float64), want.astype(np.float64)
    with np.errstate(all="ignore"):
        close = np.abs(a - e) <= tol["atol"] + tol["rtol"] * np.abs(e)
    return ~(close | both_nan | (np.isinf(a) & (a == e)))


def ulp(want: np.ndarray) -> np.ndarray:
    """The spacing of the floats of want's dtype at each |want| (subnormal spacing near 0)."""
    info = ml_dtypes.finfo(want.dtype) if want.dtype.name == "bfloat16" else np.finfo(want.dtype)
    x = np.abs(want.astype(np.float64))
    with np.errstate(all="ignore"):
        exponent = np.floor(np.log2(np.maximum(x, float(info.tiny))))
    return np.exp2(exponent) * float(info.eps)


def _where(prim, args, index: int, shape) -> str:
    """The name of result element `index`: out[i], act[j] of several outs, result[i, j]."""
    outs = [(p.name, a.size) for p, a in zip(prim.params, args) if isinstance(a, Out)]
    if not outs:
        return f"result[{', '.join(str(int(i)) for i in np.unravel_index(index, shape))}]"
    for name, size in outs:
        if index < size:
            return f"{name}[{index}]"
        index -= size
    return f"element {index}"


def _error_line(got, want, bad, dtype: str) -> str:
    a, e = got.astype(np.float64), want.astype(np.float64)
    with np.errstate(all="ignore"):
        err = np.abs(a - e)
    finite = bad & np.isfinite(err)
    count = f"{int(bad.sum())} of {bad.size} elements differ"
    if want.dtype.kind not in "fc" and want.dtype.name not in primitives.HALFS:
        largest = int(err[bad].max()) if want.dtype.kind != "b" else 1
        return f"max error {largest}; {count}"
    if not finite.any():
        return f"NaN or infinity where the reference has none or another; {count}"
    ulps = (err / ulp(want))[finite].max()
    return f"max abs error {err[finite].max():.3g}, {ulps:.3g} ulp of {dtype}; {count}"


def mismatch(got, want, tol, prim, dtype: str, args, course: bool = False) -> list[str] | None:
    """None if `got` agrees with `want` as the case requires; else what differs, at the worst
    element (the largest error, a NaN or infinity first)."""
    if want is None:
        return None if got is None else [f"returned {got!r}, expected None"]
    if course and want.dtype == np.bool_:
        want = want.astype(np.float32)  # the course's comparisons write 1.0 and 0.0
    got = np.asarray(got)
    if got.dtype != want.dtype or got.shape != want.shape:
        shapes = f"{got.dtype} of shape {got.shape}, expected {want.dtype} of shape {want.shape}"
        return [f"returned {shapes}"]
    bad = differs(got, want, tol).reshape(-1)
    if not bad.any():
        return None
    flat_got, flat_want = got.reshape(-1), want.reshape(-1)
    with np.errstate(all="ignore"):
        err = np.abs(flat_got.astype(np.float64) - flat_want.astype(np.float64))
    worst = np.flatnonzero(bad)[np.argmax(np.nan_to_num(err[bad], nan=np.inf))]
    allowed = "equal" if tol is None else f"within rtol {tol['rtol']:.3g}, atol {tol['atol']:.3g}"
    where = _where(prim, args, int(worst), want.shape)
    values = f"expected {flat_want[worst]!s}, got {flat_got[worst]!s}"
    return [f"{where}: {values} (must be {allowed})", _error_line(flat_got, flat_want, bad, dtype)]
