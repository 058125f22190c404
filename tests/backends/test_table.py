"""The primitive table itself, the validation of backends against it, and devices over it.

- the table is self-consistent (families have references, optional rows fallbacks with the
  table's parameters) and every row has conformance cases (test_conformance.py);
- every backend validates; a module missing a core primitive fails validation, and a device
  over it fails on first use, naming the backend and the primitive;
- NDArray operations and a training step agree with cpu_numpy on a device over each backend,
  and on a device over only its core primitives (every optional one through the table's
  fallback);
- simplify_view walks the same memory as the view it simplifies.
"""

import inspect
import math
import types

import numpy as np
import pytest
from hypothesis import given, settings

import needle as ndl
from needle.backend_ndarray import (
    BackendDevice,
    NDArray,
    ndarray as nd,
    ndarray_backend_numpy as nb_np,
    primitives,
)
from needle.backend_ndarray.primitives import MissingPrimitiveError
from needle.conformance import cases as conformance
from needle.conformance.calls import element_offsets

from .strategies import strided_views


# ---- the table ------------------------------------------------------------------------------
def test_every_row_has_conformance_cases():
    numpy_backend = conformance.Backend("numpy", nd.ndarray_backend_numpy, primitives.DTYPES)
    for prim in primitives.TABLE.values():
        for dtype in prim.dtypes:
            try:
                generated = list(conformance.cases(prim, numpy_backend, dtype))
            except KeyError:
                pytest.fail(f"{prim.name}: no case generator in needle/conformance/cases.py")
            assert generated, (prim.name, dtype)
            for case in generated:
                assert len(case.args) == len(prim.params), (prim.name, dtype, case.label)
        if prim.fallback is not None or not hasattr(nd.ndarray_backend_numpy, prim.name):
            conformance.reference(prim, numpy_backend)  # a reference independent of it


def test_table_rows_are_consistent():
    assert set(primitives.CORE) | set(primitives.OPTIONAL) == set(primitives.TABLE)
    for prim in primitives.TABLE.values():
        assert prim.group in primitives.GROUPS and set(prim.dtypes) <= set(primitives.DTYPES)
        assert (prim.fallback is None) == prim.core, prim.name
        if prim.fallback is not None:  # fallback(mod, <the table's parameters>)
            params = list(inspect.signature(prim.fallback).parameters)
            assert params == ["mod", *prim.param_names], prim.name
    # The Metal backends take matmul_strided's arguments after its arrays as these fields.
    assert primitives.StridedMatmul._fields == primitives.TABLE["matmul_strided"].param_names[3:]
    for group, ops in (
        ("unary", primitives.UNARY),
        ("binary", primitives.BINARY),
        ("scalar", primitives.SCALAR),
    ):
        prefix = "scalar_" if group == "scalar" else "ewise_"
        rows = {p.name for p in primitives.family(group) if p.reference is not None}
        assert rows == {prefix + op for op in ops}


def test_numpy_backend_has_the_table_parameter_names():
    for name in primitives.TABLE:
        own = getattr(nd.ndarray_backend_numpy, name, None)
        if own is not None:
            params = list(inspect.signature(own).parameters)
            assert params == list(primitives.TABLE[name].param_names), name


@settings(max_examples=100, deadline=None)
@given(view=strided_views())
def test_simplify_view_walks_the_same_memory(view):
    _, shape, strides, offset = view
    s_shape, s_strides, s_offset = primitives.simplify_view(shape, strides, offset)
    assert len(s_shape) == len(s_strides) >= 1 and math.prod(s_shape) == math.prod(shape)
    assert len(s_shape) <= max(len(shape), 1) and (1 not in s_shape or s_shape == (1,))
    np.testing.assert_array_equal(
        element_offsets(s_shape, s_strides, s_offset), element_offsets(shape, strides, offset)
    )


# ---- validation ---------------------------------------------------------------------------
def _without(mod, hidden, name="partial"):
    """A module with `mod`'s attributes but those in `hidden`."""
    module = types.ModuleType(name)
    for key in dir(mod):
        if (key not in hidden and not key.startswith("__")) or key in (
            "__device_name__",
            "__tile_size__",
        ):
            setattr(module, key, getattr(mod, key))
    return module


def core_only(mod, name):
    """A module with only the table's core primitives of `mod` (and Array, DTYPES)."""
    return _without(mod, primitives.OPTIONAL, name)


def test_backend_validates(backend):
    own = primitives.validate(backend.mod)
    assert own == {n for n in primitives.OPTIONAL if callable(getattr(backend.mod, n, None))}
    assert set(primitives.backend_dtypes(backend.mod)) == set(backend.dtypes)
    device = BackendDevice(f"{backend.id}_device", backend.mod)
    assert device.enabled() and set(device.dtypes) == set(backend.dtypes)
    for name in primitives.TABLE:
        assert device.has(name) == (name in primitives.CORE or name in own), name
    with pytest.raises(ValueError, match="not a primitive"):
        device.has("ewise_frobnicate")


def test_a_missing_core_primitive_fails_validation(backend):
    device_name = getattr(backend.mod, "__device_name__", "?")
    for name in sorted(primitives.CORE):
        broken = _without(backend.mod, {name})
        with pytest.raises(MissingPrimitiveError, match=rf"'{device_name}'.*{name}\("):
            primitives.validate(broken)
    with pytest.raises(MissingPrimitiveError, match=r"Array\(size, dtype\)"):
        primitives.validate(_without(backend.mod, {"Array"}))
    # Several missing: all named at once.
    with pytest.raises(MissingPrimitiveError, match=r"primitives .*ewise_add.*reduce_sum"):
        primitives.validate(_without(backend.mod, {"ewise_add", "reduce_sum"}))


