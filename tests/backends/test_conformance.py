"""Every backend against the primitive table, primitive by primitive.

For each row of ``primitives.TABLE``, each backend of conftest.py and each dtype of the row
the backend holds, the cases of cases.py run through the backend's own primitive and, for
an optional row, through the table's fallback over that backend's core primitives; both
are called by keyword with the table's parameter names and compared with the reference.
On the NumPy backend this checks the table against itself: its references, and every
fallback against the NumPy backend's own primitive (or an independent NumPy definition).
"""

import itertools
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from needle.backend_ndarray import ndarray_backend_numpy as nb_np, primitives
from needle.conformance.calls import (
    Out,
    call,
    fit,
    marshal,
    operand,
    read,
    scalar_for,
    to_array,
    view_of,
    writes_each_element_once,
)
from needle.conformance.cases import (
    AXPBY,
    EPS,
    _fit_args,
    axpby_tol,
    cases,
    implementations,
    matmul_tol,
    reference,
    sum_tol,
)

from .strategies import strided_views


def rows(*names, widths_only=False):
    """Mark a test of these rows of the table: conftest runs it in the dtypes they take
    (with `widths_only`, one per element width and kind: int32 and int64 move as float32
    and float64 do, and their own cases cover them in test_primitive)."""

    def mark(test):
        test.rows = names
        test.widths_only = widths_only
        return test

    return mark


def compare(actual, expected, tol, dtype, what):
    if expected is None:
        assert actual is None, what
        return
    want = expected.dtype if dtype == primitives.ANY_DTYPE else np.dtype(dtype)
    assert actual.dtype == want and actual.shape == expected.shape, what
    if want.name in primitives.HALFS:  # bit patterns (NaNs too); NumPy cannot compare bfloat16
        if tol is None:
            actual, expected = actual.view(np.uint16), expected.view(np.uint16)
        else:
            actual, expected = actual.astype(np.float32), expected.astype(np.float32)
    if tol is None:
        np.testing.assert_array_equal(actual, expected, err_msg=what)
    else:
        np.testing.assert_allclose(actual, expected, equal_nan=True, err_msg=what, **tol)


# The MSL emulation runs every GPU thread as an OS thread, so the fallbacks, which launch
# several kernels per row or per operand, run there on the cases of up to this many
# elements; the core primitives they call get the large cases themselves.
SLOW_FALLBACK_ELEMENTS = 2048


def _elements(args) -> int:
    return max(
        [np.size(a) for a in args if isinstance(a, np.ndarray)]
        + [a.size for a in args if isinstance(a, Out)]
        + [0]
    )


def _skipped(backend, label, args) -> bool:
    return label == "fallback" and not backend.fast and _elements(args) > SLOW_FALLBACK_ELEMENTS


def test_primitive(backend, prim, dtype):
    ref = reference(prim, backend)
    out_dtype = prim.out_dtype or dtype
    with np.errstate(all="ignore"):
        expected = [
            (case, call(nb_np, prim.name, *case.args, dtype=dtype, impl=ref))
            for case in cases(prim, backend, dtype)
        ]
        assert expected, f"no cases for {prim.name}"
        for label, impl in implementations(backend.mod, prim):
            # A fallback adds in index order, except where it calls the backend's own
            # scatter_add_rows (scatter_add_axis's does), which CUDA's adds with atomics: on an
            # H200 sums of 40 float32 values into 3 came out a last bit apart.
            ordered = backend.ordered_scatter or (
                label == "fallback" and prim.name != "scatter_add_axis"
            )
            for case, want in expected:
                if _skipped(backend, label, case.args):
                    continue
                tol = case.tol(dtype)
                if tol is None and case.unordered_tol is not None and not ordered:
                    tol = case.unordered_tol(dtype)
                got = call(backend.mod, prim.name, *case.args, dtype=dtype, impl=impl)
                compare(
                    got,
                    want,
                    tol,
                    out_dtype,
                    f"{backend.id} {label} {prim.signature} in {dtype}: {case.label}",
                )


def test_half_row(backend, prim, dtype):
    """A row the backend computes on 16-bit floats itself (its HALF_ROWS) against what
    NDArray's conversion gives on any backend: the NumPy backend's float32 row on the data
    widened exactly, rounded once to the 16-bit dtype. Equal where the float32 cases are exact;
    else within one 16-bit ulp plus the float32 tolerance (a float32 result a few ulps off can
    round to the neighbouring 16-bit value)."""
    half = primitives.numpy_dtype(dtype)
    with np.errstate(all="ignore"):
        for case in cases(prim, backend, "float32"):
            args = _fit_args(prim, case.args, dtype)
            wide = _fit_args(prim, args, "float32")
            want = call(nb_np, prim.name, *wide, dtype="float32", impl=reference(prim, backend))
            if prim.out_dtype is None:
                want = want.astype(half)
            got = call(backend.mod, prim.name, *args, dtype=dtype)
            tol = case.tol("float32")
            # Values, not bit patterns (as the float32 cases compare): -0.0 equals 0.0 here.
            tol = dict(rtol=0, atol=0) if tol is None else tol
            tol = dict(rtol=tol["rtol"] + (tol["rtol"] and EPS[dtype]), atol=tol["atol"])
            what = f"{backend.id} {prim.signature} in {dtype}: {case.label}"
            compare(got, want, tol, prim.out_dtype or dtype, what)


