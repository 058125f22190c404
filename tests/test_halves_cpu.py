"""float16 and bfloat16 on the C++ CPU backend, beyond the conformance suite's cases.

Conversions (the astype row) are compared bit for bit with NumPy's float16 and ml_dtypes'
bfloat16, NaN payloads included: every 16-bit pattern into every dtype, and float32 and
float64 samples into both 16-bit types (random bit patterns of every exponent, the values on,
just above and just below each rounding tie, the overflow boundary, subnormals, NaNs with
payloads). Each runs once in one call (whole vectors, split across threads) and once in
pieces shorter than a vector (partial vectors).

The rows of the module's HALF_ROWS (elementwise, reductions, softmax) compute 16-bit arrays in
float32 lanes: each must give exactly astype(float32 row(astype(inputs, float32)), half), which
is checked bit for bit on the conformance suite's cases of each row (sizes around a vector and
past a thread's share) with their data rounded to the 16-bit type and again with data full of
NaNs with payloads, infinities, signed zeros, subnormals and values whose results overflow.
HALF_ROWS must be exactly the rows that take the 16-bit floats although their rows in the
table do not list them; every other row refuses them with a TypeError.

The 16-bit GEMM, whose float32 sums are rounded once, is checked against a float64 reference
at sizes around the kernels' tiles, on row-major and transposed operands: the result must be
within one 16-bit ulp plus the float32 summation bound (2 k u (|A| @ |B|), see
test_cpu_matmul.py) of it. bfloat16 runs on the AVX512-BF16 kernel where the CPU has one,
and again in a process with NEEDLE_GEMM_BF16=0, which leaves it to the float32 kernel.
"""

import os
import subprocess
import sys
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

try:
    from needle.backend_ndarray import ndarray_backend_cpu as cpu
except ImportError as exc:  # the extension is built by `pip install -e .`
    pytest.skip(f"ndarray_backend_cpu is not built: {exc}", allow_module_level=True)

from test_cpu_matmul import read, to_array

import needle as ndl
from needle.backend_ndarray import ndarray as nd, primitives
from needle.conformance.calls import call
from needle.conformance.cases import Backend, cases

HALFS = primitives.HALFS
DIGITS = {"float16": 11, "bfloat16": 8}  # significand bits
TINIEST = {"float16": 2.0**-24, "bfloat16": 2.0**-133}  # the smallest subnormal


def numpy_dtype(name: str) -> np.dtype:
    return primitives.numpy_dtype(name)


def rounded(x, half: str) -> np.ndarray:
    """x (float64 or integers) in `half` by needle's rule, written out here: float16 rounds
    once (NumPy), bfloat16 through float32, as torch does (ml_dtypes did before 0.7, and
    rounds once from 0.7: this is not its astype)."""
    x = np.asarray(x)
    with np.errstate(over="ignore", invalid="ignore"):
        return (x.astype(np.float32) if half == "bfloat16" else x).astype(numpy_dtype(half))


def bits(x: np.ndarray) -> np.ndarray:
    return x.view(f"u{x.itemsize}")


def astype(x: np.ndarray, dtype: str, piece: int | None = None) -> np.ndarray:
    """x converted by the backend's astype, in one call or in calls of `piece` elements."""
    if piece is not None:
        return np.concatenate([astype(x[i : i + piece], dtype) for i in range(0, x.size, piece)])
    out = cpu.Array(x.size, dtype)
    cpu.astype(to_array(x), out)
    return read(out, (x.size,))


PIECES = [None, 15]  # vectors and threads; then partial vectors alone
EVERY_16_BITS = np.arange(1 << 16, dtype=np.uint16)


@pytest.mark.parametrize("piece", PIECES)
@pytest.mark.parametrize("half", HALFS)
def test_every_16_bit_pattern_to_float32_and_back(half, piece):
    x = EVERY_16_BITS.view(numpy_dtype(half))
    wide = astype(x, "float32", piece)
    expected = x.astype(np.float32)
    np.testing.assert_array_equal(bits(wide), bits(expected))
    back = astype(wide, half, piece)
    with np.errstate(invalid="ignore"):
        expected = expected.astype(numpy_dtype(half))
    np.testing.assert_array_equal(bits(back), bits(expected))


