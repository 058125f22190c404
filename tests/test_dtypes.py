"""Integer and bool dtypes above the primitives: type promotion against PyTorch (the NDArray
mode's rule) and NumPy (the numpy mode's), NDArray arithmetic in every dtype against NumPy on
every device, and integer tensors in autograd and the losses."""

import itertools

import numpy as np
import pytest
import torch

import needle as ndl
from needle import backend_ndarray as nd
from needle.backend_ndarray import dtypes

DTYPES = ["float32", "float64", "int32", "int64", "uint8", "bool"]
SCALARS = [True, 3, -2, 2.5, np.float64(1.5), np.int64(4), np.float32(0.5)]


@pytest.fixture
def numpy_rule():
    dtypes.set_promotion("numpy")
    yield
    dtypes.set_promotion("torch")


@pytest.mark.parametrize("a, b", list(itertools.product(DTYPES, DTYPES)))
def test_array_promotion_is_torch_s(a, b):
    want = torch.promote_types(getattr(torch, a), getattr(torch, b))
    assert dtypes.result_type(a, b) == str(want).removeprefix("torch.")


@pytest.mark.parametrize("a, value", list(itertools.product(DTYPES, SCALARS)))
def test_scalar_promotion_is_torch_s(a, value):
    python = value.item() if isinstance(value, np.generic) else value
    want = (torch.zeros(2, dtype=getattr(torch, a)) + python).dtype
    assert dtypes.scalar_result_type(a, value) == str(want).removeprefix("torch.")


@pytest.mark.parametrize("a, b", list(itertools.product(DTYPES, DTYPES)))
def test_array_promotion_numpy_rule(numpy_rule, a, b):
    assert dtypes.result_type(a, b) == np.result_type(a, b).name


@pytest.mark.parametrize("a, value", list(itertools.product(DTYPES, SCALARS)))
def test_scalar_promotion_numpy_rule(numpy_rule, a, value):
    try:
        want = (np.zeros(2, dtype=a) + value).dtype.name
    except OverflowError:  # NumPy refuses uint8 + -2: so does NDArray
        with pytest.raises(OverflowError):
            nd.array(np.zeros(2), dtype=a, device=nd.cpu_numpy()) + value
        return
    assert dtypes.scalar_result_type(a, value) == want


def _data(dtype, shape, rng):
    if dtype == "bool":
        return rng.random(shape) < 0.5
    if dtype.startswith("float"):
        return rng.standard_normal(shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(max(info.min, -50), min(info.max, 50), size=shape, dtype=dtype)


ARITH = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "maximum": np.maximum}
COMPARE = {"eq": np.equal, "ge": np.greater_equal, "lt": np.less, "le": np.less_equal}


def _apply(name, x, y):
    return {
        "add": lambda: x + y, "sub": lambda: x - y, "mul": lambda: x * y,
        "maximum": lambda: np.maximum(x, y) if isinstance(x, np.ndarray) else x.maximum(y),
        "eq": lambda: x == y, "ge": lambda: x >= y,
        "lt": lambda: x < y, "le": lambda: x <= y, "ne": lambda: x != y, "gt": lambda: x > y,
        "div": lambda: x / y,
    }[name]()  # fmt: skip


@pytest.mark.filterwarnings("ignore:divide by zero", "ignore:invalid value")  # x / 0, as NumPy
@pytest.mark.parametrize("a, b", list(itertools.product(DTYPES, DTYPES)))
def test_mixed_dtype_arithmetic_matches_numpy_in_torch_s_types(device, a, b):
    rng = np.random.default_rng(0)
    xa, xb = _data(a, (3, 4), rng), _data(b, (4,), rng)  # broadcast too
    x, y = nd.array(xa, dtype=a, device=device), nd.array(xb, dtype=b, device=device)
    if "float64" in (a, b) and "float64" not in device.dtypes:
        pytest.skip(f"{device} holds no float64")
    common = dtypes.result_type(a, b)
    for name in list(ARITH) + list(COMPARE) + ["ne", "gt", "div"]:
        if common == "bool" and name in ("add", "sub", "mul", "maximum"):
            with pytest.raises(TypeError, match="bool"):
                _apply(name, x, y)
            continue
        got = _apply(name, x, y)
        with np.errstate(all="ignore"):  # NumPy warns where integers wrap; so do they here
            ref = _apply(name, xa.astype(common), xb.astype(common))
        if name == "div":
            assert got.dtype == dtypes.float_type(common)
            np.testing.assert_allclose(got.numpy(), ref, rtol=1e-6)
        else:
            want_dtype = "bool" if name in COMPARE or name in ("ne", "gt") else common
            assert got.dtype == want_dtype
            np.testing.assert_array_equal(got.numpy(), ref.astype(want_dtype))


