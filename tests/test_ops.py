"""Every op of needle against PyTorch, driven by the op-spec table (op_specs.py).

The generic tests read each OpSpec: values and gradients against torch in float32 and float64
on every device (``check_op``), float64 central differences (``check_fd``), gradients of
gradients (``check_double_backward``), the errors it raises, random samples (hypothesis),
and the op contract (compute keeps no per-call state on the op; one instance serves many
calls). The completeness tests fail when needle.ops exports an op that has no spec. The
special cases that do not fit the table follow.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings, strategies as st
from op_specs import HELPER_FUNCTIONS, LABELS, SPECS, TIES, uniform

import needle as ndl
from needle import ops
from needle.autograd import Op, find_topo_sort

HYPOTHESIS = settings(
    max_examples=15,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
FLOAT64_TOL = (1e-9, 1e-9)


# ---- helpers ---------------------------------------------------------------------------
def rand(*shape, low=-2.0, high=2.0):
    return uniform(low, high).draw(shape)


def tensors(arrays, device, dtype="float32", requires_grad=True):
    return [ndl.Tensor(a, device=device, dtype=dtype, requires_grad=requires_grad) for a in arrays]


def constant(array, device, dtype="float32"):
    return ndl.Tensor(array, device=device, dtype=dtype, requires_grad=False)


def elements(out) -> list:
    """An op's output as a list of Tensors: a TensorTuple's elements taken by real
    TupleGetItem nodes, so that backward goes through the tuple's own gradient."""
    if isinstance(out, ndl.TensorTuple):
        return [ops.TupleGetItem(i)(out, fold_const=False) for i in range(len(out))]
    assert isinstance(out, ndl.Tensor), type(out)
    return [out]


def torch_elements(out) -> list:
    return list(out) if isinstance(out, (tuple, list)) else [out]


def needle_loss(outs, ws, device, dtype):
    """sum_i sum(w_i * out_i), the loss whose gradients are compared."""
    return sum((o * constant(w, device, dtype)).sum() for o, w in zip(outs, ws))


def torch_loss(outs, ws):
    return sum(torch.sum(o * torch.tensor(w, dtype=torch.float64)) for o, w in zip(outs, ws))


def needs_float64(device):
    try:
        ndl.Tensor(np.zeros(1), device=device, dtype="float64")
    except (TypeError, RuntimeError, ValueError) as exc:
        pytest.skip(f"{device} has no float64: {exc}")


def check_op(
    fn, torch_fn, arrays, device, *, kwargs=None, dtype="float32", tol=(1e-5, 1e-5), label=""
):
    """fn on `device` in `dtype` against torch_fn in float64, forward and, for random
    adjoints, the gradient of every input."""
    kwargs = kwargs or {}
    rtol, atol = tol
    if dtype != "float32":
        needs_float64(device)
    tx = [torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in arrays]
    nx = tensors(arrays, device, dtype)
    t_outs = torch_elements(torch_fn(*tx, **kwargs))
    n_outs = elements(fn(*nx, **kwargs))
    assert len(n_outs) == len(t_outs), label
    for i, (n, t) in enumerate(zip(n_outs, t_outs)):
        assert n.shape == tuple(t.shape), f"{label} output {i}: shape {n.shape}"
        assert n.dtype == dtype and n.device == device, f"{label} output {i}"
        np.testing.assert_allclose(
            n.numpy(), t.detach().numpy(), rtol=rtol, atol=atol, err_msg=f"{label} output {i}"
        )
    ws = [rand(*t.shape, low=-1, high=1) for t in t_outs]
    torch_loss(t_outs, ws).backward()
    if len(n_outs) == 1:
        n_outs[0].backward(constant(ws[0], device, dtype))
    else:
        needle_loss(n_outs, ws, device, dtype).backward()
    for i, (t, n) in enumerate(zip(tx, nx)):
        assert n.grad is not None, f"{label} input {i} got no gradient"
        assert n.grad.shape == n.shape, f"{label} gradient of input {i}: shape {n.grad.shape}"
        assert n.grad.dtype == dtype and n.grad.device == device
        expected = t.grad.numpy() if t.grad is not None else np.zeros(t.shape)
        np.testing.assert_allclose(
            n.grad.numpy(), expected, rtol=rtol, atol=atol, err_msg=f"{label} gradient of input {i}"
        )


