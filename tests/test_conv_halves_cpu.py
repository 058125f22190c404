"""The C++ CPU backend's conv2d rows in float16 and bfloat16 (its HALF_ROWS), forward and both
gradients: float32 sums rounded once per output, except the weight gradient's, which its float32
out holds unrounded (HALF_ROW_FLOAT32_PARAMS).

Two paths. Panels widened to float32 for the float32 kernel (float16 always; bfloat16 without
AVX512-BF16, or with NEEDLE_GEMM_BF16=0, which the backend reads once: that runs in a process
of its own): the result must equal, bit for bit, the float32 row on the widened operands
rounded to the 16-bit type, or for the weight gradient not rounded (same kernel, blocking and
thread split, so the same sums). The
vdpbf16ps kernel (bfloat16 where the CPU has it) adds its pairs in another order: it must lie
within one bfloat16 ulp plus twice the float32 summation bound (2 (k + 2) u (|a| * |b|), k the
depth) of torch's float32 conv on the widened operands, as must both paths. Shapes: kernels 1,
3 and 5, strides 1 and 2, padding 0 to 2, 1, 3 and 17 channels, odd depths (the pair padding),
depths past a depth block, batches of 1 and several, outputs 1 to 40 channels wide, and sizes
that split across 2 threads.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

try:
    from needle.backend_ndarray import ndarray_backend_cpu as cpu
except ImportError as exc:  # the extension is built by `pip install -e .`
    pytest.skip(f"ndarray_backend_cpu is not built: {exc}", allow_module_level=True)

from test_cpu_matmul import read, to_array

from needle.backend_ndarray import primitives

HALFS = primitives.HALFS
ROWS = ("conv2d", "conv2d_input_grad", "conv2d_weight_grad")
DIGITS = {"float16": 11, "bfloat16": 8}  # significand bits
# (n, h, w, c_in, k, c_out, stride, pad)
SHAPES = [
    (1, 5, 5, 1, 1, 3, 1, 0),  # depth 1
    (2, 7, 9, 3, 3, 17, 1, 1),  # depth 27; 17 channels: a second, nearly empty vector
    (3, 8, 8, 17, 5, 16, 2, 2),  # 16 output channels: one vector per row
    (2, 6, 6, 33, 3, 40, 2, 0),  # two column tiles, no padding
    (4, 4, 4, 3, 3, 1, 1, 2),  # one output channel; taps mostly on the padding
    (1, 9, 9, 101, 3, 35, 1, 1),  # depth 909: two depth blocks, the last one odd
    (8, 16, 16, 17, 3, 40, 1, 1),  # 2 threads; the weight gradient's pixels split in parts
]


def numpy_dtype(name: str) -> np.dtype:
    return primitives.numpy_dtype(name)


def operands(shape, row: str, rng) -> tuple[np.ndarray, np.ndarray, int]:
    """The row's two operands (float64, NHWC / (kh, kw, c_in, c_out) / adjoint) and out's size."""
    n, h, w, c_in, k, c_out, s, p = shape
    oh, ow = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    x = rng.standard_normal((n, h, w, c_in))
    wt = rng.standard_normal((k, k, c_in, c_out))
    g = rng.standard_normal((n, oh, ow, c_out))
    return {"conv2d": (x, wt, g.size), "conv2d_input_grad": (g, wt, x.size)}.get(
        row, (x, g, wt.size)
    )


def out_dtype(row: str, dtype: str) -> str:
    """The dtype of the row's out for operands of `dtype`: float32 for a 16-bit weight gradient."""
    return "float32" if row == "conv2d_weight_grad" else dtype


def conv(row: str, dtype: str, a: np.ndarray, b: np.ndarray, size: int, shape) -> np.ndarray:
    """The backend's row on a and b held in `dtype` (flat result, in its out_dtype)."""
    n, h, w, c_in, k, c_out, s, p = shape
    out = cpu.Array(size, out_dtype(row, dtype))
    x, y = (to_array(np.ascontiguousarray(t.astype(numpy_dtype(dtype)))) for t in (a, b))
    getattr(cpu, row)(x, y, out, n, h, w, c_in, k, k, c_out, s, p)
    return read(out, (size,))