@pytest.mark.parametrize("dtype", ["int32", "int64", "uint8", "bool"])
def test_integer_arrays_unary_reduce_and_cast(device, dtype):
    rng = np.random.default_rng(1)
    data = _data(dtype, (5, 6), rng)
    x = nd.array(data, dtype=dtype, device=device)
    sums = x.sum(axis=1)
    assert sums.dtype == "int64"
    np.testing.assert_array_equal(sums.numpy(), data.astype(np.int64).sum(1))
    np.testing.assert_array_equal(x.max(axis=0).numpy(), data.max(0))
    floats = x.exp()
    assert floats.dtype == "float32"
    np.testing.assert_allclose(floats.numpy(), np.exp(data.astype(np.float32)), rtol=1e-6)
    if dtype != "bool":
        np.testing.assert_array_equal((-x).numpy(), -data)
        np.testing.assert_array_equal(abs(x).numpy(), np.abs(data))
    np.testing.assert_array_equal(x.astype("float32").numpy(), data.astype(np.float32))


def test_integer_wraparound_and_range_checks(device):
    x = nd.array(np.array([250, 3], dtype=np.uint8), dtype="uint8", device=device)
    np.testing.assert_array_equal((x + 10).numpy(), np.array([250, 3], np.uint8) + np.uint8(10))
    with pytest.raises(OverflowError, match="300"):
        x + 300
    np.testing.assert_array_equal((x < 300).numpy(), [True, True])  # compared, not wrapped
    big = nd.array(np.array([2**31 - 1], dtype=np.int32), dtype="int32", device=device)
    assert (big + 1).numpy()[0] == -(2**31)
    y = nd.array(np.zeros(3, dtype=np.int64), dtype="int64", device=device)
    y[1:2] = 7.9  # truncated toward zero, as NumPy stores a float into ints
    np.testing.assert_array_equal(y.numpy(), [0, 7, 0])
    with pytest.raises(ValueError, match="nan"):
        y.fill(float("nan"))


def test_integer_matmul_is_exact(device):
    a = np.arange(12, dtype=np.int64).reshape(3, 4)
    x = nd.array(a, dtype="int64", device=device)
    if "float64" not in device.dtypes:
        pytest.skip(f"{device} holds no float64")
    got = x @ x.permute((1, 0))
    assert got.dtype == "int64"
    np.testing.assert_array_equal(got.numpy(), a @ a.T)


def test_integer_tensors_carry_no_gradient(device):
    labels = ndl.Tensor([1, 2], dtype="int64", device=device)
    assert labels.dtype == "int64" and not labels.requires_grad
    x = ndl.Tensor(np.ones(2), device=device)
    y = x * labels  # float32 * int64 -> float32, differentiable in x only
    assert y.dtype == "float32" and y.requires_grad
    y.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [1.0, 2.0])
    assert labels.grad is None
    mask = x > 0.5
    assert mask.dtype == "bool" and not mask.requires_grad
    assert ndl.Tensor([6]).dtype == "float32"  # course rule: integer data become float32


def test_integer_labels_are_exact_past_float32(device):
    # Embedding rows and class labels beyond 2^24 (float32 would round 2^24 + 1).
    rows = 2**24 + 3
    ids = np.array([2**24 + 1, 5])
    label_tensor = ndl.Tensor(ids, dtype="int64", device=device)
    picked = ndl.ops.take_rows(
        ndl.Tensor(
            nd.array(np.arange(rows, dtype=np.float64), dtype="float64", device=device).reshape(
                (rows, 1)
            )
        ),
        label_tensor.numpy(),
    )
    np.testing.assert_array_equal(picked.numpy().reshape(-1), ids.astype(np.float64))
