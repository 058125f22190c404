"""Spec section 1 of the course API (COURSE_API.md): package layout and imports."""

import importlib

import numpy as np
import pytest

import needle as ndl

MODULES = [
    "needle.autograd",
    "needle.backend_selection",
    "needle.backend_numpy",
    "needle.optim",
    "needle.ops.ops_mathematic",
    "needle.ops.ops_logarithmic",
    "needle.ops.ops_tuple",
    "needle.init.init_basic",
    "needle.init.init_initializers",
    "needle.nn.nn_basic",
    "needle.nn.nn_conv",
    "needle.nn.nn_sequence",
    "needle.nn.nn_transformer",
    "needle.data.data_basic",
    "needle.data.data_transforms",
    "needle.data.datasets.mnist_dataset",
    "needle.data.datasets.ndarray_dataset",
    "needle.data.datasets.cifar10_dataset",
    "needle.data.datasets.ptb_dataset",
    "needle.backend_ndarray.ndarray",
    "needle.backend_ndarray.ndarray_backend_numpy",
    "needle.backend_ndarray.ndarray_backend_cpu",
]


@pytest.mark.parametrize("name", MODULES)
def test_every_module_of_the_layout_imports(name):
    importlib.import_module(name)


def test_course_import_forms():
    import needle.backend_ndarray.ndarray as ndarray
    import needle.init as init
    import needle.nn as nn
    from needle import Tensor as T1, backend_ndarray as nd, init as init2, ops
    from needle.autograd import Tensor as T2

    assert T1 is T2 is ndl.Tensor and init is init2
    assert nn.Linear is ndl.nn.Linear and ndl.data.DataLoader is not None
    assert nd.NDArray is ndarray.NDArray and ops.Tensor is ndl.Tensor
    assert callable(ndl.autograd.find_topo_sort)
    assert isinstance(ndl.autograd.TENSOR_COUNTER, int)


def test_ops_exports_the_graph_types_and_every_op_at_top_level():
    for name in ("Tensor", "TensorTuple", "Value", "Op", "TensorOp", "TensorTupleOp"):
        assert getattr(ndl.ops, name) is getattr(ndl.autograd, name)
    public = [n for n in dir(ndl.ops) if not n.startswith("_") and callable(getattr(ndl.ops, n))]
    for name in public:
        if name[0].islower() or name in ("EWiseAdd", "Negate"):
            assert hasattr(ndl, name), name


def test_autograd_and_init_and_submodules():
    for name in ("Tensor", "cpu", "all_devices"):
        assert hasattr(ndl.autograd, name)
    for name in ("ones", "zeros", "ones_like", "zeros_like"):
        assert callable(getattr(ndl.init, name))
    for name in ("init", "ops", "nn", "optim", "data", "autograd"):
        assert hasattr(ndl, name)


def test_backend_selection_names_win_at_top_level():
    sel = ndl.backend_selection
    for name in (
        "array_api",
        "NDArray",
        "BACKEND",
        "cpu",
        "default_device",
        "all_devices",
        "Device",
    ):
        assert getattr(ndl, name) is getattr(sel, name), name
    if ndl.BACKEND == "nd":
        assert ndl.array_api is ndl.backend_ndarray
        assert ndl.NDArray is ndl.backend_ndarray.NDArray
        assert ndl.cuda is not None and ndl.cpu_numpy is not None
    else:
        assert ndl.array_api is np and ndl.NDArray is np.ndarray
        assert ndl.cuda().enabled() is False