@pytest.mark.parametrize("target", primitives.DTYPES)
@pytest.mark.parametrize("half", HALFS)
def test_every_16_bit_pattern_to_every_dtype(half, target):
    x = EVERY_16_BITS.view(numpy_dtype(half))
    with np.errstate(invalid="ignore", over="ignore"):
        expected = x.astype(numpy_dtype(target))
        wide = x.astype(np.float64)
    got = astype(x, target)
    if target in primitives.INTS:  # NaN and values outside the integer's range: unspecified
        info = np.iinfo(target)
        keep = (wide > info.min - 1) & (wide < info.max + 1)
        got, expected = got[keep], expected[keep]
        assert keep.sum() > 1000
    np.testing.assert_array_equal(bits(got), bits(expected))


def rounding_edges(half: str) -> np.ndarray:
    """float32 values on each tie between consecutive finite values of `half` (the one past
    the largest is where rounding overflows to inf), and one float32 ulp either side."""
    x = EVERY_16_BITS[: 0x7C00 if half == "float16" else 0x7F80].view(numpy_dtype(half))
    x = x.astype(np.float64)
    following = np.append(x[1:], 2 * x[-1] - x[-2])
    ties = ((x + following) / 2).astype(np.float32)  # exact: one bit more than the 16-bit type
    edges = np.concatenate([ties, np.nextafter(ties, np.inf), np.nextafter(ties, -np.inf)])
    return np.concatenate([edges, -edges])


def float32_sample(half: str) -> np.ndarray:
    rng = np.random.default_rng(18)
    random = rng.integers(0, 1 << 32, 1 << 20, dtype=np.uint64).astype(np.uint32)
    subnormals = rng.integers(1, 1 << 23, 4096, dtype=np.uint32)
    nans = np.uint32(0x7F800000) | rng.integers(1, 1 << 23, 4096, dtype=np.uint32)
    named = np.array([0x7F800000, 0x7F800001, 0x7FC00000, 0x7FA00000, 0x7F802000, 0x0], np.uint32)
    patterns = np.concatenate([random, subnormals, nans, named])
    patterns = np.concatenate([patterns, patterns | np.uint32(0x80000000)])
    return np.concatenate([patterns.view(np.float32), rounding_edges(half)])