def check_fd(fn, arrays, device, *, kwargs=None, eps=1e-6, rtol=1e-5, atol=1e-6):
    """needle's float64 gradients of sum_i sum(w_i * fn(*xs)_i) against central differences."""
    kwargs = kwargs or {}
    needs_float64(device)
    xs = [np.asarray(a, dtype=np.float64) for a in arrays]

    def loss(arrays, ws=None):
        outs = elements(fn(*tensors(arrays, device, "float64", requires_grad=False), **kwargs))
        return sum(np.sum(o.numpy() * w) for o, w in zip(outs, ws))

    nx = tensors(xs, device, "float64")
    outs = elements(fn(*nx, **kwargs))
    assert all(o.dtype == "float64" for o in outs)
    ws = [np.random.randn(*o.shape) for o in outs]
    needle_loss(outs, ws, device, "float64").backward()
    for i, x in enumerate(xs):
        numeric = np.zeros_like(x)
        for j in range(x.size):
            values = []
            for step in (eps, -eps):
                shifted = [a.copy() for a in xs]
                shifted[i].reshape(-1)[j] += step
                values.append(loss(shifted, ws))
            numeric.reshape(-1)[j] = (values[0] - values[1]) / (2 * eps)
        grad = nx[i].grad
        assert grad is not None and grad.dtype == "float64", f"gradient of input {i}"
        np.testing.assert_allclose(
            grad.numpy(), numeric, rtol=rtol, atol=atol, err_msg=f"gradient of input {i}"
        )


def check_double_backward(fn, torch_fn, arrays, device, *, kwargs=None, rtol=1e-4, atol=1e-4):
    """Gradients g_i of sum(w * fn(x)^2) taken with create_graph=True, then the gradients of
    sum_i sum(v_i * g_i), against torch.autograd.grad(create_graph=True). (Squared, so that
    every first-order gradient depends on the inputs, also for linear ops.)"""
    kwargs = kwargs or {}
    tx = [torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in arrays]
    nx = tensors(arrays, device)
    t_outs = [o * o for o in torch_elements(torch_fn(*tx, **kwargs))]
    n_outs = [o * o for o in elements(fn(*nx, **kwargs))]
    ws = [rand(*o.shape, low=-1, high=1) for o in t_outs]
    vs = [rand(*a.shape, low=-1, high=1) for a in arrays]

    t_grads = torch.autograd.grad(torch_loss(t_outs, ws), tx, create_graph=True, allow_unused=True)
    t_grads = [g if g is not None else torch.zeros_like(x) for g, x in zip(t_grads, tx)]
    torch_loss(t_grads, vs).backward()

    needle_loss(n_outs, ws, device, "float32").backward(create_graph=True)
    n_grads = [x.grad for x in nx]
    for i, (n, t) in enumerate(zip(n_grads, t_grads)):
        np.testing.assert_allclose(
            n.numpy(),
            t.detach().numpy(),
            rtol=rtol,
            atol=atol,
            err_msg=f"first-order gradient of input {i}",
        )
        assert n.requires_grad, f"first-order gradient of input {i} kept no graph"
    for x in nx:
        x.grad = None
    needle_loss(n_grads, vs, device, "float32").backward()
    for i, (n, t) in enumerate(zip(nx, tx)):
        got = n.grad.numpy() if n.grad is not None else np.zeros(n.shape)
        expected = t.grad.numpy() if t.grad is not None else np.zeros(t.shape)
        np.testing.assert_allclose(
            got, expected, rtol=rtol, atol=atol, err_msg=f"second-order gradient of input {i}"
        )


# ---- the table: completeness ----------------------------------------------------------------
def exported_ops() -> dict:
    """The Op classes that needle.ops exports (not the bases Op, TensorOp, TensorTupleOp)."""
    return {
        name: obj
        for name, obj in vars(ops).items()
        if not name.startswith("_")
        and isinstance(obj, type)
        and issubclass(obj, Op)
        and obj.compute is not Op.compute
    }


def exported_functions() -> dict:
    return {
        name: obj
        for name, obj in vars(ops).items()
        if not name.startswith("_")
        and callable(obj)
        and not isinstance(obj, type)
        and getattr(obj, "__module__", "").startswith("needle.ops")
    }


