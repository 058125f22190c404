"""DLPack and NumPy views: Tensor.__dlpack__, ndl.from_dlpack and np.asarray share memory with
NumPy and torch without copies (shown by writing through one side and reading the other), keep
their buffers alive, and copy only where the layout or dtype requires it."""

import gc

import numpy as np
import pytest
import torch

import needle as ndl
from needle.backend_ndarray import ndarray as nd, primitives

HOST = [d for d in (ndl.cpu(), ndl.cpu_numpy()) if d.enabled()]
DTYPES = ("float32", "float64", "float16", "int32", "int64", "uint8", "bool")


def _data(dtype, shape=(3, 4)):
    values = np.arange(np.prod(shape)).reshape(shape) % 7
    return values.astype(primitives.numpy_dtype(dtype))


@pytest.mark.parametrize("device", HOST, ids=str)
@pytest.mark.parametrize("dtype", DTYPES)
def test_export_shares_memory_with_numpy_and_torch(device, dtype):
    t = ndl.Tensor(_data(dtype), device=device, dtype=dtype)
    view = np.from_dlpack(t)
    np.testing.assert_array_equal(view, _data(dtype))
    view[1, 2] = 1  # the write shows in the tensor
    assert t.numpy()[1, 2] == 1
    shared = torch.from_dlpack(t)
    shared[0, 0] = 1
    assert t.numpy()[0, 0] == 1 and view[0, 0] == 1
    assert t.__dlpack_device__() == (1, 0)


@pytest.mark.parametrize("device", HOST, ids=str)
def test_strided_views_export_as_views(device):
    t = ndl.Tensor(_data("float32", (6, 5)), device=device)
    for view in (t.transpose(), t[1:5:2, ::2]):
        exported = np.from_dlpack(view)
        np.testing.assert_array_equal(exported, view.numpy())
        exported[0, 0] = -1.0
        assert view.numpy()[0, 0] == -1.0


def test_bfloat16_exports_to_torch_from_the_cpu_backend():
    t = ndl.Tensor(_data("bfloat16"), device=ndl.cpu(), dtype="bfloat16")
    shared = torch.from_dlpack(t)
    assert shared.dtype == torch.bfloat16
    np.testing.assert_array_equal(
        shared.view(torch.int16).numpy(), _data("bfloat16").view(np.int16)
    )
    shared[2, 3] = 2.5
    assert float(t.numpy()[2, 3]) == 2.5
    back = ndl.from_dlpack(torch.ones(3, dtype=torch.bfloat16))  # and back in, zero copy
    assert back.dtype == "bfloat16" and back.numpy().astype(np.float32).tolist() == [1, 1, 1]


@pytest.mark.parametrize("device", HOST, ids=str)
def test_from_dlpack_wraps_numpy_and_torch_memory(device):
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    t = ndl.from_dlpack(x, device=device)
    assert t.shape == (3, 4) and t.dtype == "float32" and t.device == device
    x[0, 1] = 100.0  # NumPy's write shows in needle
    assert t.numpy()[0, 1] == 100.0
    t.realize_cached_data()[2, 3] = -5.0  # and needle's in NumPy
    assert x[2, 3] == -5.0
    np.testing.assert_array_equal((t * 2).numpy(), x * 2)
    del x
    gc.collect()  # the Tensor keeps NumPy's buffer alive
    assert t.numpy()[0, 1] == 100.0
    y = torch.arange(6, dtype=torch.int64)
    u = ndl.from_dlpack(y, device=device)
    y[5] = 50
    assert u.dtype == "int64" and u.numpy()[5] == 50


def test_from_dlpack_copies_what_it_cannot_wrap():
    x = np.arange(12, dtype=np.float32).reshape(3, 4).T  # not C-contiguous
    t = ndl.from_dlpack(x)
    np.testing.assert_array_equal(t.numpy(), x)
    x[0, 0] = 9.0
    assert t.numpy()[0, 0] == 0.0
    b = np.ones(4, dtype=primitives.numpy_dtype("bfloat16"))  # NumPy's DLPack has no bfloat16
    assert ndl.from_dlpack(b).dtype == "bfloat16"


@pytest.mark.parametrize("device", HOST, ids=str)
def test_asarray_is_a_view_where_numpy_can_read_in_place(device):
    t = ndl.Tensor(_data("float32"), device=device)
    view = np.asarray(t)
    view[0, 0] = 42.0
    assert t.numpy()[0, 0] == 42.0
    assert np.array(t)[0, 0] == 42.0 and np.array(t) is not view  # np.array copies
    copied = np.array(t)
    copied[0, 0] = 0.0
    assert t.numpy()[0, 0] == 42.0
    half = ndl.Tensor(_data("bfloat16"), device=device, dtype="bfloat16")
    np.testing.assert_array_equal(np.asarray(half), _data("bfloat16"))  # a copy
    with pytest.raises(ValueError, match="no NumPy view"):
        np.asarray(half, copy=False)


def test_exported_views_outlive_the_tensor():
    t = ndl.Tensor(np.full((4, 4), 3.0, dtype=np.float32), device=ndl.cpu())
    view = np.from_dlpack(t)
    del t
    gc.collect()
    np.testing.assert_array_equal(view, np.full((4, 4), 3.0))


def test_native_dlpack_views_are_checked():
    a = ndl.cpu().mod.Array(6, "float32")
    with pytest.raises(ValueError, match="dlpack_view: view of offset 4 reaches outside"):
        a.dlpack_view([3], [1], 4)
    with pytest.raises(ValueError, match="dlpack_view"):
        a.dlpack_view([2, 2], [2**62, 1], 0)


@pytest.mark.skipif(not ndl.cuda().enabled(), reason="needs a CUDA GPU")
def test_cuda_memory_crosses_without_copies():
    t = ndl.Tensor(np.arange(6, dtype=np.float32), device=ndl.cuda())
    shared = torch.from_dlpack(t)
    assert shared.is_cuda
    shared[0] = 7.0
    assert t.numpy()[0] == 7.0
    back = ndl.from_dlpack(shared)
    assert back.device == ndl.cuda() and back.numpy()[0] == 7.0
    assert isinstance(back.realize_cached_data(), nd.NDArray)