test_half_row.halves = True  # type: ignore[attr-defined]


def test_unlisted_dtypes_raise_type_error(backend, prim):
    """A row called with a dtype it does not list (that the backend holds) raises a
    TypeError naming the primitive and the dtype: not a crash, not a reinterpretation.
    Checked on the backend's own primitives (a fallback raises from the core rows it calls)."""
    computed = primitives.half_rows(backend.mod)  # rows it also runs on 16-bit floats
    unlisted = [
        d
        for d in backend.dtypes
        if d not in prim.dtypes and not (d in primitives.HALFS and prim.name in computed)
    ]
    own = getattr(backend.mod, prim.name, None)
    if own is None:
        pytest.skip(f"{backend.id} leaves {prim.name} to the table's fallback")
    # The row's smallest case with some data (an empty call may return before any check).
    sized = [c for c in cases(prim, backend, prim.dtypes[0]) if _elements(c.args) > 0]
    case = min(sized, key=lambda c: _elements(c.args))
    for dtype in unlisted:
        with np.errstate(all="ignore"), pytest.raises(TypeError) as raised:
            call(backend.mod, prim.name, *case.args, dtype=dtype)
        message = str(raised.value)
        assert prim.name in message and dtype in message, (prim.name, dtype, message)


test_unlisted_dtypes_raise_type_error.unlisted = True  # type: ignore[attr-defined]


# ---- properties beyond one call ---------------------------------------------------------------
@rows("to_numpy", "compact", "scalar_setitem", "ewise_setitem", widths_only=True)
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(view=strided_views(), val=st.floats(-1e6, 1e6))
def test_layout_on_random_views(backend, dtype, view, val):
    """to_numpy, compact, scalar_setitem and (where no two elements share storage)
    ewise_setitem on views NumPy draws: slices with steps, integer indices, permutations,
    broadcasting."""
    size, shape, strides, offset = view
    n = math.prod(shape)
    data, src = fit(np.random.default_rng(size).standard_normal((2, size)), dtype)
    val = scalar_for(dtype, val)
    args = {
        "to_numpy": (data, shape, strides, offset),
        "compact": (data, Out(n), shape, strides, offset),
        "scalar_setitem": (n, val, Out(size, data), shape, strides, offset),
    }
    if writes_each_element_once(shape, strides, offset):
        args["ewise_setitem"] = (src[:n], Out(size, data), shape, strides, offset)
    for name, arg in args.items():
        compare(
            call(backend.mod, name, *arg, dtype=dtype),
            call(nb_np, name, *arg, dtype=dtype),
            None,
            dtype,
            f"{name} of {view}",
        )


@st.composite
def matmul_operand(draw, batch, rows, cols):
    """(flat storage, offset, (batch, row, col) strides) of a random (batch, rows, cols) view:
    a window with an offset and steps, stored transposed (row stride 1), broadcast over the
    batch (batch stride 0) or over its rows (row stride 0)."""
    step_r, step_c = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    start_r, start_c = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    stored_rows = 1 if rows > 1 and draw(st.integers(0, 5)) == 0 else rows
    pb = 1 if batch > 1 and draw(st.booleans()) else batch
    pr = start_r + step_r * (stored_rows - 1) + 1 + draw(st.integers(0, 2))
    pc = start_c + step_c * (cols - 1) + 1 + draw(st.integers(0, 2))
    base = np.zeros(pb * pr * pc)
    if draw(st.booleans()):  # transposed storage: the parent is (pb, pc, pr)
        parent = base.reshape(pb, pc, pr).transpose(0, 2, 1)
    else:
        parent = base.reshape(pb, pr, pc)
    view = parent[:, start_r::step_r, start_c::step_c][:, :stored_rows, :cols]
    size, _, strides, offset = view_of(base, np.broadcast_to(view, (batch, rows, cols)))
    return size, offset, strides


@st.composite
def matmul_problems(draw):
    batch, m, n, p = draw(st.integers(1, 3)), *(draw(st.integers(1, 40)) for _ in range(3))
    return batch, m, n, p, draw(matmul_operand(batch, m, n)), draw(matmul_operand(batch, n, p))