def test_every_exported_op_has_a_spec():
    covered = {spec.op for spec in SPECS}
    missing = [name for name, op in exported_ops().items() if op not in covered]
    assert not missing, f"ops without an entry in op_specs.SPECS: {missing}"
    assert len(covered) == len(SPECS), "two specs for one op"


def test_every_exported_function_is_covered():
    covered = {spec.function.__name__ for spec in SPECS if spec.function is not None}
    missing = set(exported_functions()) - covered - HELPER_FUNCTIONS
    assert not missing, f"functions that are no spec's function: {sorted(missing)}"


@pytest.mark.parametrize("spec", [s for s in SPECS if s.function is not None], ids=repr)
def test_function_names_and_top_level_exports(spec):
    """Errors name an op by its function; the functions are needle's top-level names too."""
    assert spec.name == spec.function.__name__
    assert getattr(ndl, spec.name) is spec.function


# ---- the table: values and gradients --------------------------------------------------------
def per_item(field, show_item=False):
    """pytest parameters (spec, item) for the items of every spec's `field` ("samples",
    "errors"), with ids "op-index", followed by the item with `show_item`."""
    return [
        pytest.param(spec, item, id=f"{spec.name}-{i}" + (f"-{item}" if show_item else ""))
        for spec in SPECS
        for i, item in enumerate(getattr(spec, field))
    ]


SAMPLES = per_item("samples", show_item=True)


@pytest.mark.parametrize("spec, sample", SAMPLES)
def test_values_and_gradients(spec, sample, device):
    """The function and every other form against torch, float32."""
    arrays = sample.draw(spec)
    for k, fn in enumerate([spec.call] + spec.forms):
        check_op(
            fn,
            spec.torch,
            arrays,
            device,
            kwargs=sample.kwargs,
            tol=sample.tol or spec.tol,
            label="function" if k == 0 else f"form {k}",
        )


@pytest.mark.parametrize("spec, sample", SAMPLES)
def test_float64_against_torch(spec, sample, device):
    check_op(
        spec.call,
        spec.torch,
        sample.draw(spec, "float64"),
        device,
        kwargs=sample.kwargs,
        dtype="float64",
        tol=FLOAT64_TOL,
    )


@pytest.mark.parametrize("spec", [s for s in SPECS if s.fd is not None], ids=repr)
def test_central_differences_float64(spec, device):
    check_fd(spec.call, spec.fd.draw(spec, "float64"), device, kwargs=spec.fd.kwargs)


@pytest.mark.parametrize("spec", [s for s in SPECS if 2 in s.orders], ids=repr)
def test_second_order_gradients(spec, device):
    sample = spec.samples[0]
    check_double_backward(spec.call, spec.torch, sample.draw(spec), device, kwargs=sample.kwargs)


@pytest.mark.parametrize("spec", [s for s in SPECS if s.random is not None], ids=repr)
@HYPOTHESIS
@given(data=st.data())
def test_random_samples(spec, data, device):
    sample = data.draw(spec.random, label="sample")
    check_op(spec.call, spec.torch, sample.draw(spec), device, kwargs=sample.kwargs, tol=spec.tol)


ERRORS = per_item("errors")


@pytest.mark.parametrize("spec, error", ERRORS)
def test_errors(spec, error, device):
    arrays = [
        spec.domain_of(i).draw(x) if isinstance(x, tuple) else x for i, x in enumerate(error.inputs)
    ]
    with pytest.raises(error.exception, match=error.match) as info:
        spec.call(*tensors(arrays, device), **error.kwargs)
    if info.value.__cause__ is not None:  # raised by compute: named and described
        message = str(info.value)
        assert message.startswith(f"{spec.name}: ") and f" on {device}" in message, message


# ---- the table: the op contract -------------------------------------------------------------
def node_of(op_class, out):
    """The first node made by op_class in the graph of `out`."""
    for node in find_topo_sort(elements(out)):
        if type(node.op) is op_class:
            return node
    raise AssertionError(f"no {op_class.__name__} node in the graph")


def data_of(value):
    data = value.realize_cached_data()
    return [a.numpy() for a in data] if isinstance(data, tuple) else [data.numpy()]