def test_a_device_over_a_module_missing_a_core_primitive_fails_on_first_use(backend):
    device = BackendDevice("broken", _without(backend.mod, {"ewise_rsqrt"}))  # nothing checked yet
    with pytest.raises(MissingPrimitiveError, match="ewise_rsqrt"):
        NDArray(np.ones(3), device=device)
    device = BackendDevice("broken", _without(backend.mod, {"compact"}))
    with pytest.raises(MissingPrimitiveError, match="compact"):
        device.enabled()


def test_optional_primitives_resolve_to_the_fallback(backend):
    mod = core_only(backend.mod, "core")
    device = BackendDevice("core", mod)
    for name in primitives.OPTIONAL:
        assert not device.has(name)
        assert getattr(device, name).func is primitives.TABLE[name].fallback


# ---- NDArray over each backend, and over its core primitives only ---------------------------
@pytest.fixture(params=["full", "core_only"])
def device(request, backend):
    mod = backend.mod if request.param == "full" else core_only(backend.mod, backend.id)
    return BackendDevice(f"{backend.id}_{request.param}", mod)


def test_ndarray_operations_match_cpu_numpy(device):
    """Broadcasting binary ops (repeated rows and columns), matmuls (2-d, batched,
    transposed, batch-broadcast), reductions over leading, middle and trailing axes, axpby,
    take_rows / add_rows, strided reads and writes."""
    rng = np.random.default_rng(0)
    ref = ndl.cpu_numpy()
    x = rng.standard_normal((4, 5, 6)).astype("float32")
    w = rng.standard_normal((6, 3)).astype("float32")
    table = rng.standard_normal((7, 6)).astype("float32")
    idx = np.array([3, 0, 3, 6, 1])

    def run(dev):
        a, b = nd.array(x, device=dev), nd.array(w, device=dev)
        t = nd.array(table, device=dev)
        out = {
            "a + bias": a + nd.array(x[0, 0], device=dev),
            "a * column": a * nd.array(x[:, :, :1], device=dev),
            "row - a": nd.array(x[:1], device=dev) - a,
            "a / (5, 1)": a / nd.array(np.abs(x[0, :, :1]) + 1, device=dev),
            "maximum": a.maximum(nd.array(x[0, :1], device=dev)),
            "a @ b": a @ b,
            "batched": a @ a.permute((0, 2, 1)),
            "transposed @": a.permute((0, 2, 1)) @ a,
            "2-d": a[0] @ b,
            "broadcast batch": a @ nd.array(w[None], device=dev).broadcast_to((4, 6, 3)),
            "sum middle": a.sum(axis=1),
            "sum leading": a.sum(axis=0),
            "max middle": a.max(axis=(0, 2)),
            "max last": a.max(axis=2),
            "axpby": nd.axpby(0.5, a, -2.0, a.exp()),
            "take_rows": nd.take_rows(t, idx),
            "add_rows": nd.add_rows(t[:5], idx, 7),
            "strided": (a[1:, ::2, 3] ** 2) + a[:0:-1, ::2, ::-2].sum(axis=2),
            "flip": a.flip((1,)),
        }
        a[0, :2] = 7.0
        a[1:3, ::2, ::-3] = nd.array(np.ones((2, 3, 2), "float32"), device=dev)
        out["setitem"] = a
        return {k: v.numpy() for k, v in out.items()}

    got, want = run(device), run(ref)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-5, err_msg=key)


def test_a_training_step_matches_cpu_numpy(device):
    assert_trains_like_cpu_numpy(device)


def assert_trains_like_cpu_numpy(device):
    """An MLP (Linear, ReLU, softmax loss, Adam) trains identically on `device` and
    cpu_numpy (test_metal_host.py uses it for the host modules too)."""
    data = np.random.default_rng(1)
    x_np = data.standard_normal((16, 10)).astype("float32")
    y_np = data.integers(0, 3, 16)

    def train(dev):
        np.random.seed(0)
        model = ndl.nn.Sequential(
            ndl.nn.Linear(10, 20, device=dev), ndl.nn.ReLU(), ndl.nn.Linear(20, 3, device=dev)
        )
        opt = ndl.optim.Adam(model.parameters(), lr=0.01)
        losses = []
        for _ in range(3):
            loss = ndl.nn.SoftmaxLoss()(
                model(ndl.Tensor(x_np, device=dev)), ndl.Tensor(y_np, device=dev)
            )
            opt.reset_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.numpy()))
        return losses, [p.numpy() for p in model.parameters()]

    losses, params = train(device)
    ref_losses, ref_params = train(ndl.cpu_numpy())
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    for p, ref in zip(params, ref_params):
        np.testing.assert_allclose(p, ref, rtol=1e-4, atol=1e-5)


# ---- views outside their buffers ------------------------------------------------------------
def _metal_emulated():
    from needle.emulation.metal import harness

    return harness.emulated_backend()


@pytest.mark.parametrize("build", [lambda: nb_np, _metal_emulated], ids=["numpy", "metal"])
def test_python_backends_check_views_against_buffers(build):
    # The Python backends would read or write past a buffer through as_strided or a kernel
    # launch without their checks. The native ones run the same table in a subprocess, where
    # a crash cannot end the test run (test_backend_primitives.py, test_cuda.py).
    mod = build()
    for name, args in conformance.bad_views(mod):
        with pytest.raises((IndexError, ValueError)):
            primitives.resolve(mod, name)(*args)