def bits(x: np.ndarray) -> np.ndarray:
    return x.view(f"u{x.itemsize}")


def fallback_mismatches(half: str) -> list[str]:
    """Where the row in `half` differs from the float32 row on the widened operands, rounded
    to the row's out dtype, on 1 and 2 threads (the weight gradient's split depends on the
    count)."""
    rng = np.random.default_rng(18)
    before, found = cpu.get_num_threads(), []
    try:
        for threads in (1, 2):
            cpu.set_num_threads(threads)
            for shape in SHAPES:
                for row in ROWS:
                    a, b, size = operands(shape, row, rng)
                    a, b = (t.astype(numpy_dtype(half)).astype(np.float32) for t in (a, b))
                    expected = conv(row, "float32", a, b, size, shape)
                    expected = expected.astype(numpy_dtype(out_dtype(row, half)))
                    got = conv(row, half, a, b, size, shape)
                    if not np.array_equal(bits(got), bits(expected)):
                        found.append(f"{row} {shape} on {threads} threads")
    finally:
        cpu.set_num_threads(before)
    return found


def test_float16_equals_the_rounded_float32_conv():
    assert fallback_mismatches("float16") == []


def test_bfloat16_fallback_equals_the_rounded_float32_conv():
    """bfloat16 on the float32 kernel (NEEDLE_GEMM_BF16=0), in a process of its own."""
    code = (
        f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
        "import test_conv_halves_cpu as t; "
        "print(t.cpu.__gemm_bf16__, t.fallback_mismatches('bfloat16'))"
    )
    env = dict(os.environ, NEEDLE_GEMM_BF16="0")
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split(maxsplit=1) == ["float32", "[]\n"]


def torch_rows(row: str, a: np.ndarray, b: np.ndarray, shape, dtype) -> np.ndarray:
    """torch's conv2d (or its gradient by autograd) in `dtype`, flat, NHWC / HWIO."""
    torch = pytest.importorskip("torch")
    n, h, w, c_in, k, c_out, s, p = shape
    a, b = torch.tensor(a, dtype=dtype), torch.tensor(b, dtype=dtype)
    if row == "conv2d":
        x, wt = a.permute(0, 3, 1, 2), b.permute(3, 2, 0, 1)
        return torch.nn.functional.conv2d(x, wt, stride=s, padding=p).permute(0, 2, 3, 1).numpy()
    if row == "conv2d_input_grad":
        x = torch.zeros((n, c_in, h, w), dtype=dtype, requires_grad=True)
        y = torch.nn.functional.conv2d(x, b.permute(3, 2, 0, 1), stride=s, padding=p)
        y.backward(a.permute(0, 3, 1, 2))
        return x.grad.permute(0, 2, 3, 1).numpy()
    wt = torch.zeros((c_out, c_in, k, k), dtype=dtype, requires_grad=True)
    y = torch.nn.functional.conv2d(a.permute(0, 3, 1, 2), wt, stride=s, padding=p)
    y.backward(b.permute(0, 3, 1, 2))
    return wt.grad.permute(2, 3, 1, 0).numpy()