@pytest.mark.parametrize("spec", SPECS, ids=repr)
def test_compute_keeps_no_state_on_the_op(spec, device, monkeypatch):
    """compute leaves the op as it was: values for the gradient go on the output node."""
    original, calls = spec.op.compute, []

    def compute(self, *arrays):
        before = dict(vars(self))
        result = original(self, *arrays)
        after = vars(self)
        changed = [k for k in before.keys() | after.keys() if after.get(k) is not before.get(k)]
        assert not changed, f"{type(self).__name__}.compute set {changed} on the op"
        calls.append(self)
        return result

    monkeypatch.setattr(spec.op, "compute", compute)
    sample = spec.samples[0]
    outs = elements(spec.call(*tensors(sample.draw(spec), device), **sample.kwargs))
    needle_loss(outs, [np.ones(o.shape) for o in outs], device, "float32").backward()
    assert calls


@pytest.mark.parametrize("spec", SPECS, ids=repr)
def test_one_instance_serves_two_calls(spec, device):
    """The op instance of a first call, called again on other inputs, gives the second call's
    result, and the first call's gradients stay right (against torch)."""
    sample = spec.samples[0]
    first, second = sample.draw(spec), sample.draw(spec)
    nx = tensors(first, device)
    out = spec.call(*nx, **sample.kwargs)
    if getattr(spec.op, "integer_result", False):
        # argmax, argmin: an integer result is a constant (autograd keeps no graph above it),
        # so there is no node whose op instance could be called again.
        pytest.skip(f"{spec.op.__name__} gives an integer result: no graph node")
    node = node_of(spec.op, out)
    other = node_of(spec.op, spec.call(*tensors(second, device), **sample.kwargs))
    for got, expected in zip(data_of(node.op(*other.inputs)), data_of(other)):
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)

    outs = elements(out)
    ws = [rand(*o.shape, low=-1, high=1) for o in outs]
    needle_loss(outs, ws, device, "float32").backward()
    tx = [torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in first]
    torch_loss(torch_elements(spec.torch(*tx, **sample.kwargs)), ws).backward()
    rtol, atol = spec.tol
    for i, (n, t) in enumerate(zip(nx, tx)):
        expected = t.grad.numpy() if t.grad is not None else np.zeros(t.shape)
        np.testing.assert_allclose(
            n.grad.numpy(), expected, rtol=rtol, atol=atol, err_msg=f"gradient of input {i}"
        )


# ---- special cases --------------------------------------------------------------------------
EXPRESSIONS = [
    # Reflected operators, also with NumPy scalars on the left (which must not turn the
    # result into a NumPy array, silently cutting the graph).
    ("2 - x", [(3, 4)], lambda x: 2 - x),
    ("2 / x", [np.array([0.6, -1.2, 1.7])], lambda x: 2 / x),
    ("2 ** x", [(4,)], lambda x: 2**x),
    ("0.5 ** x", [(2, 3)], lambda x: 0.5**x),
    ("1.5 + x", [()], lambda x: 1.5 + x),
    (
        "numpy scalars",
        [np.array([0.6, -1.2, 1.7])],
        lambda x: sum(
            c + x + c * x + x * c - c / x + x / c - (c - x)
            for c in (np.float32(2), np.float64(1.5), np.int64(3))
        ),
    ),
    # Inputs used more than once, views.
    ("x used five times", [(3, 4)], lambda x: x * x + x.exp() * x - x),
    (
        "a and b used twice",
        [(3, 4), np.array([0.9, -1.1, 1.3, 0.7])],
        lambda a, b: (a + b) * (a - b) / (b * b + 1),
    ),
    ("-(x * 2) + 1", [(2, 3)], lambda x: -(x * 2) + 1),
    ("transposed operand", [(2, 3), (3, 4)], lambda a, b: a.T @ a @ b),
    ("reshape of a transposed view", [(3, 4)], lambda x: x.T.reshape((2, 6))),
]


@pytest.mark.parametrize("arrays, fn", [pytest.param(*e[1:], id=e[0]) for e in EXPRESSIONS])
def test_expressions(arrays, fn, device):
    arrays = [rand(*a) if isinstance(a, tuple) else a for a in arrays]
    check_op(fn, fn, arrays, device)


def test_subtraction_is_add_of_negate(device):
    """a - b is add(a, negate(b)), as in needle, whose tests check the graph's nodes."""
    a, b = tensors([rand(2), rand(2)], device)
    out = a - b
    assert type(out.op) is ops.EWiseAdd and type(out.inputs[1].op) is ops.Negate