@pytest.mark.parametrize("piece", PIECES)
@pytest.mark.parametrize("half", HALFS)
def test_float32_to_16_bits(half, piece):
    x = float32_sample(half)
    if piece is not None:
        x = x[:: len(x) // 50000]  # the scalar code one call per 15 values: a tenth of them
    with np.errstate(over="ignore", invalid="ignore"):
        expected = x.astype(numpy_dtype(half))
    np.testing.assert_array_equal(bits(astype(x, half, piece)), bits(expected))


@pytest.mark.parametrize("half", HALFS)
def test_float64_to_16_bits(half):
    """float64 rounds once to float16 (NumPy) but through float32 to bfloat16 (torch): the
    values a little off each tie, ties only in float64, tell them apart."""
    rng = np.random.default_rng(64)
    edges = rounding_edges(half).astype(np.float64)
    random = rng.integers(0, 1 << 64, 1 << 18, dtype=np.uint64).view(np.float64)
    nans = (np.uint64(0x7FF0000000000000) | rng.integers(1, 1 << 52, 4096, np.uint64)).view(
        np.float64
    )
    x = np.concatenate([edges, edges * (1 + 2.0**-40), edges * (1 - 2.0**-40), random, nans])
    np.testing.assert_array_equal(bits(astype(x, half)), bits(rounded(x, half)))


@pytest.mark.parametrize("half", HALFS)
def test_integers_to_16_bits(half):
    rng = np.random.default_rng(32)
    for dtype in ("int32", "int64", "uint8"):
        info = np.iinfo(dtype)
        x = rng.integers(info.min, info.max, 1 << 16, dtype=dtype, endpoint=True)
        if dtype != "uint8":  # a bfloat16 tie after rounding to float32, not before
            ties = [2**k + 2 ** (k - 8) + 1 for k in range(24, info.bits - 1)]
            x[: 2 * len(ties)] = ties + [-t for t in ties]
        np.testing.assert_array_equal(bits(astype(x, half)), bits(rounded(x, half)), dtype)


@pytest.mark.parametrize("half", HALFS)
def test_fill_rounds_a_double_as_astype_does(half):
    values = np.concatenate([rounding_edges(half)[::97].astype(np.float64)] * 3)
    values[1::3] *= 1 + 2.0**-40  # ties only in float64
    values[2::3] *= 1 - 2.0**-40
    out = cpu.Array(3, half)
    for v in values:
        cpu.fill(out, float(v))
        assert bits(read(out, (3,)))[2] == bits(rounded(float(v), half)), v


def test_astype_checks_sizes_and_from_numpy_dtypes():
    with pytest.raises(ValueError, match="astype"):
        cpu.astype(cpu.Array(4, "float32"), cpu.Array(3, "bfloat16"))
    for half, other in (("float16", ml_dtypes.bfloat16), ("bfloat16", np.uint16)):
        with pytest.raises(TypeError, match="from_numpy"):
            cpu.from_numpy(np.zeros(3, other), cpu.Array(3, half))


# ---- GEMM ------------------------------------------------------------------------------
def gemm_shapes():
    """(m, n, p) around the tiles: MR rows, NR columns, depth 1, pairs and KC (the bfloat16
    kernel's KC when it runs, else float32's)."""
    block = cpu.__gemm_blocking__.get("bfloat16", cpu.__gemm_blocking__["float32"])
    mr, nr, kc = block["MR"], block["NR"], block["KC"]
    rows, cols = (1, mr - 1, mr, mr + 1, 2 * mr + 1), (1, nr - 1, nr, nr + 1, 2 * nr + 1)
    depths = (1, 2, 3, 17, kc - 1, kc, kc + 1)
    return [
        (m, n, p)
        for i, m in enumerate(rows)
        for j, p in enumerate(cols)
        for n in depths
        if (i + j) % 2 == 0 or n in (1, kc + 1)
    ]


def worst_gemm_error() -> float:
    """The largest |out - reference| / allowed over gemm_shapes, both 16-bit dtypes and the
    four layouts of A and B (row-major, transposed): above 1 is a failure."""
    rng = np.random.default_rng(7)
    worst = 0.0
    for half in HALFS:
        for m, n, p in gemm_shapes():
            a = rng.standard_normal((m, n)).astype(numpy_dtype(half))
            b = rng.standard_normal((n, p)).astype(numpy_dtype(half))
            a64, b64 = a.astype(np.float64), b.astype(np.float64)
            expected = a64 @ b64
            exponent = np.frexp(expected)[1]
            ulp = np.maximum(np.ldexp(1.0, exponent - DIGITS[half]), TINIEST[half])
            allowed = ulp + 2 * (n + 2) * 2.0**-24 * (np.abs(a64) @ np.abs(b64))
            for a_t, b_t in ((0, 0), (1, 0), (0, 1), (1, 1)):
                x = to_array(a.T if a_t else a)
                y = to_array(b.T if b_t else b)
                out = cpu.Array(m * p, half)
                a_strides = (0, 1, m) if a_t else (0, n, 1)
                b_strides = (0, 1, n) if b_t else (0, p, 1)
                cpu.matmul_strided(x, y, out, 1, m, n, p, 0, a_strides, 0, b_strides)
                err = np.abs(read(out, (m, p)).astype(np.float64) - expected)
                worst = max(worst, float((err / allowed).max()))
    return worst


def test_16_bit_gemm_within_one_ulp():
    assert worst_gemm_error() <= 1.0


@pytest.mark.parametrize("half", HALFS)
@pytest.mark.parametrize("threads", [1, 2])
def test_wide_gemm_is_the_16_bit_gemm_before_its_rounding(half, threads):
    """matmul_strided_wide: the float32 sums matmul_strided rounds once (the same kernel and
    blocking), so rounded they are its result bit for bit; and within float32's summation
    bound of float64 (shapes past the depth block, transposed operands, thread splits)."""
    rng = np.random.default_rng(11)
    before = cpu.get_num_threads()
    cpu.set_num_threads(threads)
    try:
        for m, n, p in gemm_shapes()[::5] + [(128, 784, 512)]:
            a = rng.standard_normal((n, m)).astype(numpy_dtype(half)).T  # as x^T in dW = x^T g
            b = rng.standard_normal((n, p)).astype(numpy_dtype(half))
            x, y = to_array(a.T), to_array(b)
            views = (1, m, n, p, 0, (0, 1, m), 0, (0, p, 1))
            wide, rounded = cpu.Array(m * p), cpu.Array(m * p, half)
            cpu.matmul_strided_wide(x, y, wide, *views)
            cpu.matmul_strided(x, y, rounded, *views)
            sums = read(wide, (m, p))
            np.testing.assert_array_equal(
                bits(sums.astype(numpy_dtype(half))), bits(read(rounded, (m, p)))
            )
            a64, b64 = a.astype(np.float64), b.astype(np.float64)
            bound = 2 * (n + 2) * 2.0**-24 * (np.abs(a64) @ np.abs(b64)) + 1e-30
            assert (np.abs(sums - a64 @ b64) <= bound).all(), (m, n, p)
    finally:
        cpu.set_num_threads(before)
    with pytest.raises(TypeError, match="matmul_strided_wide's out is"):
        cpu.matmul_strided_wide(x, y, cpu.Array(m * p, half), *views)


def test_16_bit_gemm_fallback_within_one_ulp():
    """bfloat16 on the float32 kernel (NEEDLE_GEMM_BF16=0), in a process of its own."""
    code = (
        f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
        "import test_halves_cpu as t; print(t.cpu.__gemm_bf16__, t.worst_gemm_error())"
    )
    env = dict(os.environ, NEEDLE_GEMM_BF16="0")
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    kernel, worst = run.stdout.split()
    assert kernel == "float32" and float(worst) <= 1.0


@pytest.mark.parametrize("half", HALFS)
def test_16_bit_gemm_rounds_its_float32_sums_once_as_numpy_does(half):
    """Sums that float32 holds exactly: each of C's elements is a[i, 0] b[0, j] + a[i, k]
    b[k, j] with k in a later depth block (the two products are exact in float32, and so is
    their float32 sum, rounded once), the other products zero. So the 16-bit result must be
    that float32 sum rounded by NumPy / ml_dtypes, bit for bit: ties (a product of two 8-bit
    significands has 16), sums that are float32 subnormals, infinities and NaNs included."""
    kc = cpu.__gemm_blocking__.get("bfloat16", cpu.__gemm_blocking__["float32"])["KC"]
    m, n, p, k = 40, 2 * kc + 2, 48, kc + 6
    rng = np.random.default_rng(11)
    dtype = numpy_dtype(half)
    a = np.zeros((m, n), np.float32)
    b = np.zeros((n, p), np.float32)
    # significands of 8 bits at most (exact in both types), exponents kept normal in both
    a[:, 0], a[:, k] = rng.integers(-255, 256, (2, m)) * 2.0 ** rng.integers(-9, 1, (2, m))
    b[0], b[k] = rng.integers(-255, 256, (2, p)) * 2.0 ** rng.integers(-9, 1, (2, p))
    if half == "bfloat16":  # sums under float32's smallest normal: the kernel's slow lanes
        a[:4, 0], a[:4, k], b[0, :4], b[k, :4] = 1.5e-19, -1.25e-19, 1e-19, 1e-19
    a[5, 0], b[0, 7], b[0, 8] = np.inf, np.nan, -np.inf
    a, b = a.astype(dtype), b.astype(dtype)
    with np.errstate(invalid="ignore", over="ignore"):
        wide = a[:, [0]].astype(np.float32) * b[[0]].astype(np.float32)
        wide += a[:, [k]].astype(np.float32) * b[[k]].astype(np.float32)
        expected = wide.astype(dtype)
    out = cpu.Array(m * p, half)
    cpu.matmul(to_array(a), to_array(b), out, m, n, p)
    got = read(out, (m, p))
    nan = np.isnan(expected)
    np.testing.assert_array_equal(np.isnan(got), nan)
    np.testing.assert_array_equal(bits(got)[~nan], bits(expected)[~nan])


def test_bf16_gemm_same_on_one_and_two_threads():
    rng = np.random.default_rng(3)
    a = rng.standard_normal((300, 1000)).astype(ml_dtypes.bfloat16)
    b = rng.standard_normal((1000, 200)).astype(ml_dtypes.bfloat16)
    results = []
    before = cpu.get_num_threads()
    try:
        for threads in (1, 2):
            cpu.set_num_threads(threads)
            out = cpu.Array(300 * 200, "bfloat16")
            cpu.matmul(to_array(a), to_array(b), out, 300, 1000, 200)
            results.append(bits(read(out, (300, 200))))
    finally:
        cpu.set_num_threads(before)
    np.testing.assert_array_equal(results[0], results[1])


# ---- the rows of HALF_ROWS: astype(float32 row(astype(inputs, float32))), bit for bit -------
HALF_ROWS = tuple(getattr(cpu, "HALF_ROWS", ()))
# The rows whose table dtypes include float32 but not the 16-bit floats (NDArray computes those
# in float32 unless the backend lists them in HALF_ROWS).
WIDENED_ROWS = [
    p for p in primitives.TABLE.values() if "float32" in p.dtypes and "float16" not in p.dtypes
]


class HalfCases(Backend):
    """The CPU backend as the conformance cases see it, with elementwise sizes around a vector
    (16 lanes) and one past two threads' shares (2 x kMinElementsPerThread = 2^16)."""

    @property
    def sizes(self) -> tuple[int, ...]:
        return (0, 1, 15, 16, 17, 1001, 2**16 + 17)


def half_specials(rng, half: str, size: int) -> np.ndarray:
    """`size` values of `half`, a third each: random bit patterns (NaNs with payloads, every
    exponent, subnormals), named values (signed zeros and infinities, NaN, the smallest and
    largest subnormals, the largest finite, whose sums and products overflow) and normal ones."""
    top = {"float16": 0x7BFF, "bfloat16": 0x7F7F}[half]  # the largest finite
    largest_subnormal = {"float16": 0x03FF, "bfloat16": 0x007F}[half]
    named = np.array([0, 0x8000, 1, 0x8001, largest_subnormal, top, top | 0x8000], np.uint16)
    named = np.concatenate(
        [
            named.view(numpy_dtype(half)),
            np.array([np.inf, -np.inf, np.nan, 1, -2.5], numpy_dtype(half)),
        ]
    )
    parts = [
        rng.integers(0, 1 << 16, size, dtype=np.uint16).view(numpy_dtype(half)),
        named[rng.integers(0, named.size, size)],
        rng.standard_normal(size).astype(numpy_dtype(half)),
    ]
    return np.stack(parts, axis=1).reshape(-1)[rng.permutation(3 * size)[:size]]


def run_row(name: str, args: tuple, half: str, native: bool) -> np.ndarray:
    """Row `name` on 16-bit `args` (the table's order, `out` an Out): natively, or the contract
    (inputs to float32 by astype, the float32 row, its out back by astype). out's contents."""
    prim = primitives.TABLE[name]
    kwargs, outs = {}, []
    for param, arg in zip(prim.params, args):
        assert param.kind in ("array", "out", "int", "float", "bool", "str"), (name, param)
        if param.kind == "array":
            arg = to_array(arg)
            arg = arg if native else converted(arg, "float32")
        elif param.kind == "out":
            arg = cpu.Array(arg.size, prim.out_dtype or (half if native else "float32"))
            outs.append(arg)
        kwargs[param.name] = arg
    getattr(cpu, name)(**kwargs)
    (out,) = outs
    return read(out if out.dtype != "float32" else converted(out, half), (out.size,))


def converted(arr, dtype: str):
    out = cpu.Array(arr.size, dtype)
    cpu.astype(arr, out)
    return out


@pytest.fixture
def two_threads():
    before = cpu.get_num_threads()
    cpu.set_num_threads(2)
    yield
    cpu.set_num_threads(before)


def half_args(prim, case, half: str, data: str, rng) -> tuple:
    """The case's arguments with each array's data as `half`: its own rounded ("case"), or
    half_specials of its size."""
    args = list(case.args)
    for i, param in enumerate(prim.params):
        if param.kind == "array" and data == "case":
            with np.errstate(over="ignore"):
                args[i] = np.asarray(args[i]).astype(numpy_dtype(half))
        elif param.kind == "array":
            args[i] = half_specials(rng, half, np.size(args[i]))
    return tuple(args)


def comparable(x: np.ndarray, nan_bits: bool) -> np.ndarray:
    """x's bit patterns, every NaN as one unless `nan_bits`. Where an add or multiply meets two
    NaNs, IEEE 754 leaves which one propagates to the implementation and GCC commutes the
    operands: the sign and payload then differ between instantiations of the same float32 code
    (and NumPy's loops). A lane with one NaN operand, a select (maximum) or a unary row's
    arithmetic on its one input keeps them, exactly."""
    if nan_bits or x.dtype == bool:
        return bits(x)
    return np.where(np.isnan(x.astype(np.float32)), 0x7FFF, bits(x))


# The conv rows sum bfloat16 products on vdpbf16ps (in pairs, so in another order than the
# float32 conv, subnormal products flushed), as the bfloat16 matmul does: within an ulp, not
# bit for bit. test_conv_halves_cpu.py checks both of their paths.
PAIRED_SUMS = {"conv2d", "conv2d_input_grad", "conv2d_weight_grad"}
# The norms keep their per-feature arrays in float32: test_batch_norm_rows_in_16_bits.
FLOAT32_PARAMS = primitives.HALF_ROW_FLOAT32_PARAMS


@pytest.mark.parametrize(
    "name, half",
    [
        (n, h)
        for n in HALF_ROWS
        for h in HALFS
        if not (n in PAIRED_SUMS and h == "bfloat16") and n not in FLOAT32_PARAMS
    ],
)
def test_half_row_is_the_float32_row_rounded_once(name, half, two_threads):
    prim = primitives.TABLE[name]
    rng = np.random.default_rng(sum(map(ord, name)))
    nan_bits = prim.group == "unary" or "max" in name
    checked = 0
    for case in cases(prim, HalfCases("cpu", cpu, tuple(cpu.DTYPES)), "float32"):
        for data in ("case", "specials"):
            args = half_args(prim, case, half, data, rng)
            with np.errstate(all="ignore"):
                got, want = (run_row(name, args, half, native) for native in (True, False))
            np.testing.assert_array_equal(
                comparable(got, nan_bits),
                comparable(want, nan_bits),
                err_msg=f"{name} in {half}: {case.label}, {data} data",
            )
            checked += sum(np.size(a) for a in args if isinstance(a, np.ndarray))
    # elements read: past two threads' shares for the elementwise sizes (the conv cases are
    # shapes, smaller)
    assert checked > (10_000 if name in PAIRED_SUMS else 2**16)


def smallest_case(prim):
    sized = [
        c
        for c in cases(prim, Backend("cpu", cpu, tuple(cpu.DTYPES)))
        if any(np.size(a) for a in c.args if isinstance(a, np.ndarray))
    ]
    return min(sized, key=lambda c: max(np.size(a) for a in c.args if isinstance(a, np.ndarray)))


def test_half_rows_are_rows_the_table_leaves_to_float32():
    assert len(set(HALF_ROWS)) == len(HALF_ROWS) > 0
    assert set(HALF_ROWS) <= {p.name for p in WIDENED_ROWS}


@pytest.mark.parametrize("prim", WIDENED_ROWS, ids=lambda p: p.name)
def test_exactly_the_half_rows_take_16_bit_floats(prim):
    """Each row the table leaves to float32 is called with 16-bit arrays (its smallest
    conformance case): the rows of HALF_ROWS run, every other one raises a TypeError naming
    itself and the dtype."""
    if getattr(cpu, prim.name, None) is None:
        assert prim.name not in HALF_ROWS
        pytest.skip(f"the CPU backend leaves {prim.name} to the table's fallback")
    case = smallest_case(prim)
    for half in HALFS:
        with np.errstate(all="ignore"):
            if prim.name in HALF_ROWS and prim.name not in FLOAT32_PARAMS:
                call(cpu, prim.name, *case.args, dtype=half)
                continue
            # (the norms of HALF_ROWS refuse 16-bit per-feature arrays the same way)
            with pytest.raises(TypeError) as raised:
                call(cpu, prim.name, *case.args, dtype=half)
        assert prim.name in str(raised.value) and half in str(raised.value)


@pytest.mark.parametrize("half", HALFS)
def test_astype_of_a_permuted_array_keeps_its_layout(half):
    """astype of an NCHW view of NHWC data converts the buffer as it lies and keeps the
    layout (one pass, no compacting copy), so 16-bit activations stay NHWC for the next conv."""
    x = np.random.default_rng(0).standard_normal((2, 5, 6, 3)).astype(np.float32)
    nchw = nd.array(x, device=ndl.cpu()).permute((0, 3, 1, 2))
    low = nchw.astype(half)
    assert low.strides == nchw.strides and not low.is_compact()
    np.testing.assert_array_equal(
        low.numpy().astype(np.float32), x.transpose(0, 3, 1, 2).astype(numpy_dtype(half))
    )
    back = low.astype("float32")
    assert back.strides == nchw.strides
    np.testing.assert_array_equal(back.numpy(), low.numpy().astype(np.float32))


@pytest.mark.parametrize("half", HALFS)
@pytest.mark.parametrize("threads", [1, 2])
def test_batch_norm_rows_in_16_bits(half, threads):
    """batch_norm_rows and its gradient on 16-bit (rows, features) arrays with float32 weights
    and statistics: bit for bit the float32 rows on the widened arrays, 16-bit outputs rounded
    once (sizes past one chunk of rows and two threads' shares)."""
    rng = np.random.default_rng(1)
    rows, cols = 1100, 67
    x = (rng.standard_normal((rows, cols)) * 3 + 1).astype(numpy_dtype(half))
    dy = rng.standard_normal((rows, cols)).astype(numpy_dtype(half))
    w, b = (rng.standard_normal(cols).astype(np.float32) for _ in "wb")

    def norm(dtype):
        arr = lambda v: to_array(np.asarray(v).astype(dtype).reshape(-1))  # noqa: E731
        y, mean, var = cpu.Array(rows * cols, dtype), cpu.Array(cols), cpu.Array(cols)
        cpu.batch_norm_rows(arr(x), to_array(w), to_array(b), y, mean, var, rows, cols, 1e-5)
        inv_std = to_array(1 / np.sqrt(read(var, (cols,)) + 1e-5))
        grads = cpu.Array(rows * cols, dtype), cpu.Array(cols), cpu.Array(cols)
        cpu.batch_norm_rows_grad(arr(dy), arr(x), mean, inv_std, to_array(w), *grads, rows, cols)
        outs = (y, mean, var) + grads
        return [read(o, (o.size,)) for o in outs]

    before = cpu.get_num_threads()
    cpu.set_num_threads(threads)
    try:
        native, wide = norm(half), norm("float32")
    finally:
        cpu.set_num_threads(before)
    for i, (got, want) in enumerate(zip(native, wide)):
        if got.dtype != np.float32:  # y and dx: the float32 result rounded once
            want = want.astype(numpy_dtype(half))
        np.testing.assert_array_equal(bits(got), bits(want), err_msg=f"output {i}")
    with pytest.raises(TypeError, match=f"batch_norm_rows.*{half}"):  # 16-bit weights: refused
        full, per_feature = (lambda: cpu.Array(rows * cols, half)), (lambda: cpu.Array(cols, half))
        args = (full(), per_feature(), per_feature(), full(), per_feature(), per_feature())
        cpu.batch_norm_rows(*args, rows, cols, 1e-5)