@pytest.mark.parametrize("row", ROWS)
@pytest.mark.parametrize("half", HALFS)
def test_within_one_ulp_of_torch_float32(half, row):
    """Both dtypes on the path this CPU takes (for bfloat16 the vdpbf16ps kernel where there
    is one) against torch's float32 conv on the widened operands."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(7)
    for shape in SHAPES:
        a, b, size = operands(shape, row, rng)
        a, b = (t.astype(numpy_dtype(half)).astype(np.float64) for t in (a, b))
        expected = torch_rows(row, a, b, shape, torch.float32).ravel().astype(np.float64)
        magnitude = torch_rows(row, np.abs(a), np.abs(b), shape, torch.float64).ravel()
        depth = (shape[4] ** 2) * {"conv2d": shape[3], "conv2d_input_grad": shape[5]}.get(
            row, shape[0] * shape[1] * shape[2]
        )
        ulp = np.ldexp(1.0, np.frexp(expected)[1] - DIGITS[half])
        if row == "conv2d_weight_grad":  # (float32 out: the sums, not rounded to `half`)
            ulp = 0.0
        allowed = ulp + 2 * 2 * (depth + 2) * 2.0**-24 * magnitude
        err = np.abs(conv(row, half, a, b, size, shape).astype(np.float64) - expected)
        assert (err <= allowed).all(), (shape, float((err / allowed).max()))


@pytest.mark.parametrize("row", ROWS)
def test_the_bfloat16_path_is_the_vdpbf16ps_kernel_where_the_cpu_has_one(row):
    """So that test_within_one_ulp_of_torch_float32 checks that kernel on such a CPU (this
    project's machines have one; elsewhere bfloat16 runs the fallback, tested above). It shows
    by flushing subnormal factors: 2^-130 * 2^100 is 2^-30 on the float32 kernel, 0 there."""
    if cpu.__gemm_bf16__ != "avx512_bf16":
        pytest.skip("this CPU has no AVX512-BF16: bfloat16 runs the fallback, tested above")
    shape = (1, 1, 1, 1, 1, 1, 1, 0)
    a, b = np.full(1, 2.0**-130), np.full(1, 2.0**100)
    for kind, expected in (("bfloat16", 0.0), ("float32", 2.0**-30)):
        got = conv(row, kind, a, b, 1, shape).astype(np.float64)
        np.testing.assert_array_equal(got, [expected])
    # (and a normal product on the same path is exact)
    np.testing.assert_array_equal(conv(row, "bfloat16", a * 2**10, b, 1, shape), [2.0**-20])


@pytest.mark.parametrize("row", ROWS)
@pytest.mark.parametrize("half", HALFS)
def test_nan_and_inf_propagate_as_in_float32(half, row):
    """A NaN and an infinity in the first operand (NHWC) give NaN and infinities (with their signs)
    where the float32 row on the widened operands gives them; elsewhere, finite values."""
    rng = np.random.default_rng(11)
    for shape in SHAPES[1:4]:
        a, b, size = operands(shape, row, rng)
        a, b = (t.astype(numpy_dtype(half)).astype(np.float32) for t in (a, b))
        a[0, 0, 0, 0], a[-1, 1, 1, -1] = np.nan, -np.inf  # (read whatever the stride)
        with np.errstate(invalid="ignore"):
            expected = conv(row, "float32", a, b, size, shape)
            got = conv(row, half, a, b, size, shape).astype(np.float32)
        assert np.isnan(expected).any() and np.isinf(expected).any()
        np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
        np.testing.assert_array_equal(np.isposinf(got), np.isposinf(expected))
        np.testing.assert_array_equal(np.isneginf(got), np.isneginf(expected))


def test_forward_and_input_gradient_do_not_depend_on_the_thread_count():
    shape = SHAPES[-1]
    before, results = cpu.get_num_threads(), []
    try:
        for threads in (1, 2):
            cpu.set_num_threads(threads)
            for half in HALFS:
                for row in ROWS[:2]:
                    a, b, size = operands(shape, row, np.random.default_rng(2))
                    results.append(bits(conv(row, half, a, b, size, shape)))
    finally:
        cpu.set_num_threads(before)
    for one, two in zip(results[:4], results[4:]):
        np.testing.assert_array_equal(one, two)


def test_mixed_16_bit_dtypes_raise_type_error():
    shape = SHAPES[1]
    a, b, size = operands(shape, "conv2d", np.random.default_rng(0))
    n, h, w, c_in, k, c_out, s, p = shape
    x = to_array(a.astype(numpy_dtype("bfloat16")))
    y = to_array(b.astype(numpy_dtype("float16")))
    with pytest.raises(TypeError, match="conv2d"):
        cpu.conv2d(x, y, cpu.Array(size, "bfloat16"), n, h, w, c_in, k, k, c_out, s, p)


@pytest.mark.parametrize("row", ROWS)
@pytest.mark.parametrize("half", HALFS)
def test_a_nan_in_one_call_does_not_reach_the_next(half, row):
    """The zero step after an odd depth (the vdpbf16ps kernel's pairs) is written, not left
    as whatever the reused panel buffers held: a call full of NaN, then a finite one."""
    rng = np.random.default_rng(13)
    deep = SHAPES[5]  # then odd depths: 1, 3 and 25 pixels; 27, 153 and classes of 2 pixels
    for odd in SHAPES[:2]:
        a, b, size = operands(deep, row, rng)
        with np.errstate(invalid="ignore"):
            conv(row, half, np.full_like(a, np.nan), np.full_like(b, np.nan), size, deep)
        a, b, size = operands(odd, row, rng)
        assert np.isfinite(conv(row, half, a, b, size, odd).astype(np.float32)).all(), odd


@pytest.mark.parametrize("half", HALFS)
def test_biased_rows_add_a_float32_bias_and_sum_its_gradient_in_float32(half):
    """conv2d_bias: the 16-bit conv2d row's result widened, plus the float32 bias, rounded once
    more (bit for bit); conv2d_weight_bias_grad: the weight row's result and the adjoint's
    column sums kept in float32. A 16-bit bias is refused (HALF_ROW_FLOAT32_PARAMS)."""
    rng = np.random.default_rng(21)
    for shape in SHAPES:
        n, h, w, c_in, k, c_out, s, p = shape
        dims = (n, h, w, c_in, k, k, c_out, s, p)
        x, wt, size = operands(shape, "conv2d", rng)
        bias = rng.standard_normal(c_out).astype(np.float32)
        x16, w16 = (to_array(t.astype(numpy_dtype(half)).reshape(-1)) for t in (x, wt))
        out = cpu.Array(size, half)
        cpu.conv2d_bias(x16, w16, to_array(bias), out, *dims)
        plain = conv("conv2d", half, x, wt, size, shape).astype(np.float32)
        want = (plain.reshape(-1, c_out) + bias).astype(numpy_dtype(half)).reshape(-1)
        np.testing.assert_array_equal(bits(read(out, (size,))), bits(want), err_msg=f"{shape}")

        x, g, size = operands(shape, "conv2d_weight_grad", rng)
        g16 = g.astype(numpy_dtype(half))
        dw, d_bias = cpu.Array(size), cpu.Array(c_out)
        x16 = to_array(x.astype(numpy_dtype(half)).reshape(-1))
        cpu.conv2d_weight_bias_grad(x16, to_array(g16.reshape(-1)), dw, d_bias, *dims)
        want_dw = conv("conv2d_weight_grad", half, x, g, size, shape)
        np.testing.assert_array_equal(bits(read(dw, (size,))), bits(want_dw), err_msg=f"{shape}")
        want_bias = g16.astype(np.float64).reshape(-1, c_out).sum(axis=0)
        np.testing.assert_allclose(read(d_bias, (c_out,)), want_bias, rtol=1e-6, atol=1e-6)
    with pytest.raises(TypeError, match=f"conv2d_bias's bias is {half}, not float32"):
        cpu.conv2d_bias(x16, w16, cpu.Array(c_out, half), out, *dims)
    for row, outs in (
        ("conv2d_weight_grad", (cpu.Array(size, half),)),
        ("conv2d_weight_bias_grad", (cpu.Array(size, half), cpu.Array(c_out))),
    ):
        with pytest.raises(TypeError, match=f"{row}'s out is {half}, not float32"):
            getattr(cpu, row)(x16, to_array(g16.reshape(-1)), *outs, *dims)