@pytest.mark.parametrize("op", ["==", "!=", ">=", ">", "<=", "<"])
@pytest.mark.parametrize("other_kind", ["tensor", "broadcast", "scalar"])
def test_comparisons_give_constant_tensors(op, other_kind, device):
    x = TIES.draw((3, 4))
    y = {"tensor": TIES.draw((3, 4)), "broadcast": TIES.draw((4,)), "scalar": 1.0}[other_kind]
    """Comparisons give constant bool tensors (course spec: Tensor == and != compare identity,
    so the elementwise forms of those two are eq() and ne())."""
    reference = {
        "==": lambda a, b: a == b,
        "!=": lambda a, b: a != b,
        ">=": lambda a, b: a >= b,
        ">": lambda a, b: a > b,
        "<=": lambda a, b: a <= b,
        "<": lambda a, b: a < b,
    }[op]
    compare = {"==": lambda a, b: a.eq(b), "!=": lambda a, b: a.ne(b)}.get(op, reference)
    nx = ndl.Tensor(x, device=device)
    ny = ndl.Tensor(y, device=device) if other_kind != "scalar" else y
    out = compare(nx, ny)
    assert isinstance(out, ndl.Tensor)
    assert not out.requires_grad and out.op is None
    assert out.dtype == "bool"
    np.testing.assert_array_equal(out.numpy(), reference(x, y))
    if op in ("==", "!="):  # the operators themselves compare identity
        assert (nx == nx) is True and (nx != nx) is False
        assert reference(nx, ny) is (op == "!=")


@pytest.mark.filterwarnings("ignore:divide by zero")  # log(0) for the all -inf row
def test_logsumexp_with_minus_infinity(device):
    x = np.array(
        [[-np.inf, -np.inf, -np.inf], [1.0, -np.inf, 2.0], [0.5, 0.25, -1.0]], dtype=np.float32
    )
    out = ops.logsumexp(ndl.Tensor(x, device=device), (1,))
    expected = torch.logsumexp(torch.tensor(x, dtype=torch.float64), dim=1).numpy()
    assert out.numpy()[0] == -np.inf
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-6)
    # Rows with some finite entries still have softmax gradients (0 at the -inf entries).
    check_op(lambda t: ops.logsumexp(t, (1,)), lambda t: torch.logsumexp(t, dim=1), [x[1:]], device)


INF_ROWS = np.array(
    [[np.inf, 1.0, 2.0], [np.inf, np.inf, 0.0], [-np.inf, -np.inf, -np.inf], [-np.inf, 1.0, 2.0]],
    dtype=np.float32,
)


@pytest.mark.filterwarnings("ignore:divide by zero", "ignore:invalid value")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_log_softmax_family_with_infinities(dtype, device):
    """As torch: logsumexp of a row holding +inf is +inf (its gradient NaN at the +inf entries,
    0 elsewhere), of an all -inf row -inf (gradient NaN); log_softmax and cross-entropy of
    such rows are NaN; a -inf logit at the label gives an infinite loss."""
    x = INF_ROWS
    out = ops.logsumexp(ndl.Tensor(x, device=device, dtype=dtype), (1,)).numpy()
    np.testing.assert_array_equal(out[:3], [np.inf, np.inf, -np.inf])
    cases = [
        (lambda t: ops.logsumexp(t, (1,)), lambda t: torch.logsumexp(t, dim=1)),
        (lambda t: ops.logsoftmax(t, 1), lambda t: torch.log_softmax(t, dim=1)),
    ]
    for labels in ([0, 2, 1, 0], [1, 0, 2, 2]):
        cases.append(
            (
                lambda t, y=labels: ops.softmax_cross_entropy(t, y[: t.shape[0]]),
                lambda t, y=labels: F.cross_entropy(t, torch.tensor(y[: t.shape[0]])),
            )
        )
    for fn, torch_fn in cases:
        for rows in (x, x[:1], x[1:2], x[2:3], x[3:]):  # NaN in one row spreads to a mean
            check_op(fn, torch_fn, [rows], device, dtype=dtype, label=str(rows))