@rows("matmul_strided")
@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(problem=matmul_problems())
def test_matmul_strided_on_random_views(backend, dtype, problem):
    """matmul_strided (own and fallback) on operand views drawn at random."""
    batch, m, n, p, (a_size, a_offset, a_strides), (b_size, b_offset, b_strides) = problem
    rng = np.random.default_rng(a_size * 1000 + b_size)
    args = (
        rng.standard_normal(a_size),
        rng.standard_normal(b_size),
        Out(batch * m * p),
        batch,
        m,
        n,
        p,
        a_offset,
        a_strides,
        b_offset,
        b_strides,
    )
    prim = primitives.TABLE["matmul_strided"]
    want = call(nb_np, prim.name, *args, dtype=dtype, impl=reference(prim, backend))
    for label, impl in implementations(backend.mod, prim):
        if _skipped(backend, label, args):
            continue
        compare(
            call(backend.mod, "matmul_strided", *args, dtype=dtype, impl=impl),
            want,
            matmul_tol(n)(dtype),
            dtype,
            f"{label} {problem}",
        )


@rows("reduce_sum_axis", "reduce_max_axis", widths_only=True)
@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(outer=st.integers(0, 4), reduce_size=st.integers(1, 300), inner=st.integers(1, 70))
def test_reductions_over_a_middle_axis_of_random_shapes(backend, dtype, outer, reduce_size, inner):
    a = np.random.default_rng(reduce_size).standard_normal(outer * reduce_size * inner) + 0.5
    args = (fit(a, dtype), Out(outer * inner), outer, reduce_size, inner)
    floating = dtype in primitives.FLOATS
    for name, tol in (
        ("reduce_sum_axis", sum_tol(reduce_size)(dtype) if floating else None),
        ("reduce_max_axis", None),
    ):
        if dtype not in primitives.TABLE[name].dtypes:
            continue
        want = call(nb_np, name, *args, dtype=dtype)
        for label, impl in implementations(backend.mod, primitives.TABLE[name]):
            if _skipped(backend, label, args):
                continue
            compare(
                call(backend.mod, name, *args, dtype=dtype, impl=impl),
                want,
                tol,
                dtype,
                f"{label} {name} ({outer}, {reduce_size}, {inner})",
            )


def test_array(backend, dtype):
    for size in (0, 1, 5, 1000):
        arr = backend.mod.Array(size, dtype)
        assert arr.size == size and arr.dtype == dtype and arr.ptr() != 0
    assert backend.mod.Array(3).dtype == "float32"


def test_to_numpy_returns_an_owned_copy(backend, dtype):
    mod = backend.mod
    arr = to_array(mod, np.arange(6.0), dtype)
    view = mod.to_numpy(arr, (2, 3), (3, 1), 0)
    mod.fill(arr, 3.0)
    mod.synchronize()
    np.testing.assert_array_equal(view, np.arange(6.0).astype(dtype).reshape(2, 3))
    assert view.dtype == np.dtype(dtype) and view.flags.writeable
    view[0, 0] = 5.0
    np.testing.assert_array_equal(read(mod, arr), np.full(6, 3.0).astype(dtype))


@rows("ewise_axpby")
def test_ewise_axpby_in_place(backend, dtype):
    """out may be a or b itself (the optimizers' w = w - lr * grad): every element is read
    before it is written, and the other operand is left as it was."""
    rng = np.random.default_rng(0)
    prim = primitives.TABLE["ewise_axpby"]
    for label, impl in implementations(backend.mod, prim):
        for i, (size, target) in enumerate(itertools.product((0,) + backend.sizes, "ab")):
            alpha, beta = AXPBY[i % len(AXPBY)]
            a, b = operand(rng, "normal", size), operand(rng, "normal", size)
            want = {"a": a.astype(dtype), "b": b.astype(dtype)}
            want[target] = (
                np.asarray(alpha, dtype) * want["a"] + np.asarray(beta, dtype) * want["b"]
            )
            arrays = {"a": to_array(backend.mod, a, dtype), "b": to_array(backend.mod, b, dtype)}
            impl(**arrays, alpha=alpha, beta=beta, out=arrays[target])
            what = f"{backend.id} {label} ewise_axpby into {target}, size {size}"
            for name, arr in arrays.items():
                compare(
                    read(backend.mod, arr),
                    want[name],
                    axpby_tol(a, b, alpha, beta)(dtype) if name == target else None,
                    dtype,
                    what,
                )