def test_softmax_cross_entropy_past_exact_float32_positions(device):
    """Label positions are int64 row indices (the core's RowIndices holds int64), so they
    stay exact past 2^24 elements of logits, where float32 positions would not: no one-hot
    fallback any more."""
    labels = ops.ClassLabels(LABELS, 5, device)
    assert labels.positions.host.dtype == np.int64
    np.testing.assert_array_equal(labels.positions.host, np.arange(7) * 5 + np.asarray(LABELS))
    big = ops.ClassLabels([1, 3], 2**24 + 3)
    np.testing.assert_array_equal(big.positions.host, [1, 2**24 + 3 + 3])
    ce = next(spec for spec in SPECS if spec.op is ops.SoftmaxCrossEntropy)
    check_op(ce.call, ce.torch, [rand(7, 5, low=-4, high=4)], device, kwargs=ce.samples[0].kwargs)
    check_double_backward(
        ce.call, ce.torch, [rand(7, 5, low=-3, high=3)], device, kwargs=ce.samples[0].kwargs
    )
    ce_grad = next(spec for spec in SPECS if spec.op is ops.SoftmaxCrossEntropyGrad)
    check_fd(
        ce_grad.call,
        ce_grad.samples[0].draw(ce_grad, "float64"),
        device,  # positions
        kwargs=ce_grad.samples[0].kwargs,
    )
    check_op(
        ce_grad.call,
        ce_grad.torch,
        ce_grad.samples[0].draw(ce_grad),
        device,
        kwargs=ce_grad.samples[0].kwargs,
    )


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_batch_norm_keeps_batch_statistics(dtype, device):
    if dtype == "float64":
        needs_float64(device)
    x = rand(9, 4, low=-3, high=3) + np.arange(4, dtype=np.float32)
    y = ops.batch_norm(*tensors([x, np.ones(4), np.zeros(4)], device, dtype))
    np.testing.assert_allclose(y.saved.mean.numpy(), x.astype(dtype).mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(y.saved.var.numpy(), x.astype(dtype).var(0), rtol=1e-5, atol=1e-6)


def test_conv_class_pads_0_and_function_pads_1(device):
    x, w = tensors([rand(1, 5, 6, 2), rand(3, 3, 2, 3)], device)
    assert ops.Conv()(x, w).shape == (1, 3, 4, 3)
    assert ops.conv(x, w).shape == (1, 5, 6, 3)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_astype(dtype, device):
    needs_float64(device)
    other = "float64" if dtype == "float32" else "float32"
    x = ndl.Tensor(rand(2, 3), device=device, dtype=dtype)
    y = ops.astype(x, other)
    assert y.dtype == other and x.astype(dtype) is x
    np.testing.assert_allclose(y.numpy(), x.numpy(), rtol=1e-7)
    (ops.AsType(other)(x) * 3).sum().backward()
    assert x.grad.dtype == dtype
    np.testing.assert_allclose(x.grad.numpy(), np.full((2, 3), 3.0))


def test_mixed_dtype_gradient_keeps_input_dtype(device):
    needs_float64(device)
    a = ndl.Tensor(rand(2, 3), device=device)
    b = ndl.Tensor(rand(3), device=device, dtype="float64")
    out = a * b
    assert out.dtype == "float64"
    out.sum().backward()
    assert a.grad.dtype == "float32" and b.grad.dtype == "float64"
    np.testing.assert_allclose(a.grad.numpy(), np.broadcast_to(b.numpy(), (2, 3)), rtol=1e-6)


# ---- helpers that ops export ----------------------------------------------------------------
@pytest.mark.parametrize(
    "grad_shape, shape",
    [
        ((2, 3, 4), (3, 4)),
        ((2, 3, 4), (3, 1)),
        ((2, 3, 4), (1, 1, 4)),
        ((2, 3), ()),
        ((2, 3), (2, 3)),
    ],
    ids=str,
)
def test_reduce_to_shape(grad_shape, shape, device):
    check_op(
        lambda t: ops.reduce_to_shape(t, shape),
        lambda t: t.sum_to_size(shape) if shape else t.sum(),
        [rand(*grad_shape)],
        device,
    )


def test_zeros_like_data(device):
    x = ndl.Tensor(rand(2, 3), device=device)
    z = ops.zeros_like_data(x)
    assert z.shape == (2, 3) and z.dtype == x.dtype and z.device == device
    assert not z.requires_grad and z.op is None
    np.testing.assert_array_equal(z.numpy(), np.zeros((2, 3)))