@rows("scatter_add_rows")
def test_scatter_add_rows_leaves_other_rows_as_they_were(backend, dtype):
    """Rows nobody indexes keep their bits, -0.0 and NaN included, as do spare elements
    past the last whole row."""
    rng = np.random.default_rng(1)
    indices = np.array([6, 0, 6, 2, 1, 3, 5])  # only the first 4 are used
    init = rng.standard_normal(7 * 5 + 2)
    init[5:10] = -0.0  # row 1: not among the first 4 indices
    init[15] = np.nan  # row 3: neither
    untouched = np.r_[5:10, 15:30, 35 : init.size]  # rows 1, 3, 4, 5 and the spare elements
    prim = primitives.TABLE["scatter_add_rows"]
    for label, impl in implementations(backend.mod, prim):
        got = call(
            backend.mod,
            prim.name,
            rng.standard_normal(6 * 5),
            indices,
            Out(init.size, init),
            4,
            5,
            dtype=dtype,
            impl=impl,
        )
        np.testing.assert_array_equal(got[untouched], init[untouched].astype(dtype), label)
        np.testing.assert_array_equal(
            np.signbit(got[untouched]), np.signbit(init[untouched]), label
        )


@pytest.mark.parametrize("layout", ["contiguous", "strided"])
def test_kernels_queue_in_order(backend, layout):
    """Primitives that read what earlier ones wrote (in place, an asynchronous backend's
    queue) see those writes: out = ((a + 1) * (a + 1)) written over its own input."""
    mod = backend.mod
    a = to_array(mod, np.arange(12.0), "float32")
    out = mod.Array(12, "float32")
    mod.scalar_add(a, 1.0, out)
    mod.ewise_mul(out, out, out)
    if layout == "strided":
        mod.compact(out, a, (4, 3), (1, 4), 0)
        expected = ((np.arange(12.0) + 1) ** 2).reshape(3, 4).T.reshape(-1)
        np.testing.assert_array_equal(read(mod, a), expected)
    else:
        np.testing.assert_array_equal(read(mod, out), (np.arange(12.0) + 1) ** 2)


@rows("cross_entropy_rows")
def test_cross_entropy_labels_that_are_no_classes_raise(backend, dtype):
    """cross_entropy_rows (own and fallback) checks its labels as nd.RowIndices does, with its
    messages, before it writes: ValueError for a label that is not a whole number (without
    truncate), IndexError naming the range for one outside [0, cols) (NaN under truncate)."""
    prim = primitives.TABLE["cross_entropy_rows"]
    z = np.arange(12.0)
    bad = [
        ([0.0, 1.5, 2.0], False, ValueError, "whole numbers"),
        ([0.0, np.nan, 2.0], False, ValueError, "whole numbers"),
        ([0.0, 4.0, 2.0], False, IndexError, r"\[0, 4\), got 0..4"),
        ([-1.0, 3.0, 2.0], True, IndexError, r"\[0, 4\), got -1..3"),
        ([4.5, 0.0, 2.0], True, IndexError, r"\[0, 4\), got 0..4"),
        ([0.0, np.inf, 1.0], True, IndexError, r"got -9223372036854775808..1"),
        ([np.nan, 0.0, 1.0], True, IndexError, r"got -9223372036854775808..1"),
    ]
    for labels, truncate, error, match in bad:
        for _label, impl in implementations(backend.mod, prim):
            loss, grad = Out(1, np.full(1, 7.0)), Out(12, np.full(12, 7.0))
            args = (z, np.array(labels), loss, grad, 3, 4, truncate)
            kwargs, outs = marshal(backend.mod, "cross_entropy_rows", *args, dtype=dtype)
            with pytest.raises(error, match=match):
                impl(**kwargs)
            for out in outs:
                assert (read(backend.mod, out) == 7).all(), (labels, truncate)


@rows("gather_axis", "scatter_add_axis", widths_only=True)
def test_axis_indices_out_of_range_raise(backend, dtype):
    """gather_axis and scatter_add_axis (own and fallback) raise IndexError naming an index
    outside [0, n): negative, n itself, far past it (native code checks before it reads)."""
    for name in ("gather_axis", "scatter_add_axis"):
        prim = primitives.TABLE[name]
        if dtype not in prim.dtypes:
            continue
        for bad in (-1, 5, 10**12):
            idx = np.array([0, 1, bad, 2])
            # gather: (2, 5, 1) by (2, 2, 1) into 4; scatter_add: 4 values into (2, 5, 1)
            a, out = (np.arange(10.0), Out(4)) if name == "gather_axis" else (np.ones(4), Out(10))
            for _label, impl in implementations(backend.mod, prim):
                with pytest.raises(IndexError, match=f"index {bad} "):
                    call(backend.mod, name, a, idx, out, 2, 5, 1, 2, dtype=dtype, impl=impl)
